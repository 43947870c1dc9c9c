"""
Replaying a recording through the node's pipeline: the streaming loop and its counts.

:func:`run_replay` opens a bag (:mod:`.bag`), picks its image, GPS and ground-truth
topics, and streams them in log-time order through the same
:class:`~leaf_disease_ros.perception.pipeline.Detector` and
:class:`~leaf_disease_ros.geo.geotag.FixBuffer` rules as the node:

- every fix goes into the buffer as it is read;
- an image waits in a small queue until the bag's log time has passed its own log
  time by ``max(max_fix_gap_s, max_fix_age_s)`` + :data:`FIX_HOLD_SLACK_S`, so the
  fixes around its stamp have been read when it is geotagged (the node sees those
  fixes in real time; a replay that tagged frames at once would only ever
  extrapolate). The queue holds at most ``max_pending_frames`` frames: memory is
  bounded whatever the bag's length, and nothing keeps a list of all frames;
- ``camera_info`` (``--camera-info-topic``, else the topic image_transport pairs with
  the image, else the bag's only CameraInfo topic) feeds the camera geometry that
  places each finding at its leaf (:mod:`leaf_disease_ros.geo.leaf_position`, the
  node's rule and mount parameters); without it the ``camera_hfov_deg`` fallback is
  used and the notes say so;
- ground truth (``vision_msgs/Detection2DArray`` with the image's stamp) is joined
  to its frame by header stamp and scored tile by tile (:mod:`.evaluation`);
- findings pass the node's evidence rule (:mod:`leaf_disease_ros.geo.evidence`):
  confirmed ones go to ``geo_detections`` of the output bag, and the map marks each
  feature confirmed or not;
- the node's out-of-domain window (:class:`~leaf_disease_ros.ros.diagnostics.DomainWindow`)
  runs over the frames, so the report shows the shares the node's diagnostics show
  and how often they would have warned; as in the node, the findings of a frame the
  check holds back (:func:`~leaf_disease_ros.ros.diagnostics.holds_findings`: out of
  the domain, or still collecting) go to neither the map, the GeoJSON / KML nor
  ``geo_detections``, feed no evidence, and are counted apart (``findings_held``);
- frame observers (``ReplayOptions.observers``) see every processed frame with its
  decoded image and ground truth: the tile harvest (:mod:`.harvest`) and the second
  model of a comparison (:mod:`.compare`).

Everything the report needs is accumulated in bounded memory: counters, a count
matrix, a latency histogram (:mod:`.stats`), the merged findings and a thinned
track (:mod:`leaf_disease_ros.geo.mapping`). :mod:`.report` writes the files.
"""

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
import difflib
import os
import struct
import time
from typing import (AbstractSet, Any, Callable, Deque, Dict, List, Mapping, Optional, Protocol,
                    Sequence, Tuple, Type)

import numpy as np

from leaf_disease_ros.geo.camera_geometry import CameraGeometryError
from leaf_disease_ros.geo.evidence import EvidenceTracker
from leaf_disease_ros.geo.geotag import FixBuffer, OUTAGES
from leaf_disease_ros.geo.leaf_position import LeafLocator, LocatorSettings
from leaf_disease_ros.geo.mapping import FindingMerger, sighting_at, TrackRecorder
from leaf_disease_ros.geo.utm_zone import parse_utm_zone, RunZone
from leaf_disease_ros.inference.factory import load_backend
from leaf_disease_ros.perception.config import DetectorConfig, validate_parameters
from leaf_disease_ros.perception.errors import (BagError, FrameError, FrameTooSmallError,
                                                ImageDecodeError, InferenceError,
                                                UnsupportedEncodingError)
from leaf_disease_ros.perception.image_checks import has_colour, NO_COLOUR_REASON
from leaf_disease_ros.perception.pipeline import Detector, FrameResult, PreparedFrame, STAGES
from leaf_disease_ros.perception.positions import (STATUS_FIX, STATUS_GBAS_FIX, STATUS_NO_FIX,
                                                   STATUS_SBAS_FIX)
from leaf_disease_ros.perception.reduced_decode import try_reduced_decode
from leaf_disease_ros.perception.site_model import site_for_parameters
from leaf_disease_ros.replay.bag import BagMessage, BagReader, describe_topics
from leaf_disease_ros.replay.evaluation import TileEvaluator
from leaf_disease_ros.replay.gallery import DEFAULT_SIZE as GALLERY_SIZE, GalleryCollector
from leaf_disease_ros.replay.images import (COMPRESSED_IMAGE_TYPE, decode_image, grey_source,
                                            IMAGE_TYPES)
from leaf_disease_ros.replay.output_bag import DETECTIONS_BAG, OutputBag
from leaf_disease_ros.replay.overlap import AsyncWriter, Decoder, Prefetch
from leaf_disease_ros.replay.stats import LatencyHistogram
from leaf_disease_ros.replay.tile_sample import TileSample
from leaf_disease_ros.replay.typestore import make_typestore
from leaf_disease_ros.ros.camera_inputs import (apply_camera_info, camera_info_topic,
                                                CAMERA_INFO_TYPE)
from leaf_disease_ros.ros.conversions import (ground_truth_from_detection2d_array, GroundTruthBox,
                                              navsatfix_to_fix, stamp_to_ns)
from leaf_disease_ros.ros.diagnostics import (COLLECTING, domain_verdict, DomainRule,
                                              DomainWindow, holds_findings, OUT_OF_DOMAIN)

