"""
Diagnostic reports in ROS terms, without ROS.

:class:`DiagnosticReport` mirrors one ``diagnostic_msgs/DiagnosticStatus`` (level,
name, message, hardware id, key/value pairs); ``ros/conversions.py`` turns a list of
them into a ``DiagnosticArray``. The node's statistics (frame rate, latency
percentiles, drops, GPS state) are computed here in pure Python so they can be tested
without ROS:

- :class:`SlidingWindow`: time-stamped samples of the last seconds (rate, p50, p99);
- :class:`DetectorStats`: the image path (received, processed, dropped, failed,
  unsupported encodings, latency from image stamp to publish) and its status rules;
- :class:`GpsStats`: the fix stream (received, rejected by reason, age of the newest
  usable fix, buffer clears, positions UTM does not cover) and its status rules.
"""

from collections import deque
from dataclasses import dataclass, field
import math
import threading
from typing import Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.geo.geodesy import in_utm_domain
from leaf_disease_ros.geo.geotag import (ADD_ACCEPTED, ADD_DUPLICATE, ADD_REJECTED_JUMP,
                                         ADD_REJECTED_LATITUDE, ADD_REJECTED_NAN,
                                         ADD_REJECTED_NO_FIX, REJECTIONS)
from leaf_disease_ros.perception.positions import Fix

# diagnostic_msgs/DiagnosticStatus levels
OK = 0
WARN = 1
ERROR = 2
STALE = 3


@dataclass(frozen=True)
class DiagnosticReport:
    """One diagnostic status: ``values`` are (key, value-as-text) pairs."""

    name: str
    level: int
    message: str
    hardware_id: str = ''
    values: Tuple[Tuple[str, str], ...] = field(default_factory=tuple)

    def value_dict(self) -> dict:
        """Return the key/value pairs as a dict."""
        return dict(self.values)


def worst_level(levels: List[int]) -> int:
    """Return the most severe of ``levels`` (STALE counts below ERROR), OK when empty."""
    order = {OK: 0, STALE: 1, WARN: 2, ERROR: 3}
    return max(levels, key=lambda level: order.get(level, 3), default=OK)


# --- statistics of the node -------------------------------------------------------

#: seconds of history behind fps, latency percentiles and recent failures
DEFAULT_WINDOW_S = 10.0
#: a median latency (or fix age) beyond this many seconds is a clock mismatch, not load
CLOCK_MISMATCH_S = 30.0

_NS_PER_S = 1_000_000_000
_STATUS_NAMES = {-1: 'NO_FIX', 0: 'FIX', 1: 'SBAS_FIX', 2: 'GBAS_FIX'}


def percentile(values: Sequence[float], q: float) -> float:
    """
    Return the ``q``-th percentile of ``values`` (``q`` in 0..100), interpolated linearly.

    The same definition as ``numpy.percentile``'s default; NaN for no values.
    """
    if len(values) == 0:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class WindowSummary:
    """Samples of a sliding window: count, rate, median, 99th percentile and maximum."""

    count: int
    rate_hz: float
    p50: float
    p99: float
    maximum: float


