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
  usable fix, buffer clears, positions UTM does not cover) and its status rules;
- :class:`DomainWindow`, :func:`domain_verdict` and :func:`domain_report`: over the
  last classified tiles, the share that falls to unknown, the share far from the
  domain reference (``Detection.out_of_domain``: a confidently wrong model is far
  without being unknown), to background labels and to the gates, and the
  out-of-domain rule (WARN when the unknown or the far share is high, with the fix).
  The verdict also decides whether findings are held back from the map and
  ``~/geo_detections`` (:func:`holds_findings`). The replay applies the same window
  and rule. The share of findings is reported but never judged: an outbreak would
  hide itself.
"""

from collections import deque
from dataclasses import dataclass, field
import math
import threading
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.geo.geodesy import in_utm_domain
from leaf_disease_ros.geo.geotag import (ADD_ACCEPTED, ADD_DUPLICATE, ADD_REJECTED_JUMP,
                                         ADD_REJECTED_LATITUDE, ADD_REJECTED_NAN,
                                         ADD_REJECTED_NO_FIX, REJECTIONS)
from leaf_disease_ros.geo.utm_zone import UtmZone
from leaf_disease_ros.perception.pipeline import FrameResult
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
# sensor_msgs/NavSatStatus; STATUS_UNKNOWN (-2, "status is not yet set") exists from
# Jazzy on and is the default of the status field there.
STATUS_UNKNOWN = -2
_STATUS_NAMES = {STATUS_UNKNOWN: 'UNKNOWN', -1: 'NO_FIX', 0: 'FIX', 1: 'SBAS_FIX',
                 2: 'GBAS_FIX'}


def status_name(status: int) -> str:
    """Return the NavSatStatus name of ``status`` (``NO_FIX``, ``FIX``...; the number if none)."""
    return _STATUS_NAMES.get(status, str(status))


def rejected_status_text(status: Optional[int]) -> str:
    """
    Return why the receiver's last fix was not used, from its NavSatStatus ``status``.

    ``STATUS_UNKNOWN`` (-2, Jazzy's default) is a driver that has not set the status,
    not a receiver without a fix, and is reported as such.
    """
    if status == STATUS_UNKNOWN:
        return ('receiver status is STATUS_UNKNOWN (the GPS driver has not set '
                'NavSatStatus.status): frames get no position')
    if status is None or status == -1:
        return 'receiver reports NO_FIX: frames get no position'
    return f'receiver reports status {status} (not a fix): frames get no position'


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
        self._last_status: Optional[int] = None

    def fix_received(self, now_s: float, outcome: str, status: Optional[int] = None) -> None:
        """
        Count a NavSatFix message and what the fix buffer did with it.

        :param outcome: the ``ADD_*`` constant returned by ``FixBuffer.add``.
        :param status: the message's ``NavSatStatus.status`` (names a rejection).
        """
        with self._lock:
            self.received += 1
            self._last_message_s = float(now_s)
            self._last_outcome = outcome
            self._last_status = status
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
               buffer_len: int, utm_zone: Optional[UtmZone] = None) -> DiagnosticReport:
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
        :param utm_zone: the run's zone of ``~/geo_detections`` (``RunZone.zone``); the
            values ``utm_zone`` (e.g. ``31U``, or ``none yet``) and ``utm_epsg`` say it.
        """
        with self._lock:
            received, accepted = self.received, self.accepted
            rejected_no_fix, rejected_nan = self.rejected_no_fix, self.rejected_nan
            rejected = dict(self.rejected)
            clears, clear_reason = self.clears, self.last_clear_reason
            last_message, last_outcome = self._last_message_s, self._last_outcome
            last_status = self._last_status
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
                reasons.append((WARN, rejected_status_text(last_status)))
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
        status = 'none' if newest_fix is None else status_name(newest_fix.status)
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
            ('utm_zone', 'none yet (the first valid fix sets it)' if utm_zone is None
             else utm_zone.name),
            ('utm_epsg', 'n/a' if utm_zone is None else str(utm_zone.epsg)),
            ('buffer_fixes', str(buffer_len)),
            ('buffer_clears', str(clears)),
            ('last_clear_reason', clear_reason or 'none'),
        )
        return DiagnosticReport(name=name, level=level, message=message,
                                hardware_id=hardware_id, values=values)


# --- out of the model's domain ------------------------------------------------------

#: what to do when a camera stream is out of the model's domain (installed command + doc)
ADAPTATION_FIX = ('record one pass of a row you believe healthy (ros2 bag record), run '
                  'leaf-disease-site BAG --out SITE and start the node with site_path:=SITE; '
                  'to teach your own diseases, harvest tiles with leaf-disease-replay BAG '
                  '--harvest-tiles DIR (docs/adaptation.md)')