DEFAULT_IMAGE_TOPIC = '/camera/image_raw/compressed'
DEFAULT_FIX_TOPIC = '/gps/fix'
DEFAULT_GROUND_TRUTH_TOPIC = '/ground_truth'
DEFAULT_NODE_NAME = 'detector_node'  # ros/node.py NODE_NAME (rclpy-free here)
DEFAULT_OUT_DIR = 'replay_report'
NAVSATFIX_TYPE = 'sensor_msgs/msg/NavSatFix'
GROUND_TRUTH_TYPE = 'vision_msgs/msg/Detection2DArray'
FIX_HOLD_SLACK_S = 0.25
#: log time - header stamp beyond this is another time base, not a transport delay
MAX_TRANSPORT_DELAY_NS = 10 * 1_000_000_000
MAX_PENDING_FRAMES = 32
MAX_EXAMPLES = 5
STATUS_NAMES = {STATUS_NO_FIX: 'NO_FIX', STATUS_FIX: 'FIX', STATUS_SBAS_FIX: 'SBAS_FIX',
                STATUS_GBAS_FIX: 'GBAS_FIX'}
_NS_PER_S = 1_000_000_000


def _serde_errors() -> Tuple[Type[BaseException], ...]:
    try:
        from rosbags.serde import SerdeError
    except ImportError:  # pragma: no cover - rosbags is the replay extra
        return ()
    return (SerdeError,)


# What rosbags' CDR deserialiser raises on bytes that are not the declared type (a bad
# encapsulation header is its own SerdeError).
_DESERIALIZE_ERRORS = (ValueError, KeyError, IndexError, struct.error, AssertionError,
                       TypeError, OverflowError) + _serde_errors()


class FrameObserver(Protocol):
    """
    Something that sees every processed frame of a replay (harvest, comparison).

    An observer whose class sets ``reads_pixels = False`` (it reads only the result)
    lets the replay decode JPEG frames at reduced size; any other observer gets the
    camera's full-size frames (``perception/reduced_decode.py``).
    """

    def observe(self, image_bgr: np.ndarray, result: FrameResult,
                truth: Optional[List[GroundTruthBox]]) -> None:
        """Take one frame: its ``(H, W, 3)`` BGR image, result and ground truth (or None)."""


@dataclass
class ReplayOptions:
    """
    What to replay and how.

    Empty topic names take the defaults; an image or GPS topic left at its default
    that the bag lacks is looked up by type (the bag's only image / NavSatFix topic).
    ``parameters`` are the node's parameters (``perception/config.py`` table, validated
    here); ``max_frames`` 0 = all frames; ``observers`` see every processed frame
    after it has been counted. ``inference_workers`` > 1: that many frames infer at once,
    each on its own thread (a backend that takes concurrent calls, ONNX Runtime on the
    CPU; others infer one frame at a time), and, when the replay loads the backend and
    ``onnx_intra_op_threads`` is 0, with one intra-op thread each: on a CPU one frame a
    core keeps the cores busier than one frame across all of them. Results are counted
    and written in frame order either way.
    """

    bag_path: str
    out_dir: str = DEFAULT_OUT_DIR
    image_topic: str = ''
    fix_topic: str = ''
    ground_truth_topic: str = ''
    camera_info_topic: str = ''
    parameters: Mapping[str, Any] = field(default_factory=dict)
    max_frames: int = 0
    node_name: str = DEFAULT_NODE_NAME
    write_bag: bool = True
    max_pending_frames: int = MAX_PENDING_FRAMES
    observers: Sequence[FrameObserver] = ()
    gallery_size: int = GALLERY_SIZE  # report.html gallery per section; 0: none
    save_tiles: int = 0  # tiles kept per label in OUT/tiles/<label>/ (embedding map); 0: none
    inference_workers: int = 1


#: at most this many inference workers by default (memory: two frames in flight each)
MAX_DEFAULT_WORKERS = 8


def default_inference_workers() -> int:
    """Return the replay's default inference workers: one per CPU core, at most 8."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


class _NoColour(FrameError):
    """A frame without colour: skipped, not classified (perception/image_checks.py)."""


@dataclass(frozen=True)
class Progress:
    """Progress of a replay: frames done so far, expected in total, seconds elapsed."""

    frames_done: int
    frames_expected: int
    elapsed_s: float


@dataclass(frozen=True)
class Topics:
    """The topics a replay reads (None: the bag has no such topic)."""

    image: str
    image_type: str
    fix: Optional[str]
    ground_truth: Optional[str]
    notes: Tuple[str, ...]
    camera_info: Optional[str] = None


@dataclass
class _Job:
    """A released frame: its bookkeeping, and its inference (a future with several workers)."""

    frame: '_PendingFrame'
    truth: Optional[List[GroundTruthBox]]
    where: str
    inferred: 'Optional[Future[Tuple[_Decoded, FrameResult]]]' = None


@dataclass
class _PendingFrame:
    log_time_ns: int
    stamp_ns: int
    header: Any
    msg: Any
    data: bytes
    decoded: 'Optional[Future[_Decoded]]' = None  # from overlap.Decoder


@dataclass(frozen=True)
class _Decoded:
    """
    A frame decoded and prepared on the decoder's thread (:meth:`_Replay._decode`).

    ``image`` is at ``1/pixel_scale`` of the camera's size (see
    ``perception/reduced_decode.py``); :meth:`full` decodes the message again at full
    size, once, for what needs the camera's pixels (the report's gallery tiles).
    """

    image: np.ndarray
    decode_s: float
    prepared: PreparedFrame
    pixel_scale: int
    msg: Any
    msgtype: str
    _full: List[np.ndarray] = field(default_factory=list)

    def full(self) -> np.ndarray:
        """Return the frame at the camera's full size (decoded again when it was reduced)."""
        if self.pixel_scale == 1:
            return self.image
        if not self._full:
            self._full.append(decode_image(self.msg, self.msgtype))
        return self._full[0]


