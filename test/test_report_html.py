"""The replay's report.html: self-contained, gallery with saliency, opened in headless Chromium.

The browser test needs Debian's chromium and chromium-driver and Selenium (PyPI). It is
skipped without them, except where ``LEAF_DISEASE_REQUIRE_BROWSER=1`` (CI sets it)
turns the skip into a failure. Its screenshot is kept for CI at
``$LEAF_DISEASE_ARTIFACTS/report_screenshot.png`` (default ``artifacts/`` in the
repository, ignored by git).
"""

import importlib.util
import json
import math
import os
import re

import cv2
import pytest

from bag_builder import Frame, GpsFix, mosaic, NS, Truth, write_bag
from conftest import REPO_DIR
from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.replay.gallery import GalleryCollector
from leaf_disease_ros.replay.report import write_report
from leaf_disease_ros.replay.report_html import mercator_px, REPORT_HTML_FILE
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay

LAT0, LON0 = 44.9, -0.15
PARAMS = {'unknown_threshold': 0.0, 'disease_score_threshold': 0.0,
          'min_vegetation_fraction': 0.0}
ARTIFACTS = os.environ.get('LEAF_DISEASE_ARTIFACTS', os.path.join(REPO_DIR, 'artifacts'))


def _browser_tool():
    spec = importlib.util.spec_from_file_location(
        'report_browser_check', os.path.join(REPO_DIR, 'tools', 'report_browser_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def report(tmp_path_factory, leaf_images, tiny_model_path):
    """Replay a 4-frame bag (GPS, ground truth) with a gallery of 3; return (metrics, out)."""
    base = tmp_path_factory.mktemp('html_report')
    labels = sorted(leaf_images)
    leaves = [(label, cv2.imread(leaf_images[label][i]))
              for i in range(3) for label in labels]
    frames, truth, fixes = [], [], []
    for index in range(4):
        stamp = int((1.0 + index) * NS)
        chosen = leaves[3 * index:3 * index + 3]
        frames.append(Frame(stamp, mosaic([image for _, image in chosen], 3)))
        truth.append(Truth(stamp, [((256.0 * c, 0.0, 256.0 * (c + 1), 256.0), label)
                                   for c, (label, _) in enumerate(chosen)]))
    for k in range(40):
        lat, lon = offset_latlon(LAT0, LON0, 0.5 * k, 0.2 * k)
        fixes.append(GpsFix(int(0.2 * k * NS), lat, lon))
    bag = write_bag(str(base / 'bag'), 'mcap', frames, fixes, truth)
    out = str(base / 'report')
    state = run_replay(ReplayOptions(bag_path=bag, out_dir=out, gallery_size=3,
                                     parameters=dict(PARAMS, model_path=tiny_model_path,
                                                     backend='onnxruntime')))
    return write_report(state, out), out


def test_report_html_is_self_contained_with_the_gallery(report):
    metrics, out = report
    page = open(os.path.join(out, REPORT_HTML_FILE), encoding='utf-8').read()
    gallery = metrics['gallery']
    assert gallery['per_section'] == 3 and gallery['uncertain'] == 3
    assert 1 <= gallery['confident'] <= 3
    assert gallery['saliency']['inferences'] == 26 * (gallery['confident'] + 3)
    for section in ('confident', 'uncertain'):
        match = re.search(f'<section id="{section}" data-count="(\\d+)"', page)
        assert match and int(match.group(1)) == gallery[section]
    assert page.count('<figure class="tile"') == gallery['confident'] + 3
    assert page.count('src="data:image/jpeg;base64,') == gallery['confident'] + 3
    # nothing is fetched on load: no external src/href, no stylesheet or script links
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert '<link' not in page
    assert 'id="confusion"' in page and '<polyline class="track"' in page
    assert 'ros2 bag play' in page and 'stamp: 1970-01-01T00:00:0' in page


def test_report_html_is_for_people(report):
    metrics, out = report
    page = open(os.path.join(out, REPORT_HTML_FILE), encoding='utf-8').read()
    # no path of the machine that wrote it: the bag by its name, also in the commands
    base = os.path.dirname(out)
    assert base not in page and metrics['bag']['path'].startswith(base)
    assert re.findall(r'ros2 bag play (\S+) --start-offset', page) == ['bag'] * page.count(
        '<figure class="tile"')
    # display names (the tiny card has none: the labels humanised), positions as
    # latitude / longitude, the fix status in words
    assert '<b>Black rot</b>' in page or '<b>Esca</b>' in page or '<b>Healthy</b>' in page
    assert not re.search(r'<b>(black_rot|leaf_blight)</b>', page)
    assert 'fix status' not in page and '(ground-augmented fix (GBAS: RTK or DGPS))' in page
    assert re.search(r'GPS: lat -?\d+\.\d{6}, lon -?\d+\.\d{6}', page)
    # the map: north arrow, scale bar, the corners' latitude / longitude
    svg = page[page.index('<svg id="map"'):page.index('</svg>')]
    assert '<g class="north"' in svg and '>N</text>' in svg
    assert re.search(r'<g class="scale">.*<text[^>]*>\d+(\.\d+)? m</text>', svg)
    corners = re.findall(r'<text class="corner"[^>]*>lat (-?[\d.]+), lon (-?[\d.]+)</text>', svg)
    assert len(corners) == 2
    (north, west), (south, east) = [(float(a), float(b)) for a, b in corners]
    # the track runs 19.5 m east and 7.8 m north of (LAT0, LON0), inside the corners
    assert south < LAT0 < LAT0 + 7.8 / 111_000 < north
    assert west < LON0 < LON0 + 19.5 / 78_000 < east


def test_gallery_keeps_one_tile_per_leaf_and_the_best_ones(tiny_model_path):
    from leaf_disease_ros.perception.pipeline import Detection, FrameResult
    from leaf_disease_ros.perception.positions import GeotagResult
    import numpy as np
    frame = np.zeros((64, 192, 3), np.uint8)

    def result(stamp_s, scores):
        detections = tuple(
            Detection((64 * i, 0, 64 * (i + 1), 64), label, 0, score, ((label, score),),
                      False, label != 'healthy', label != 'healthy', 1.0)
            for i, (label, score) in enumerate(scores))
        return FrameResult(int(stamp_s * NS), 64, 192, detections, 3, 0,
                           GeotagResult(None, 'no_fix_received'), {})
    gallery = GalleryCollector(size=2)
    gallery.add(lambda: frame, result(0.0, [('esca', 0.9), ('healthy', 0.5), ('esca', 0.95)]), 0)
    gallery.add(lambda: frame, result(0.5, [('esca', 0.97), ('black_rot', 0.8)]), 1)
    gallery.add(lambda: frame, result(9.0, [('black_rot', 0.85)]), 2)
    confident = gallery.sections['confident']
    # the three esca tiles within 2 s are one leaf: only its best score is kept
    assert [(t.label, t.score) for t in confident] == [('esca', 0.97), ('black_rot', 0.85)]
    assert [t.score for t in gallery.sections['uncertain']] == [0.5, 0.8]
    assert all(t.tile_bgr.shape == (64, 64, 3) for t in gallery.tiles())


def test_gallery_replaces_a_leaf_behind_an_equal_scored_tile_of_another_leaf():
    """
    Regression: a tile is removed by identity, not by value.

    Tiles were compared by value, so removing one behind an equal-scored tile compared
    two pixel arrays and raised (ValueError), ending the replay.
    """
    from leaf_disease_ros.perception.pipeline import Detection, FrameResult
    from leaf_disease_ros.perception.positions import GeotagResult
    import numpy as np

    def result(stamp_s, label, score):
        detection = Detection((0, 0, 64, 64), label, 0, score, ((label, score),), False,
                              True, True, 1.0)
        return FrameResult(int(stamp_s * NS), 64, 64, (detection,), 1, 0,
                           GeotagResult(None, 'no_fix_received'), {})
    gallery = GalleryCollector(size=3)
    gallery.add(lambda: np.full((64, 64, 3), 1, np.uint8), result(0.0, 'esca', 0.9), 0)
    gallery.add(lambda: np.full((64, 64, 3), 2, np.uint8), result(9.0, 'black_rot', 0.9), 1)
    # the black_rot leaf again 0.5 s later, better: its twin sits behind the esca tile
    # of the same score, and is removed
    gallery.add(lambda: np.full((64, 64, 3), 3, np.uint8), result(9.5, 'black_rot', 0.95), 2)
    assert [(t.label, t.score, int(t.tile_bgr[0, 0, 0])) for t in gallery.sections['confident']] \
        == [('black_rot', 0.95, 3), ('esca', 0.9, 1)]


def test_mercator_pixels():
    x, y = mercator_px(0.0, 0.0, 0)
    assert (x, y) == pytest.approx((128.0, 128.0))
    x1, _ = mercator_px(0.0, 180.0, 1)
    assert x1 == pytest.approx(512.0)
    _, y_north = mercator_px(45.0, 0.0, 0)
    assert y_north < 128.0 and not math.isnan(y_north)


def test_report_opens_offline_in_headless_chromium(report):
    metrics, out = report
    tool = _browser_tool()
    reason = tool.browser_missing()
    if reason:
        if os.environ.get('LEAF_DISEASE_REQUIRE_BROWSER') == '1':
            pytest.fail(f'LEAF_DISEASE_REQUIRE_BROWSER=1 but {reason}')
        pytest.skip(reason)
    shot = os.path.join(ARTIFACTS, 'report_screenshot.png')
    result = tool.check_report(os.path.join(out, REPORT_HTML_FILE), shot)
    assert result['ready_state'] == 'complete'
    assert result['console_errors'] == []
    assert result['external_resources'] == []
    gallery = metrics['gallery']
    for section in ('confident', 'uncertain'):
        shown = result['gallery'][section]
        assert shown['declared'] == shown['figures'] == shown['images'] == gallery[section]
    assert result['screenshot_bytes'] > 10_000
    image = cv2.imread(shot)
    assert image is not None and image.shape[1] == 1280
    with open(os.path.join(ARTIFACTS, 'report_browser_check.json'), 'w',
              encoding='utf-8') as stream:
        json.dump(result, stream, indent=2)


def test_replay_tiles_become_an_embedding_map(report, tmp_path, leaf_images, tiny_model_path,
                                              capsys):
    from leaf_disease_ros.cli import embed, replay
    _, out = report
    bag = os.path.join(os.path.dirname(out), 'bag')
    folder = tmp_path / 'rep'
    assert replay.main([bag, '--out', str(folder), '--model', tiny_model_path, '--backend',
                        'onnxruntime', '--save-tiles', '2', '--gallery', '0', '--no-progress',
                        '--no-output-bag', '--min-vegetation-fraction', '0']) == 0
    metrics = json.loads((folder / 'metrics.json').read_text())
    # ground-truth labels: 3 leaves of each of the 4 classes, 2 kept per label
    assert metrics['tiles_saved'] == {label: {'seen': 3, 'kept': 2}
                                      for label in sorted(leaf_images)}
    assert 'gallery' not in metrics
    assert sorted(os.listdir(folder / 'tiles')) == sorted(leaf_images)
    capsys.readouterr()
    assert embed.main([str(folder / 'tiles'), '--model', tiny_model_path,
                       '--out', str(tmp_path / 'map')]) == 0
    assert 'embedded 8 images' in capsys.readouterr().out