#: what the operator reads while findings are held back (diagnostics and reports)
NOT_ADAPTED = ('this model is not adapted to this site: findings are unreliable; record a '
               'reference pass (docs/adaptation.md)')

#: verdicts of the domain check (:func:`domain_verdict`)
COLLECTING = 'collecting'
IN_DOMAIN = 'in_domain'
OUT_OF_DOMAIN = 'out_of_domain'


@dataclass(frozen=True)
class DomainShares:
    """
    What a window of frames holds: tile counts and the shares the domain rule reads.

    ``classified`` tiles passed the gates; ``unknown``, ``background`` (the card's
    background labels) and ``far`` (out of the domain reference) are among them;
    ``gated_out`` did not pass.
    """

    frames: int
    tiles: int
    classified: int
    unknown: int
    background: int
    gated_out: int
    findings: int
    far: int = 0

    @property
    def far_share(self) -> float:
        """Share of the classified tiles far from the domain reference (0 when none)."""
        return self.far / self.classified if self.classified else 0.0

    @property
    def unknown_share(self) -> float:
        """Share of the classified tiles that fell to unknown (0 when none)."""
        return self.unknown / self.classified if self.classified else 0.0

    @property
    def background_share(self) -> float:
        """Share of the classified tiles labelled with a background label."""
        return self.background / self.classified if self.classified else 0.0

    @property
    def gated_out_share(self) -> float:
        """Share of all tiles the vegetation gate skipped."""
        return self.gated_out / self.tiles if self.tiles else 0.0

    @property
    def finding_share(self) -> float:
        """Share of the classified tiles that are disease findings."""
        return self.findings / self.classified if self.classified else 0.0


_COUNTS = 7


def frame_counts(result: FrameResult, background_labels: Iterable[str]
                 ) -> Tuple[int, ...]:
    """Return ``(tiles, classified, unknown, background, gated_out, findings, far)``."""
    background = frozenset(background_labels)
    detections = result.detections
    return (result.tiles_total, len(detections), sum(1 for d in detections if d.is_unknown),
            sum(1 for d in detections if d.label in background), result.tiles_gated,
            sum(1 for d in detections if d.is_finding),
            sum(1 for d in detections if d.out_of_domain))


class DomainWindow:
    """
    The most recent frames holding at least ``window_tiles`` classified tiles; thread-safe.

    Whole frames are kept: the oldest frame leaves once the others still hold
    ``window_tiles`` classified tiles. The window is *full* when it holds that many;
    at most ``window_tiles`` frames are kept (a stream whose tiles are all gated out
    does not grow it).
    """

    def __init__(self, window_tiles: int, background_labels: Iterable[str] = ()) -> None:
        if window_tiles < 1:
            raise ValueError(f'window_tiles must be >= 1, got {window_tiles}')
        self.window_tiles = int(window_tiles)
        self._background = frozenset(background_labels)
        self._frames: Deque[Tuple[int, ...]] = deque()
        self._sums = [0] * _COUNTS
        self._lock = threading.Lock()

    def _drop_oldest(self) -> None:
        oldest = self._frames.popleft()
        self._sums = [total - value for total, value in zip(self._sums, oldest)]

    def add_frame(self, result: FrameResult) -> None:
        """Add one processed frame."""
        counts = frame_counts(result, self._background)
        with self._lock:
            self._frames.append(counts)
            self._sums = [total + value for total, value in zip(self._sums, counts)]
            while len(self._frames) > 1 and (
                    self._sums[1] - self._frames[0][1] >= self.window_tiles
                    or len(self._frames) > self.window_tiles):
                self._drop_oldest()

    def clear(self) -> None:
        """Forget every frame (e.g. after the model changed)."""
        with self._lock:
            self._frames.clear()
            self._sums = [0] * _COUNTS

    def shares(self) -> DomainShares:
        """Return the counts of the frames in the window."""
        with self._lock:
            tiles, classified, unknown, background, gated, findings, far = self._sums
            frames = len(self._frames)
        return DomainShares(frames=frames, tiles=tiles, classified=classified, unknown=unknown,
                            background=background, gated_out=gated, findings=findings,
                            far=far)

    def full(self) -> bool:
        """Return whether the window holds ``window_tiles`` classified tiles."""
        with self._lock:
            return self._sums[1] >= self.window_tiles


@dataclass(frozen=True)
class DomainRule:
    """The parameters of the domain check (``domain_*``, ``hold_findings_out_of_domain``)."""

    window_tiles: int
    min_tiles: int
    unknown_warn_fraction: float
    far_warn_fraction: float
    hold_findings: bool = True

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> 'DomainRule':
        """Build from a validated parameter set."""
        return cls(values['domain_window_tiles'], values['domain_min_tiles'],
                   values['domain_unknown_warn_fraction'], values['domain_far_warn_fraction'],
                   values['hold_findings_out_of_domain'])