@dataclass
class ReplayState:
    """Everything a replay accumulates (bounded); :mod:`.report` turns it into files."""

    parameters: Dict[str, Any]
    topics: Topics
    labels: Tuple[str, ...]
    model: Dict[str, Any]
    bag_path: str
    bag_storage: str
    frames_in_bag: int
    evaluator: Optional[TileEvaluator]
    merger: FindingMerger
    track: TrackRecorder
    frames_read: int = 0
    frames_processed: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    skipped_examples: List[str] = field(default_factory=list)
    tiles_total: int = 0
    tiles_gated: int = 0
    tiles_classified: int = 0
    tiles_unknown: int = 0
    tiles_background: int = 0
    tiles_by_label: Dict[str, int] = field(default_factory=dict)
    findings: int = 0
    findings_without_position: int = 0
    findings_outside_utm: int = 0  # the run's UTM zone cannot carry it: not in geo_detections
    frames_outside_utm: int = 0
    findings_by_label: Dict[str, int] = field(default_factory=dict)
    evidence: Optional[EvidenceTracker] = None
    findings_confirmed: int = 0
    findings_confirmed_by_label: Dict[str, int] = field(default_factory=dict)
    domain: Optional[DomainWindow] = None
    domain_frames_judged: int = 0  # frames after which the window was full
    domain_frames_warn: int = 0  # ... and the node's domain status would be WARN
    domain_unknown_share_peak: float = 0.0
    domain_far_share_peak: float = 0.0
    domain_rule: Optional[DomainRule] = None
    findings_held: int = 0  # held back by the domain check: never on the map
    findings_held_collecting: int = 0  # ... while it was still collecting tiles
    findings_held_by_label: Dict[str, int] = field(default_factory=dict)
    frames_held: int = 0  # frames whose findings (if any) were held back
    geotag_reasons: Dict[str, int] = field(default_factory=dict)
    positions_by_status: Dict[str, int] = field(default_factory=dict)
    fixes_read: int = 0
    fixes_by_status: Dict[str, int] = field(default_factory=dict)
    fixes_undecodable: int = 0
    fix_buffer_stats: Dict[str, int] = field(default_factory=dict)
    ground_truth_messages: int = 0
    ground_truth_undecodable: int = 0
    frames_without_ground_truth: int = 0
    frames_queued_early: int = 0
    frames_unstamped: int = 0  # header stamp 0: not placed in time, not joined
    frames_unstamped_without_ground_truth: int = 0
    ground_truth_unstamped: int = 0
    frames_stamp_disorder: int = 0  # stamp repeats or is older than an earlier frame's
    ground_truth_repeated: int = 0  # a stamp that already had ground truth (replaced)
    fixes_late: int = 0  # fixes older than a frame that was already geotagged
    max_fix_delay_ns: int = 0
    latency_pipeline: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency_decode: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency_frame: LatencyHistogram = field(default_factory=LatencyHistogram)
    stage_totals_ms: Dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.))
    first_log_time_ns: Optional[int] = None
    last_log_time_ns: Optional[int] = None
    wall_s: float = 0.0
    inference_workers: int = 1  # frames inferred at once (ReplayOptions.inference_workers)
    truncated_reason: str = ''
    notes: List[str] = field(default_factory=list)
    output_bag: str = ''
    output_bag_messages: int = 0
    gallery: Optional[GalleryCollector] = None
    tile_sample: Optional[TileSample] = None
    locator: Optional[LeafLocator] = None
    camera_info_messages: int = 0
    camera_info_rejected: int = 0
    utm: RunZone = field(default_factory=RunZone)  # geo_detections' one zone (utm_zone.py)


def _closest_topic(bag: BagReader, wanted: str, types: Tuple[str, ...]) -> str:
    names = [t.name for t in bag.topics.values() if t.msgtype in types]
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.5)
    return f' (did you mean {close[0]}?)' if close else ''


def _find_topic(bag: BagReader, name: str, default: str, types: Tuple[str, ...],
                what: str, option: str, required: bool, notes: List[str],
                by_type: bool = True) -> Optional[str]:
    """
    Return the topic to read for one input (see ReplayOptions).

    A topic given by name must be in the bag with the right type: a typo is an error
    listing the bag's topics, never a silently missing input. A default topic the bag
    lacks is replaced by the bag's only topic of the type (``by_type``), or is absent
    (None) when the input is optional.
    """
    wanted = name or default
    info = bag.topics.get(wanted)
    if info is not None:
        _refuse_mixed_types(bag, wanted, what)
        if info.msgtype not in types:
            raise BagError(f'{what} topic {wanted} has type {info.msgtype}, expected '
                           f'{" or ".join(types)}; choose another with {option} '
                           f'(topics: {describe_topics(bag.topics)})')
        return wanted
    if not name and by_type:
        candidates = [t.name for t in bag.topics.values() if t.msgtype in types]
        if len(candidates) == 1:
            _refuse_mixed_types(bag, candidates[0], what)
            notes.append(f'{what} topic {default} is not in the bag; using {candidates[0]} '
                         f'(its only {" / ".join(types)} topic)')
            return candidates[0]
        if len(candidates) > 1:
            raise BagError(f'the bag has no {what} topic {default} and {len(candidates)} '
                           f'{" / ".join(types)} topics: {", ".join(candidates)}. Choose one '
                           f'with {option} (topics: {describe_topics(bag.topics)})')
    if required or name:
        raise BagError(f'the bag has no {what} topic {wanted}'
                       f'{_closest_topic(bag, wanted, types)}; its topics: '
                       f'{describe_topics(bag.topics)}. Choose one with {option}')
    return None