class SlidingWindow:
    """
    Time-stamped samples of the last ``window_s`` seconds, thread-safe.

    Times are seconds of any monotonic clock (the node passes ``time.monotonic()``).
    The rate divides the count by the window, or by the time since ``start_s`` while
    the window is not yet full.
    """

    def __init__(self, start_s: float, window_s: float = DEFAULT_WINDOW_S,
                 max_samples: int = 100_000) -> None:
        if window_s <= 0.0:
            raise ValueError(f'window_s must be > 0, got {window_s}')
        self._window_s = float(window_s)
        self._start_s = float(start_s)
        self._samples: Deque[Tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    @property
    def window_s(self) -> float:
        """Length of the window in seconds."""
        return self._window_s

    def add(self, t_s: float, value: float = 0.0) -> None:
        """Record ``value`` at time ``t_s``."""
        with self._lock:
            self._samples.append((float(t_s), float(value)))

    def _prune(self, now_s: float) -> None:
        horizon = now_s - self._window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def count(self, now_s: float) -> int:
        """Return the number of samples within the window ending at ``now_s``."""
        with self._lock:
            self._prune(now_s)
            return len(self._samples)

    def summary(self, now_s: float) -> WindowSummary:
        """Return the summary of the samples within the window ending at ``now_s``."""
        with self._lock:
            self._prune(now_s)
            values = [value for _, value in self._samples]
        elapsed = min(self._window_s, now_s - self._start_s)
        rate = len(values) / elapsed if elapsed > 0.0 else 0.0
        return WindowSummary(count=len(values), rate_hz=rate, p50=percentile(values, 50.0),
                             p99=percentile(values, 99.0),
                             maximum=max(values) if values else math.nan)


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return 'n/a' if value is None or math.isnan(value) else f'{value:.{digits}f}'


def _join(reasons: List[Tuple[int, str]], default: str) -> Tuple[int, str]:
    """Return (worst level, message of the reasons at that level) or (OK, default)."""
    if not reasons:
        return OK, default
    level = worst_level([lvl for lvl, _ in reasons])
    if level == OK:
        return OK, '; '.join(text for _, text in reasons)
    return level, '; '.join(text for lvl, text in reasons if lvl != OK)


@dataclass(frozen=True)
class DetectorThresholds:
    """The parameters the detector status is judged by."""

    no_image_warn_s: float
    latency_budget_ms: float


class DetectorStats:
    """
    Counters and windows of the image path; :meth:`report` turns them into a status.

    Thread-safe: the image callback, the worker thread and the diagnostics timer call
    it concurrently. Times are monotonic seconds (``now_s``); latencies and processing
    times are milliseconds.
    """

    def __init__(self, start_s: float, window_s: float = DEFAULT_WINDOW_S) -> None:
        self._start_s = float(start_s)
        self._lock = threading.Lock()
        self._latency = SlidingWindow(start_s, window_s)
        self._processing = SlidingWindow(start_s, window_s)
        self._failures = SlidingWindow(start_s, window_s)
        self._unsupported_recent = SlidingWindow(start_s, window_s)
        self.received = 0
        self.processed = 0
        self.failed = 0
        self.ignored_paused = 0
        self.unsupported: Dict[str, int] = {}
        self.last_failure = ''
        self._last_image_s: Optional[float] = None
        self._waiting_since_s: Optional[float] = None  # oldest image without an outcome

    def image_received(self, now_s: float) -> None:
        """Count an image message arriving (paused or not)."""
        with self._lock:
            self.received += 1
            self._last_image_s = float(now_s)
            if self._waiting_since_s is None:
                self._waiting_since_s = float(now_s)

    def frame_ignored(self) -> None:
        """Count a frame ignored because detection is paused."""
        with self._lock:
            self.ignored_paused += 1
            self._waiting_since_s = None

    def frame_processed(self, now_s: float, latency_ms: float, processing_ms: float) -> None:
        """Count a published frame with its latency (image stamp to publish)."""
        with self._lock:
            self.processed += 1
            self._waiting_since_s = None
        self._latency.add(now_s, latency_ms)
        self._processing.add(now_s, processing_ms)

    def frame_failed(self, now_s: float, reason: str) -> None:
        """Count a frame dropped because it could not be decoded or classified."""
        with self._lock:
            self.failed += 1
            self.last_failure = reason
            self._waiting_since_s = None
        self._failures.add(now_s)

    def unsupported_encoding(self, now_s: float, encoding: str, reason: str) -> None:
        """Count a frame whose encoding the converter cannot turn into bgr8."""
        with self._lock:
            self.unsupported[encoding] = self.unsupported.get(encoding, 0) + 1
            self.last_failure = reason
            self._waiting_since_s = None
        self._unsupported_recent.add(now_s)

    def seconds_since_last_image(self, now_s: float) -> Optional[float]:
        """Return seconds since the last image arrived, None when none has."""
        with self._lock:
            last = self._last_image_s
        return None if last is None else now_s - last

    def report(self, now_s: float, *, name: str, hardware_id: str, enabled: bool,
               image_topic: str, backend: str, model_id: str, dropped: int,
               thresholds: DetectorThresholds) -> DiagnosticReport:
        """
        Return the detector status at ``now_s``.

        Levels: ERROR when every recent frame failed (or had an unsupported encoding);
        WARN when no image arrived for ``no_image_warn_s``, images arrive but none
        finished (processed or failed) for ``no_image_warn_s``, some recent frames failed,
        latency p99 exceeds the budget, or the image stamps and the node clock
        disagree by more than :data:`CLOCK_MISMATCH_S`; OK otherwise, and while paused.

        :param dropped: frames replaced before processing (the mailbox's count).
        """
        with self._lock:
            received, processed, failed = self.received, self.processed, self.failed
            ignored, last_failure = self.ignored_paused, self.last_failure
            unsupported = dict(self.unsupported)
            last_image, waiting_since = self._last_image_s, self._waiting_since_s
        latency = self._latency.summary(now_s)
        processing = self._processing.summary(now_s)
        failed_recent = self._failures.count(now_s)
        unsupported_recent = self._unsupported_recent.count(now_s)
        window_s = self._latency.window_s
        uptime_s = now_s - self._start_s

        reasons: List[Tuple[int, str]] = []
        if not enabled:
            reasons.append((OK, 'paused by ~/enable: frames are ignored'))
        else:
            if last_image is None:
                if uptime_s > thresholds.no_image_warn_s:
                    reasons.append((WARN, f'no image received on {image_topic} in '
                                          f'{uptime_s:.0f} s: check the topic remapping and '
                                          'the QoS (see the node log)'))
                else:
                    reasons.append((OK, f'waiting for images on {image_topic}'))
            elif now_s - last_image > thresholds.no_image_warn_s:
                reasons.append((WARN, f'no image on {image_topic} for '
                                      f'{now_s - last_image:.1f} s'))
            elif waiting_since is not None and now_s - waiting_since > thresholds.no_image_warn_s:
                reasons.append((WARN, 'images arrive but no frame finished for '
                                      f'{now_s - waiting_since:.1f} s: inference is stuck or '
                                      'far too slow'))
            bad_recent = failed_recent + unsupported_recent
            if bad_recent and latency.count == 0:
                if unsupported_recent:
                    encodings = ', '.join(sorted(unsupported))
                    reasons.append((ERROR, f'images arrive in encoding {encodings} that '
                                           f'cannot be converted to bgr8: {last_failure}'))
                else:
                    reasons.append((ERROR, f'every frame of the last {window_s:.0f} s failed: '
                                           f'{last_failure}'))
            elif bad_recent:
                reasons.append((WARN, f'{bad_recent} of {bad_recent + latency.count} frames '
                                      f'failed in the last {window_s:.0f} s: {last_failure}'))
            if latency.count:
                if abs(latency.p50) > CLOCK_MISMATCH_S * 1e3:
                    side = 'behind' if latency.p50 > 0 else 'ahead of'
                    reasons.append((WARN, f'image stamps are {abs(latency.p50) / 1e3:.0f} s '
                                          f'{side} the node clock: set use_sim_time true when '
                                          'playing a bag with --clock, false otherwise'))
                elif latency.p99 > thresholds.latency_budget_ms:
                    reasons.append((WARN, f'latency p99 {latency.p99:.0f} ms over budget '
                                          f'{thresholds.latency_budget_ms:.0f} ms'))
        running = (f'{latency.rate_hz:.1f} fps, latency p99 {_fmt(latency.p99, 0)} ms'
                   if latency.count else 'no frame processed recently')
        if enabled and all(level == OK for level, _ in reasons) and latency.count:
            reasons = [(OK, running)]
        level, message = _join(reasons, running)
        values = (
            ('enabled', 'true' if enabled else 'false'),
            ('image_topic', image_topic),
            ('fps', _fmt(latency.rate_hz, 2)),
            ('latency_p50_ms', _fmt(latency.p50)),
            ('latency_p99_ms', _fmt(latency.p99)),
            ('processing_p50_ms', _fmt(processing.p50)),
            ('frames_received', str(received)),
            ('frames_processed', str(processed)),
            ('frames_dropped', str(dropped)),
            ('frames_failed', str(failed)),
            ('frames_unsupported_encoding', str(sum(unsupported.values()))),
            ('unsupported_encodings',
             ', '.join(f'{k}: {v}' for k, v in sorted(unsupported.items())) or 'none'),
            ('frames_ignored_paused', str(ignored)),
            ('last_failure', last_failure or 'none'),
            ('backend', backend),
            ('model_id', model_id),
            ('window_s', _fmt(window_s, 0)),
        )
        return DiagnosticReport(name=name, level=level, message=message,
                                hardware_id=hardware_id, values=values)


class GpsStats:
    """
    What the node knows of the GPS stream; :meth:`report` turns it into a status.

    Thread-safe. ``now_s`` are monotonic seconds (arrival times); fix ages compare
    header stamps with the node clock (``now_ns``), so they hold under
    ``use_sim_time``.
    """

    def __init__(self, start_s: float) -> None:
        self._start_s = float(start_s)
        self._lock = threading.Lock()
        self.received = 0
        self.accepted = 0
        self.rejected_no_fix = 0
        self.rejected_nan = 0
        self.rejected: Dict[str, int] = dict.fromkeys(REJECTIONS, 0)
        self.clears = 0
        self.last_clear_reason = ''
        self._last_message_s: Optional[float] = None
        self._last_outcome = ''

    def fix_received(self, now_s: float, outcome: str) -> None:
        """
        Count a NavSatFix message and what the fix buffer did with it.

        :param outcome: the ``ADD_*`` constant returned by ``FixBuffer.add``.
        """
        with self._lock:
            self.received += 1
            self._last_message_s = float(now_s)
            self._last_outcome = outcome
            if outcome in (ADD_ACCEPTED, ADD_DUPLICATE):
                self.accepted += 1
            elif outcome == ADD_REJECTED_NO_FIX:
                self.rejected_no_fix += 1
            elif outcome == ADD_REJECTED_NAN:
                self.rejected_nan += 1
            if outcome in self.rejected:
                self.rejected[outcome] += 1

    def buffer_cleared(self, reason: str) -> None:
        """Count a clearing of the fix buffer (time jumped back)."""
        with self._lock:
            self.clears += 1
            self.last_clear_reason = reason

    def report(self, now_s: float, now_ns: int, newest_fix: Optional[Fix], *, name: str,
               hardware_id: str, fix_topic: str, no_fix_warn_s: float,
               buffer_len: int) -> DiagnosticReport:
        """
        Return the GPS status.

        WARN when no fix arrived (after a grace of ``no_fix_warn_s`` from start), when
        the receiver reports NO_FIX, when no fix message arrived for ``no_fix_warn_s``,
        when the newest usable fix is older than ``no_fix_warn_s`` by the node clock,
        when fix stamps and the node clock disagree by more than
        :data:`CLOCK_MISMATCH_S`, when the last fix was rejected as implausible (a
        jump or a corrupt latitude), or when the newest position is beyond what UTM
        covers (``~/geo_detections`` stays empty there); OK otherwise.

        :param newest_fix: the newest valid fix in the buffer (``FixBuffer.newest()``).
        """
        with self._lock:
            received, accepted = self.received, self.accepted
            rejected_no_fix, rejected_nan = self.rejected_no_fix, self.rejected_nan
            rejected = dict(self.rejected)
            clears, clear_reason = self.clears, self.last_clear_reason
            last_message, last_outcome = self._last_message_s, self._last_outcome
        age_s = None if newest_fix is None else (now_ns - newest_fix.stamp_ns) / _NS_PER_S
        reasons: List[Tuple[int, str]] = []
        if last_message is None:
            if now_s - self._start_s > no_fix_warn_s:
                reasons.append((WARN, f'no fix received on {fix_topic}: frames get no '
                                      'position (check the GPS driver and the remapping)'))
            else:
                reasons.append((OK, f'waiting for the first fix on {fix_topic}'))
        else:
            silent_s = now_s - last_message
            if silent_s > no_fix_warn_s:
                reasons.append((WARN, f'no fix message on {fix_topic} for {silent_s:.1f} s'))
            if last_outcome == ADD_REJECTED_NO_FIX:
                reasons.append((WARN, 'receiver reports NO_FIX: frames get no position'))
            elif last_outcome == ADD_REJECTED_NAN:
                reasons.append((WARN, 'receiver sends NaN coordinates: frames get no position'))
            elif last_outcome == ADD_REJECTED_JUMP:
                reasons.append((WARN, f'last fix rejected as a glitch: it implies a jump faster '
                                      f'than max_fix_speed_mps ({rejected[ADD_REJECTED_JUMP]} '
                                      'so far)'))
            elif last_outcome == ADD_REJECTED_LATITUDE:
                reasons.append((WARN, 'receiver sends latitudes beyond +-90 degrees: '
                                      f'{rejected[ADD_REJECTED_LATITUDE]} fixes rejected'))
            if age_s is not None and abs(age_s) > CLOCK_MISMATCH_S and silent_s <= no_fix_warn_s:
                side = 'behind' if age_s > 0 else 'ahead of'
                reasons.append((WARN, f'fix stamps are {abs(age_s):.0f} s {side} the node '
                                      'clock: the GPS driver stamps in another time base, or '
                                      'use_sim_time does not match ros2 bag play --clock'))
            elif age_s is not None and age_s > no_fix_warn_s:
                reasons.append((WARN, f'newest usable fix is {age_s:.1f} s old '
                                      f'(no_fix_warn_s {no_fix_warn_s:g})'))
        outside_utm = newest_fix is not None and not in_utm_domain(newest_fix.latitude_deg)
        if newest_fix is not None and outside_utm:
            reasons.append((WARN, f'position at latitude {newest_fix.latitude_deg:.3f} is beyond '
                                  'UTM (-80..84 degrees): ~/geo_detections stays empty, '
                                  '~/detections/fix carries the positions'))
        status = 'none' if newest_fix is None else _STATUS_NAMES.get(newest_fix.status,
                                                                     str(newest_fix.status))
        default = f'{status} fix, {_fmt(age_s, 2)} s old'
        if all(level == OK for level, _ in reasons) and newest_fix is not None:
            reasons = [(OK, default)]
        level, message = _join(reasons, default)
        values = (
            ('fix_topic', fix_topic),
            ('fix_status', status),
            ('fix_age_s', _fmt(age_s, 3)),
            ('fixes_received', str(received)),
            ('fixes_accepted', str(accepted)),
            ('fixes_rejected_no_fix', str(rejected_no_fix)),
            ('fixes_rejected_nan', str(rejected_nan)),
            ('fixes_rejected_latitude', str(rejected[ADD_REJECTED_LATITUDE])),
            ('fixes_rejected_jump', str(rejected[ADD_REJECTED_JUMP])),
            ('utm_position', 'n/a' if newest_fix is None
             else ('none: beyond UTM' if outside_utm else 'yes')),
            ('buffer_fixes', str(buffer_len)),
            ('buffer_clears', str(clears)),
            ('last_clear_reason', clear_reason or 'none'),
        )
        return DiagnosticReport(name=name, level=level, message=message,
                                hardware_id=hardware_id, values=values)