def domain_verdict(shares: DomainShares, rule: DomainRule) -> str:
    """
    Return :data:`COLLECTING`, :data:`OUT_OF_DOMAIN` or :data:`IN_DOMAIN` for a window.

    The check judges once the window holds ``min_tiles`` classified tiles (it keeps
    growing to ``window_tiles``): out of the domain when the unknown share reaches
    ``unknown_warn_fraction`` or the far share reaches ``far_warn_fraction``. The
    share of findings is never read.
    """
    if shares.classified < rule.min_tiles:
        return COLLECTING
    if (shares.unknown_share >= rule.unknown_warn_fraction
            or shares.far_share >= rule.far_warn_fraction):
        return OUT_OF_DOMAIN
    return IN_DOMAIN


def holds_findings(verdict: str, rule: DomainRule) -> bool:
    """
    Return whether findings of a frame judged ``verdict`` are held back.

    Held while the check says out of the domain, and while it is still collecting
    its first ``min_tiles`` tiles (nothing vouches for the model yet); never when
    ``hold_findings`` is off. Held findings are never released later.
    """
    return rule.hold_findings and verdict != IN_DOMAIN


def out_of_domain(shares: DomainShares, rule: DomainRule) -> bool:
    """Return whether the window is judged out of the model's domain."""
    return domain_verdict(shares, rule) == OUT_OF_DOMAIN


def _pct(share: float) -> str:
    return f'{100.0 * share:.0f} %'


def domain_report(shares: DomainShares, *, name: str, hardware_id: str, rule: DomainRule,
                  held_findings: int = 0) -> DiagnosticReport:
    """
    Return the out-of-domain status of the window.

    WARN when the check has ``min_tiles`` classified tiles and at least
    ``unknown_warn_fraction`` of them fell to unknown or ``far_warn_fraction`` are far
    from the domain reference: the camera sees what the model was not trained on
    (another vineyard's light, camera or varieties, an untaught disease or pest); the
    message says findings are held back (:data:`NOT_ADAPTED`) and names the fix. OK
    otherwise, with the shares (while collecting: how many tiles so far, and that
    findings are held until then).

    :param held_findings: findings held back so far (reported as a value).
    """
    breakdown = (f'{_pct(shares.unknown_share)} unknown, {_pct(shares.far_share)} far from '
                 f'the domain reference, {_pct(shares.background_share)} background, '
                 f'{_pct(shares.gated_out_share)} of tiles gated out')
    verdict = domain_verdict(shares, rule)
    held = ('findings are held back from ~/geo_detections and the map'
            if rule.hold_findings else 'findings still go to the map (hold_findings_out_of_'
            'domain false)')
    if verdict == COLLECTING:
        level, message = OK, (f'collecting tiles for the domain check: {shares.classified} of '
                              f'{rule.min_tiles} ({breakdown})'
                              + (f'; {held} until then' if rule.hold_findings else ''))
    elif verdict == OUT_OF_DOMAIN:
        reasons = []
        if shares.unknown_share >= rule.unknown_warn_fraction:
            reasons.append(f'{_pct(shares.unknown_share)} fell to unknown '
                           f'(domain_unknown_warn_fraction {rule.unknown_warn_fraction:g})')
        if shares.far_share >= rule.far_warn_fraction:
            reasons.append(f'{_pct(shares.far_share)} are far from the domain reference '
                           f'(domain_far_warn_fraction {rule.far_warn_fraction:g})')
        level, message = WARN, (
            f'{NOT_ADAPTED}: of the last {shares.classified} classified tiles '
            + ' and '.join(reasons) + f'; {held}; to adapt the model, ' + ADAPTATION_FIX)
    else:
        level, message = OK, f'in domain: {breakdown} over the last {shares.classified} tiles'
    values = (
        ('window_tiles', str(rule.window_tiles)),
        ('min_tiles', str(rule.min_tiles)),
        ('tiles_in_window', str(shares.classified)),
        ('frames_in_window', str(shares.frames)),
        ('verdict', verdict),
        ('unknown_share', f'{shares.unknown_share:.3f}'),
        ('far_share', f'{shares.far_share:.3f}'),
        ('background_share', f'{shares.background_share:.3f}'),
        ('gated_out_share', f'{shares.gated_out_share:.3f}'),
        ('finding_share', f'{shares.finding_share:.3f}'),
        ('unknown_warn_fraction', f'{rule.unknown_warn_fraction:g}'),
        ('far_warn_fraction', f'{rule.far_warn_fraction:g}'),
        ('findings_held', 'yes' if holds_findings(verdict, rule) else 'no'),
        ('held_findings', str(held_findings)),
    )
    return DiagnosticReport(name=name, level=level, message=message, hardware_id=hardware_id,
                            values=values)
