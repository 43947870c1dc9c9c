#!/usr/bin/env python3
"""
Open a replay's ``report.html`` in headless Chromium, offline, and check it loads cleanly.

Usage::

    python3 tools/report_browser_check.py replay_report [--screenshot shot.png]

Drives Debian's ``chromium`` through ``chromedriver`` with Selenium (PyPI), with every
host name unresolvable (``--host-resolver-rules``), so a page that needed the network
would fail here. Prints JSON: console errors (must be none), the gallery counts the
page shows per section, the resources the page fetched that are not inline (must be
none) and the screenshot's path and size. Exit status 0 when clean, 1 otherwise, 2
when Chromium, chromedriver or Selenium is missing.
"""

import argparse
import json
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence

CHROMIUM_NAMES = ('chromium', 'chromium-browser', 'google-chrome')
DRIVER_NAMES = ('chromedriver',)


class BrowserUnavailable(Exception):
    """Chromium, chromedriver or Selenium is not installed."""


def _which(names: Sequence[str]) -> Optional[str]:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_missing() -> str:
    """Return why no headless browser can run here ('' when one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed (pip install selenium)'
    if _which(CHROMIUM_NAMES) is None:
        return 'chromium is not installed (apt-get install chromium chromium-driver)'
    if _which(DRIVER_NAMES) is None:
        return 'chromedriver is not installed (apt-get install chromium-driver)'
    return ''


def check_report(html_path: str, screenshot_path: str, width_px: int = 1280,
                 timeout_s: float = 60.0) -> Dict[str, Any]:
    """Load ``html_path`` offline in headless Chromium; return what the page showed."""
    reason = browser_missing()
    if reason:
        raise BrowserUnavailable(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM_NAMES) or ''
    for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
                 '--host-resolver-rules=MAP * ~NOTFOUND', f'--window-size={width_px},900'):
        options.add_argument(flag)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(_which(DRIVER_NAMES) or ''), options=options)
    try:
        driver.set_page_load_timeout(timeout_s)
        driver.get('file://' + os.path.abspath(html_path))
        state = driver.execute_script('return document.readyState')
        sections = driver.execute_script(
            'var out = {}; document.querySelectorAll("#gallery section").forEach('
            'function (s) { out[s.id] = {declared: Number(s.dataset.count), '
            'figures: s.querySelectorAll("figure.tile").length, '
            'images: Array.from(s.querySelectorAll("figure.tile img")).filter('
            'function (i) { return i.complete && i.naturalWidth > 0; }).length}; });'
            'return out;')
        resources: List[str] = driver.execute_script(
            'return performance.getEntriesByType("resource").map(function (r) '
            '{ return r.name; });')
        title = driver.title
        height = int(driver.execute_script('return document.documentElement.scrollHeight'))
        driver.set_window_size(width_px, min(max(height, 600), 12000))
        os.makedirs(os.path.dirname(os.path.abspath(screenshot_path)), exist_ok=True)
        driver.save_screenshot(screenshot_path)
        logs = driver.get_log('browser')
    finally:
        driver.quit()
    errors = [entry['message'] for entry in logs if entry.get('level') == 'SEVERE']
    external = [url for url in resources if not url.startswith(('data:', 'file:'))]
    return {'html': os.path.abspath(html_path), 'ready_state': state, 'title': title,
            'console_errors': errors, 'gallery': sections, 'external_resources': external,
            'screenshot': os.path.abspath(screenshot_path),
            'screenshot_bytes': os.path.getsize(screenshot_path),
            'page_height_px': height}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Check one report; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('report', help='report folder or report.html')
    parser.add_argument('--screenshot', default='', help='PNG path (default: beside the page)')
    args = parser.parse_args(argv)
    html_path = (os.path.join(args.report, 'report.html') if os.path.isdir(args.report)
                 else args.report)
    shot = args.screenshot or os.path.join(os.path.dirname(html_path), 'report_screenshot.png')
    try:
        result = check_report(html_path, shot)
    except BrowserUnavailable as exc:
        sys.stderr.write(f'report_browser_check: {exc}\n')
        return 2
    sys.stdout.write(json.dumps(result, indent=2) + '\n')
    clean = (result['ready_state'] == 'complete' and not result['console_errors']
             and not result['external_resources']
             and all(s['declared'] == s['figures'] == s['images']
                     for s in result['gallery'].values()))
    return 0 if clean else 1


if __name__ == '__main__':
    sys.exit(main())