def _refuse_mixed_types(bag: BagReader, topic: str, what: str) -> None:
    """Raise BagError when ``topic`` was recorded with several message types."""
    mixed = bag.mixed_types.get(topic)
    if mixed:
        raise BagError(f'{what} topic {topic} was recorded with {len(mixed)} message types '
                       f'({", ".join(mixed)}; two publishers of different types on one '
                       'topic): the replay reads one type per topic. Record each type on '
                       'its own topic')


def resolve_topics(bag: BagReader, options: ReplayOptions) -> Topics:
    """
    Return the image, GPS and ground-truth topics to read from ``bag``.

    Every topic option is checked against the bag before anything is processed.

    :raises BagError: no image topic, a topic given by name that the bag lacks, or a
        topic of the wrong type (the message lists the bag's topics and types).
    """
    notes: List[str] = []
    image = _find_topic(bag, options.image_topic, DEFAULT_IMAGE_TOPIC, IMAGE_TYPES, 'image',
                        '--image-topic', True, notes) or ''
    fix = _find_topic(bag, options.fix_topic, DEFAULT_FIX_TOPIC, (NAVSATFIX_TYPE,), 'GPS',
                      '--fix-topic', False, notes)
    if fix is None:
        notes.append(f'no GPS: the bag has no NavSatFix topic {DEFAULT_FIX_TOPIC}; findings '
                     'have no position')
    truth_types = (GROUND_TRUTH_TYPE,)
    truth = _find_topic(bag, options.ground_truth_topic, DEFAULT_GROUND_TRUTH_TOPIC,
                        truth_types, 'ground-truth', '--ground-truth-topic', False, [],
                        by_type=False)  # detections of a replayed output bag are no truth
    if truth is None:
        notes.append(f'no ground truth: the bag has no topic {DEFAULT_GROUND_TRUTH_TOPIC}; no '
                     'accuracy figures')
    paired = camera_info_topic(image)
    camera_info = _find_topic(bag, options.camera_info_topic, paired, (CAMERA_INFO_TYPE,),
                              'camera_info', '--camera-info-topic', False, notes)
    if camera_info is None:
        notes.append(f'no camera_info: the bag has no CameraInfo topic {paired}; findings are '
                     'placed with the camera_hfov_deg field of view (fallback)')
    return Topics(image=image, image_type=bag.topics[image].msgtype, fix=fix,
                  ground_truth=truth, notes=tuple(notes), camera_info=camera_info)


#: how many image messages judge whether the camera is grey (see refuse_grey_camera)
GREY_CAMERA_FRAMES = 8


def refuse_grey_camera(bag: BagReader, topics: Topics, typestore: Any) -> None:
    """
    Refuse a recording whose camera is grey (mono), before anything is processed.

    The model classifies colour leaves: a mono8 camera, or grey PNG / JPEG frames,
    would be "evaluated" as nothing (every tile fails the vegetation gate). The first
    :data:`GREY_CAMERA_FRAMES` image messages that deserialise judge the camera: it is
    grey when every one of them is. One grey frame (a driver that starts in mono, a
    test pattern) does not refuse a colour recording: grey frames in it are skipped
    and counted (``no_colour``).

    :raises BagError: naming the topic, its encoding and what to record instead.
    """
    kinds: List[str] = []
    messages = bag.messages([topics.image])
    try:
        for message in messages:
            try:
                msg = typestore.deserialize_cdr(message.data, message.msgtype)
            except _DESERIALIZE_ERRORS:
                continue  # counted as undecodable when the frame is processed
            kinds.append(grey_source(msg, topics.image_type))
            if not kinds[-1] or len(kinds) >= GREY_CAMERA_FRAMES:
                break
    finally:
        close = getattr(messages, 'close', None)
        if close is not None:
            close()
    if kinds and all(kinds):
        raise BagError(f'the image topic {topics.image} carries {kinds[0]} images: the model '
                       'classifies colour photos of leaves (the vegetation gate and the '
                       'disease symptoms are colours), so a grey camera cannot be evaluated '
                       f'(its first {len(kinds)} frames are all grey). '
                       'Record the colour stream of the camera (bgr8 / rgb8, or its debayered '
                       'colour topic) and choose it with --image-topic')


class _Replay:
    """One run: the loop over the bag's messages and the per-frame work."""

    def __init__(self, bag: BagReader, topics: Topics, detector: Detector,
                 state: ReplayState, options: ReplayOptions,
                 output: Optional[OutputBag], typestore: Any,
                 progress: Optional[Callable[[Progress], None]]) -> None:
        self.bag = bag
        self.topics = topics
        self.detector = detector
        self.state = state
        self.options = options
        self.output: Any = output  # an overlap.AsyncWriter while running
        self.decoder: Decoder[_Decoded] = Decoder(self._decode)
        # frames inferring at once (ReplayOptions.inference_workers), counted in order
        self.workers = (max(1, options.inference_workers)
                        if detector.concurrent_inference else 1)
        self.infer_pool = (ThreadPoolExecutor(self.workers, thread_name_prefix='replay-infer')
                           if self.workers > 1 else None)
        self.in_flight: Deque[_Job] = collections.deque()
        state.inference_workers = self.workers
        # JPEG frames at 1/2 or 1/4 size when every tile is shrunk that much anyway
        # (perception/reduced_decode.py); observers that read the frame's pixels see full size
        self.reduced_decode = (bool(state.parameters['reduced_jpeg_decode'])
                               and topics.image_type == COMPRESSED_IMAGE_TYPE
                               and all(getattr(o, 'reads_pixels', True) is False
                                       for o in options.observers))
        self.store = typestore
        self.progress = progress
        params = state.parameters
        self.fixes = (FixBuffer(params['fix_buffer_size'], params['max_fix_speed_mps'])
                      if topics.fix else None)
        hold_s = max(params['max_fix_gap_s'], params['max_fix_age_s']) + FIX_HOLD_SLACK_S
        self.base_hold_ns = int(hold_s * _NS_PER_S)
        # transport delays (log time - header stamp) seen so far, to hold frames long
        # enough for fixes that are logged late (see hold_ns)
        self.fix_delay_ns = 0
        self.image_delay_ns: Optional[int] = None
        self.newest_tagged_stamp_ns: Optional[int] = None
        self.newest_frame_stamp_ns: Optional[int] = None  # of the frames processed so far
        self.pending: Deque[_PendingFrame] = collections.deque()
        self.truth: 'collections.OrderedDict[int, List[GroundTruthBox]]' = \
            collections.OrderedDict()
        self.max_truth = 4 * options.max_pending_frames + 64
        self.expected = state.frames_in_bag
        if options.max_frames:
            self.expected = min(self.expected, options.max_frames) if self.expected \
                else options.max_frames
        self.start = time.perf_counter()

    @property
    def hold_ns(self) -> int:
        """
        How long (log time) a frame waits for the fixes around its stamp.

        ``max(max_fix_gap_s, max_fix_age_s)`` + :data:`FIX_HOLD_SLACK_S`, plus how much
        later fixes are logged after their stamps than images are (a GPS driver that
        publishes 1.5 s late must not cost the frames their interpolation).
        """
        extra = self.fix_delay_ns - (self.image_delay_ns or 0)
        return self.base_hold_ns + max(0, extra)

    def _decode(self, msg: Any) -> _Decoded:
        """Decode (reduced when allowed), colour-check and prepare one frame (decoder's thread)."""
        start = time.perf_counter()
        reduced = (try_reduced_decode(msg.data, self.detector.config, self.detector.card)
                   if self.reduced_decode else None)
        image, scale = reduced if reduced is not None else (
            decode_image(msg, self.topics.image_type), 1)
        decode_s = time.perf_counter() - start
        if not has_colour(image):
            raise _NoColour(NO_COLOUR_REASON)
        return _Decoded(image, decode_s, self.detector.prepare(image, pixel_scale=scale), scale,
                        msg, self.topics.image_type)

    def _deserialize(self, message: BagMessage) -> Any:
        return self.store.deserialize_cdr(message.data, message.msgtype)

    def run(self) -> None:
        """Replay the bag with reading, decoding and writing beside inference (.overlap)."""
        output = self.output
        writer = AsyncWriter(output) if output is not None else None
        self.output = writer
        try:
            self._run()
            if writer is not None:
                writer.flush()
        finally:
            if self.infer_pool is not None:
                self.infer_pool.shutdown(wait=True, cancel_futures=True)
            self.decoder.close()
            if writer is not None:
                try:
                    writer.flush()
                except Exception:  # noqa: B902 - the run's own error is the one to raise
                    pass
            self.output = output

    def _run(self) -> None:
        state = self.state
        wanted = [t for t in (self.topics.image, self.topics.fix, self.topics.ground_truth,
                              self.topics.camera_info) if t]
        messages = Prefetch(self.bag.messages(wanted))
        try:
            self._loop(messages)
        finally:
            messages.close()
        while self.pending:
            self._process(self.pending.popleft())
        self._drain()
        state.truncated_reason = self.bag.truncated_reason
        if self.fixes is not None:
            state.fix_buffer_stats = self.fixes.stats()
        self._closing_notes()
        state.wall_s = time.perf_counter() - self.start

    def _loop(self, messages: Prefetch) -> None:
        state = self.state
        last_frame_log_ns: Optional[int] = None
        for message in messages:
            now = message.log_time_ns
            if state.first_log_time_ns is None:
                state.first_log_time_ns = now
            state.last_log_time_ns = now
            if message.topic == self.topics.fix:
                self._on_fix(message)
            elif message.topic == self.topics.ground_truth:
                self._on_truth(message)
            elif message.topic == self.topics.camera_info:
                self._on_camera_info(message)
            elif message.topic == self.topics.image:
                if self.options.max_frames and state.frames_read >= self.options.max_frames:
                    pass  # enough frames: keep reading fixes until the queue is done
                else:
                    self._on_image(message)
                    last_frame_log_ns = now
            self._release(now)
            if (self.options.max_frames and state.frames_read >= self.options.max_frames
                    and not self.pending and last_frame_log_ns is not None
                    and now >= last_frame_log_ns + self.hold_ns):
                break

    def _on_fix(self, message: BagMessage) -> None:
        state = self.state
        try:
            fix = navsatfix_to_fix(self._deserialize(message))
        except _DESERIALIZE_ERRORS as exc:
            state.fixes_undecodable += 1
            self._example(f'GPS message at log time {message.log_time_ns} does not '
                          f'deserialize: {exc}')
            return
        state.fixes_read += 1
        delay_ns = message.log_time_ns - fix.stamp_ns
        if 0 < delay_ns <= MAX_TRANSPORT_DELAY_NS:  # beyond it: another time base, not a delay
            self.fix_delay_ns = max(self.fix_delay_ns, delay_ns)
            state.max_fix_delay_ns = max(state.max_fix_delay_ns, delay_ns)
        if self.newest_tagged_stamp_ns is not None and fix.stamp_ns < self.newest_tagged_stamp_ns:
            state.fixes_late += 1  # a frame after it was already tagged without it
        name = STATUS_NAMES.get(fix.status, str(fix.status))
        state.fixes_by_status[name] = state.fixes_by_status.get(name, 0) + 1
        if self.fixes is not None:
            admission = self.fixes.admit(fix)
            if admission.outcome in OUTAGES:
                self.state.track.break_segment()
            elif admission.fix is not None:  # validated and normalised (glitches left out)
                stored = admission.fix
                self.state.utm.observe_fix(stored)  # the run's zone: the first valid fix's
                self.state.track.add(stored.latitude_deg, stored.longitude_deg, stored.stamp_ns)
        if self.output is not None:
            self.output.write_fix(message.log_time_ns, message.data)

    def _on_camera_info(self, message: BagMessage) -> None:
        state = self.state
        state.camera_info_messages += 1
        if state.locator is None:
            return
        try:
            apply_camera_info(state.locator, self._deserialize(message))
        except _DESERIALIZE_ERRORS + (CameraGeometryError,) as exc:
            state.camera_info_rejected += 1
            self._example(f'camera_info at log time {message.log_time_ns} not used: {exc}')

    def _on_truth(self, message: BagMessage) -> None:
        state = self.state
        try:
            msg = self._deserialize(message)
            boxes = ground_truth_from_detection2d_array(msg)
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except _DESERIALIZE_ERRORS as exc:
            state.ground_truth_undecodable += 1
            self._example(f'ground-truth message at log time {message.log_time_ns} does not '
                          f'deserialize: {exc}')
            return
        state.ground_truth_messages += 1
        if stamp_ns <= 0:  # cannot be joined to a frame by stamp
            state.ground_truth_unstamped += 1
            return
        state.ground_truth_repeated += stamp_ns in self.truth
        self.truth[stamp_ns] = boxes
        while len(self.truth) > self.max_truth:
            self.truth.popitem(last=False)

    def _on_image(self, message: BagMessage) -> None:
        state = self.state
        try:
            msg = self._deserialize(message)
        except _DESERIALIZE_ERRORS as exc:
            state.frames_read += 1
            self._skip('undecodable_message', f'image message at log time '
                       f'{message.log_time_ns} does not deserialize: {exc}')
            return
        state.frames_read += 1
        stamp_ns = stamp_to_ns(msg.header.stamp)
        delay_ns = message.log_time_ns - stamp_ns
        if 0 <= delay_ns <= MAX_TRANSPORT_DELAY_NS:
            self.image_delay_ns = (delay_ns if self.image_delay_ns is None
                                   else min(self.image_delay_ns, delay_ns))
        self.pending.append(_PendingFrame(message.log_time_ns, stamp_ns, msg.header, msg,
                                          message.data,
                                          self.decoder.submit(msg)))
        if len(self.pending) > self.options.max_pending_frames:
            state.frames_queued_early += 1
            self._process(self.pending.popleft())

    def _release(self, now_ns: int) -> None:
        while self.pending and now_ns >= self.pending[0].log_time_ns + self.hold_ns:
            self._process(self.pending.popleft())

    def _closing_notes(self) -> None:
        state = self.state
        if state.frames_unstamped:
            state.notes.append(
                f'{state.frames_unstamped} of {state.frames_read} frames have header stamp 0 '
                '(or nanosec >= 1e9, not a time; the camera driver does not stamp them): '
                'they cannot be placed in time, so '
                'they have no position (no_image_stamp) and are not joined with ground truth')
        if state.frames_stamp_disorder:
            state.notes.append(
                f'{state.frames_stamp_disorder} of {state.frames_read} frames repeat the header '
                'stamp of an earlier frame or go back before it (camera clock reset, a '
                'driver re-stamping, a spliced bag): ground truth is joined by stamp, so '
                'such frames get the ground truth of their stamp once, or none '
                f'({state.frames_without_ground_truth} processed frames without ground truth)')
        if state.ground_truth_repeated:
            state.notes.append(f'{state.ground_truth_repeated} ground-truth messages repeat the '
                               'stamp of an earlier one: the later replaces the earlier')
        if state.ground_truth_unstamped:
            state.notes.append(f'{state.ground_truth_unstamped} ground-truth messages have '
                               'header stamp 0: not joined with any frame')
        extra_s = (self.hold_ns - self.base_hold_ns) / _NS_PER_S
        if extra_s > FIX_HOLD_SLACK_S:
            state.notes.append(f'fixes are logged up to {state.max_fix_delay_ns / 1e9:.2f} s '
                               f'after their stamps: frames waited {extra_s:.2f} s longer so '
                               'the fixes around them were known')
        if state.fixes_late:
            state.notes.append(f'{state.fixes_late} fixes arrived after frames later than them '
                               'had been geotagged (logged late): those frames may have '
                               'missed an interpolation')

    def _example(self, text: str) -> None:
        if len(self.state.skipped_examples) < MAX_EXAMPLES:
            self.state.skipped_examples.append(text)

    def _skip(self, reason: str, text: str) -> None:
        self.state.skipped[reason] = self.state.skipped.get(reason, 0) + 1
        self._example(text)

    def _infer(self, frame: _PendingFrame) -> Tuple[_Decoded, FrameResult]:
        """Return the decoded frame and its result (on a worker with several workers)."""
        # decoded and prepared on the decoder's thread meanwhile
        decoded = (frame.decoded.result() if frame.decoded is not None
                   else self._decode(frame.msg))
        return decoded, self.detector.process_prepared(decoded.prepared, frame.stamp_ns,
                                                       self.fixes)

    def _process(self, frame: _PendingFrame) -> None:
        """Start a released frame; count and write it now, or after the frames before it."""
        state = self.state
        unstamped = frame.stamp_ns <= 0
        state.frames_unstamped += unstamped
        if not unstamped:
            newest = self.newest_frame_stamp_ns
            state.frames_stamp_disorder += newest is not None and frame.stamp_ns <= newest
            self.newest_frame_stamp_ns = max(frame.stamp_ns, newest or 0)
        truth = None if unstamped else self.truth.pop(frame.stamp_ns, None)
        job = _Job(frame, truth, f'frame at stamp {frame.stamp_ns / 1e9:.3f} s')
        if self.infer_pool is None:
            self._finish(job)
            return
        job.inferred = self.infer_pool.submit(self._infer, frame)
        self.in_flight.append(job)
        while len(self.in_flight) > 2 * self.workers:  # a frame queued behind each worker
            self._finish(self.in_flight.popleft())

    def _drain(self) -> None:
        while self.in_flight:
            self._finish(self.in_flight.popleft())

    def _finish(self, job: _Job) -> None:
        """Count, observe and write one frame (in frame order)."""
        state = self.state
        frame, truth, where = job.frame, job.truth, job.where
        result: Optional[FrameResult] = None
        try:
            decoded, result = (job.inferred.result() if job.inferred is not None
                               else self._infer(frame))
            image, decode_s = decoded.image, decoded.decode_s
            if self.newest_tagged_stamp_ns is None or frame.stamp_ns > self.newest_tagged_stamp_ns:
                self.newest_tagged_stamp_ns = frame.stamp_ns
        except _NoColour as exc:
            self._skip('no_colour', f'{where}: {exc}')
        except UnsupportedEncodingError as exc:
            self._skip('unsupported_encoding', f'{where}: {exc}')
        except ImageDecodeError as exc:
            self._skip('corrupt_image', f'{where}: {exc}')
        except FrameTooSmallError as exc:
            self._skip('too_small', f'{where}: {exc}')
        except FrameError as exc:
            self._skip('bad_frame', f'{where}: {exc}')
        except InferenceError as exc:
            self._skip('inference_error', f'{where}: {exc}')
        confirmed: Optional[AbstractSet[int]] = None
        if result is not None:
            decode_ms = decode_s * 1e3
            confirmed = self._account(result, truth, decode_ms)
            for observer in self.options.observers:
                observer.observe(image, result, truth)
            if state.gallery is not None:
                state.gallery.add(decoded.full, result, frame.log_time_ns)
            if state.tile_sample is not None:
                state.tile_sample.add(image, result, truth, decoded.pixel_scale)
        if self.output is not None:
            self.output.write_frame(frame.log_time_ns, frame.data, frame.header, result,
                                    self.detector.card, self.detector.unknown_threshold(),
                                    confirmed, state.utm)
        if self.progress is not None:
            self.progress(Progress(state.frames_processed + sum(state.skipped.values()),
                                   self.expected, time.perf_counter() - self.start))

    def _account(self, result: FrameResult, truth: Optional[List[GroundTruthBox]],
                 decode_ms: float) -> Optional[AbstractSet[int]]:
        """Count one frame; return its confirmed findings (None: no evidence rule)."""
        state = self.state
        verdict = self._judge_domain(result)
        held = state.domain_rule is not None and holds_findings(verdict, state.domain_rule)
        state.frames_held += held
        confirmed: Optional[AbstractSet[int]] = (
            state.evidence.update(result, held) if state.evidence is not None
            else (frozenset() if held else None))
        state.frames_processed += 1
        state.latency_decode.add(decode_ms)
        state.latency_pipeline.add(result.timings_ms['total'])
        state.latency_frame.add(decode_ms + result.timings_ms['total'])
        for stage, value in result.timings_ms.items():
            state.stage_totals_ms[stage] = state.stage_totals_ms.get(stage, 0.0) + value
        state.tiles_total += result.tiles_total
        state.tiles_gated += result.tiles_gated
        state.tiles_classified += len(result.detections)
        reason = result.geotag.reason
        state.geotag_reasons[reason] = state.geotag_reasons.get(reason, 0) + 1
        tag = result.geotag.geotag
        outside_utm = (tag is not None
                       and state.utm.project(tag.latitude_deg, tag.longitude_deg) is None)
        if tag is not None:
            status = STATUS_NAMES.get(tag.status, str(tag.status))
            state.positions_by_status[status] = state.positions_by_status.get(status, 0) + 1
            state.frames_outside_utm += outside_utm
        background = self.detector.card.background_labels
        for index, detection in enumerate(result.detections):
            state.tiles_by_label[detection.label] = \
                state.tiles_by_label.get(detection.label, 0) + 1
            if detection.is_unknown:
                state.tiles_unknown += 1
            if detection.label in background:
                state.tiles_background += 1
            if not detection.is_finding:
                continue
            state.findings += 1
            state.findings_by_label[detection.label] = \
                state.findings_by_label.get(detection.label, 0) + 1
            if held:
                state.findings_held += 1
                state.findings_held_collecting += verdict == COLLECTING
                state.findings_held_by_label[detection.label] = \
                    state.findings_held_by_label.get(detection.label, 0) + 1
                continue
            is_confirmed = confirmed is None or index in confirmed
            if is_confirmed:
                state.findings_confirmed += 1
                state.findings_confirmed_by_label[detection.label] = \
                    state.findings_confirmed_by_label.get(detection.label, 0) + 1
            position = result.position_of(index)
            if position is None:
                state.findings_without_position += 1
            else:
                state.findings_outside_utm += outside_utm
                state.merger.add(sighting_at(detection.label, detection.score, position,
                                             result.stamp_ns, is_confirmed))
        if state.evaluator is not None:
            if truth is None and result.stamp_ns <= 0:
                state.frames_unstamped_without_ground_truth += 1
            elif truth is None:
                state.frames_without_ground_truth += 1
            else:
                state.evaluator.add_frame(result.detections, truth)
        return confirmed

    def _judge_domain(self, result: FrameResult) -> str:
        """Add a frame to the domain window; return the check's verdict with it."""
        state = self.state
        if state.domain is None or state.domain_rule is None:
            return ''
        state.domain.add_frame(result)
        shares = state.domain.shares()
        verdict = domain_verdict(shares, state.domain_rule)
        if verdict != COLLECTING:
            state.domain_frames_judged += 1
            state.domain_unknown_share_peak = max(state.domain_unknown_share_peak,
                                                  shares.unknown_share)
            state.domain_far_share_peak = max(state.domain_far_share_peak, shares.far_share)
            state.domain_frames_warn += verdict == OUT_OF_DOMAIN
        return verdict


def run_replay(options: ReplayOptions, backend: Any = None,
               progress: Optional[Callable[[Progress], None]] = None) -> ReplayState:
    """
    Replay a bag and return what was accumulated (write it with :mod:`.report`).

    :param options: the bag, topics, parameters and limits.
    :param backend: an already loaded backend (tests, benchmarks); None loads the one
        the parameters name (``model_path``, ``backend``...) and closes it at the end.
    :param progress: called after every frame with the frames done so far.

    :raises BagError: the bag cannot be read or lacks an image topic.
    :raises ConfigError: a parameter is invalid.
    :raises ModelLoadError: the model cannot be loaded.
    """
    params = validate_parameters(options.parameters)
    if options.max_pending_frames < 1:
        raise ValueError('max_pending_frames must be >= 1')
    with BagReader(options.bag_path) as bag:
        topics = resolve_topics(bag, options)
        store = make_typestore()
        refuse_grey_camera(bag, topics, store)
        own_backend = backend is None
        if own_backend:
            threads = params['onnx_intra_op_threads']
            if options.inference_workers > 1 and threads == 0:
                threads = 1  # one frame a core (ReplayOptions)
            backend = load_backend(params['model_path'], params['backend'],
                                   onnx_provider=params['onnx_provider'],
                                   intra_op_threads=threads, max_batch=params['max_batch'])
        output: Optional[OutputBag] = None
        try:
            card = backend.card
            site = site_for_parameters(params, card)
            detector = Detector(backend, card, DetectorConfig.from_parameters(params), site=site)
            state = ReplayState(
                parameters=params, topics=topics, labels=tuple(card.labels),
                model=dict(backend.describe(), site=site.site_id if site else '',
                           unknown_threshold=detector.unknown_threshold(),
                           finding_threshold=detector.finding_threshold(),
                           finding_threshold_from=detector.finding_threshold_source(),
                           display_names=card.display_name_map(),
                           finding_score=card.finding_score),
                bag_path=os.path.abspath(options.bag_path),
                bag_storage=bag.storage, frames_in_bag=bag.topics[topics.image].count,
                evaluator=TileEvaluator(card.labels) if topics.ground_truth else None,
                merger=FindingMerger(params['merge_radius_m'], params['position_gate_sigma']),
                # a silence longer than this leaves some frame in it without a position
                track=TrackRecorder(max_gap_s=max(params['max_fix_gap_s'],
                                                  2.0 * params['max_fix_age_s'])),
                domain=DomainWindow(params['domain_window_tiles'], card.background_labels),
                domain_rule=DomainRule.from_parameters(params),
                evidence=EvidenceTracker(params['evidence_min_sightings'],
                                         params['evidence_window_frames'],
                                         params['evidence_radius_m'],
                                         params['position_gate_sigma']),
                notes=list(bag.notes) + list(topics.notes),
                gallery=GalleryCollector(options.gallery_size) if options.gallery_size else None,
                tile_sample=TileSample(options.save_tiles, card) if options.save_tiles else None,
                utm=RunZone(parse_utm_zone(params['utm_zone'])))
            if params['ground_positions']:
                state.locator = detector.locator = LeafLocator(
                    LocatorSettings.from_parameters(params))
            if options.write_bag:
                output = OutputBag(os.path.join(options.out_dir, DETECTIONS_BAG), store,
                                   options.node_name, topics.image, topics.image_type,
                                   topics.fix, params['geo_frame_id'])
            _Replay(bag, topics, detector, state, options, output, store, progress).run()
            if state.gallery is not None:
                state.gallery.explain(backend, card)  # saliency of the kept tiles, batched
            if state.tile_sample is not None:
                state.tile_sample.write(options.out_dir)
            if output is not None:
                output.commit()
                state.output_bag = output.path
                state.output_bag_messages = output.messages
                output = None
            return state
        finally:
            if output is not None:
                output.abort()
            if own_backend:
                backend.close()
