"""
The one parameter table of leaf_disease_ros, and its pure validators.

Every parameter the node declares, the replay accepts and ``config/detector.yaml``
documents is a row of :data:`PARAMETERS`: name, type, default, range or choices,
unit-bearing name, description, and whether a change needs a restart
(``read_only``). Nothing else in the package invents a parameter.

Validation is pure (no ROS): :func:`validate_value` checks one value,
:func:`validate_parameters` checks a whole set (defaults filled in, cross-field
rules applied; the node's live changes go through it too, see
:func:`leaf_disease_ros.ros.params.review_changes`). Each raises
:class:`~leaf_disease_ros.perception.errors.ConfigError` naming the parameter and the
reason.

Names are read strictly, in one place: :func:`strict_parameters` is what the
replay's ``--params-file`` (:func:`load_params_file`) and ``--param``, and the node's
overrides (params file, ``-p``) go through. A name that is not in the table is an
error naming it and the closest known name (a typo must not leave the default in
force silently); the parameters ROS itself declares on every node
(``use_sim_time``, ``qos_overrides.*``) are accepted and left to ROS.
"""

from dataclasses import dataclass
import difflib
import math
import re
import reprlib
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from leaf_disease_ros.perception.errors import ConfigError

BOOL = 'bool'
INT = 'int'
DOUBLE = 'double'
STRING = 'string'
DOUBLE_ARRAY = 'double_array'

TILING_MODES = ('grid', 'none')
BACKENDS = ('auto', 'onnxruntime', 'tensorrt')
ONNX_PROVIDERS = ('auto', 'cpu', 'cuda')
IMAGE_TRANSPORTS = ('raw', 'compressed')
QOS_RELIABILITIES = ('best_effort', 'reliable')
HEADING_SOURCES = ('course', 'odometry', 'imu')
#: a UTM zone as robot_localization's SetUTMZone service takes it: number + MGRS band
UTM_ZONE_PATTERN = re.compile(r'([1-9]|[1-5][0-9]|60)([C-HJ-NP-X])')


@dataclass(frozen=True)
class ParamSpec:
    """
    One row of the parameter table.

    ``min_value``/``max_value`` bound ints and doubles (inclusive), ``choices`` lists
    the allowed strings, ``array_length`` fixes a double array's length. ``read_only``
    means the value is read once at start (changing it needs a restart).
    """

    name: str
    type: str  # noqa: A003 (the column is called type in the table)
    default: Any
    description: str
    group: str
    min_value: Optional[float] = None
    max_value: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None
    array_length: Optional[int] = None
    read_only: bool = False


PARAMETERS: Tuple[ParamSpec, ...] = (
    # --- model and backend (read once at start) --------------------------------
    ParamSpec('model_path', STRING, '',
              'ONNX model (.onnx) or TensorRT engine (.engine); empty = the shipped '
              'engines/leaf_lite0_field.onnx. The model card is the .json beside the ONNX.',
              'model', read_only=True),
    ParamSpec('backend', STRING, 'auto',
              'auto: a TensorRT engine matching the card and this GPU, else ONNX Runtime; '
              'onnxruntime or tensorrt: that one or fail at start.',
              'model', choices=BACKENDS, read_only=True),
    ParamSpec('onnx_provider', STRING, 'auto',
              'ONNX Runtime execution provider: auto (CUDA when present, else CPU), cpu, '
              'cuda.', 'model', choices=ONNX_PROVIDERS, read_only=True),
    ParamSpec('onnx_intra_op_threads', INT, 0,
              'ONNX Runtime intra-op threads; 0 = one per physical core.',
              'model', min_value=0, max_value=256, read_only=True),
    ParamSpec('site_path', STRING, '',
              'Site file (site.json, or the folder leaf-disease-site wrote): the model '
              'adapted to this vineyard from one recorded healthy pass; it must be made for '
              'this model (its sha256). Empty = no site (docs/adaptation.md).',
              'model', read_only=True),
    ParamSpec('max_batch', INT, 16,
              'Largest batch of tiles sent to the backend in one call; a TensorRT '
              "engine's profile maximum caps it.",
              'model', min_value=1, max_value=1024, read_only=True),
    # --- tiling and vegetation gate (live) ---------------------------------------
    ParamSpec('tiling', STRING, 'grid',
              'grid: square tiles of tile_size_px every tile_stride_px; none: one centred '
              'square crop per frame (close-up leaf camera).',
              'tiling', choices=TILING_MODES),
    ParamSpec('tile_size_px', INT, 256,
              'Side of a square tile in frame pixels (clamped to the frame).',
              'tiling', min_value=16, max_value=8192),
    ParamSpec('tile_stride_px', INT, 256,
              'Step between tiles in frame pixels; at most tile_size_px (no gaps), and '
              'large enough that a 1920x1080 frame has at most 2048 tiles (memory).',
              'tiling', min_value=8, max_value=8192),
    ParamSpec('min_vegetation_fraction', DOUBLE, 0.10,
              'Tiles with a smaller share of vegetation pixels are skipped (soil, sky, '
              'posts); 0 classifies every tile (the leaf-area gate too is off).',
              'tiling', min_value=0.0, max_value=1.0),
    ParamSpec('min_leaf_area_fraction', DOUBLE, 0.30,
              'Tiles whose leaf area (vegetation closed and hole-filled, so necrotic spots '
              'inside a leaf count; sky, soil, posts and wires beside a leaf edge do not) '
              'is a smaller share are skipped as background, never classified; '
              '0 = vegetation gate only.',
              'tiling', min_value=0.0, max_value=1.0),
    ParamSpec('reduced_jpeg_decode', BOOL, True,
              'Decode JPEG frames at 1/2 or 1/4 size when every tile is shrunk at least that '
              "much to the model's input anyway (a stretch + area card; boxes on that grid): "
              "less decoding, gating and resizing, model outputs within what the camera's "
              'own JPEG quality changes (benchmarks/reduced_decode_parity.json). Boxes and '
              'positions stay in full-size pixels. false = always full size.',
              'tiling', read_only=True),
    ParamSpec('vegetation_exg_threshold', DOUBLE, 0.05,
              'A pixel is vegetation when its excess green 2g-r-b (chromatic '
              'coordinates) exceeds this.',
              'tiling', min_value=-1.0, max_value=2.0),
    # --- classification (live) ---------------------------------------------------
    ParamSpec('top_k', INT, 3,
              'Hypotheses published per tile (best first).',
              'classification', min_value=1, max_value=100),
    ParamSpec('unknown_threshold', DOUBLE, -1.0,
              "Calibrated score below which a tile is 'unknown'; negative = the model "
              "card's threshold.",
              'classification', min_value=-1.0, max_value=1.0),
    ParamSpec('disease_score_threshold', DOUBLE, -1.0,
              'Minimum calibrated score for a diseased tile to become a finding '
              "(geo_detections, maps); the score is the card's calibration.finding_score "
              "(the top label's probability, or that of all diseases together); negative "
              "= the model card's operating point (0.5 for cards without one).",
              'classification', min_value=-1.0, max_value=1.0),
    # --- GPS tagging (live) ------------------------------------------------------
    ParamSpec('max_fix_gap_s', DOUBLE, 1.0,
              'Interpolate between the two fixes bracketing the image stamp when they '
              'are at most this far apart.',
              'gps', min_value=0.0, max_value=60.0),
    ParamSpec('max_fix_age_s', DOUBLE, 0.5,
              'Otherwise use the nearest fix when it is at most this far from the image '
              'stamp; else the frame has no position.',
              'gps', min_value=0.0, max_value=60.0),
    ParamSpec('max_fix_speed_mps', DOUBLE, 10.0,
              'A fix implying a faster move from its neighbours (beyond 3 sigma of their '
              'covariances) is rejected as a glitch and counted; 0 = no check.',
              'gps', min_value=0.0, max_value=1000.0, read_only=True),
    ParamSpec('fix_buffer_size', INT, 512,
              'Fixes kept, newest first (512 = 100 s at 5 Hz).',
              'gps', min_value=2, max_value=1000000, read_only=True),
    ParamSpec('lever_arm_m', DOUBLE_ARRAY, [0.0, 0.0, 0.0],
              'Camera position relative to the GPS antenna, metres, robot frame '
              '(x forward, y left, z up); [0, 0, 0] = none.',
              'gps', array_length=3, min_value=-100.0, max_value=100.0),
    ParamSpec('min_speed_for_heading_mps', DOUBLE, 0.3,
              'Below this ground speed the course is unknown and the lever arm is '
              'skipped.',
              'gps', min_value=0.0, max_value=50.0),
    ParamSpec('heading_window_s', DOUBLE, 2.0,
              'Span of fixes around the image stamp used for the course over ground.',
              'gps', min_value=0.05, max_value=60.0),
    # --- camera geometry: where each finding is (docs/robot.md) -------------------
    ParamSpec('ground_positions', BOOL, True,
              "Place each finding at its leaf: the tile's ray met with the canopy plane (or "
              'the depth image); false = every finding at the camera position.',
              'camera', read_only=True),
    ParamSpec('camera_info_topic', STRING, '',
              'Node: sensor_msgs/CameraInfo topic; empty = camera_info beside the image topic '
              "(image_transport's pairing). Replay: --camera-info-topic.",
              'camera', read_only=True),
    ParamSpec('camera_rectified', BOOL, False,
              "The image is rectified (an image_rect topic): camera_info's P is used, no "
              'distortion.',
              'camera', read_only=True),
    ParamSpec('camera_hfov_deg', DOUBLE, 70.0,
              'Horizontal field of view used without camera_info, or when its K is all '
              'zeros (uncalibrated).',
              'camera', min_value=1.0, max_value=179.0, read_only=True),
    ParamSpec('mount_from_tf', BOOL, False,
              'Take the camera rotation and height from TF (mount_tf_base_frame -> the '
              "image's frame_id) instead of the mount_* parameters.",
              'camera', read_only=True),
    ParamSpec('mount_tf_base_frame', STRING, 'base_link',
              'TF frame of the robot (x forward, z up) for mount_from_tf; on the ground '
              '(base_footprint) for the height to be above the ground.',
              'camera', read_only=True),
    ParamSpec('mount_yaw_deg', DOUBLE, 90.0,
              "Optical axis direction from the robot's heading, counter-clockwise seen from "
              'above: +90 looks left, -90 right.',
              'camera', min_value=-180.0, max_value=180.0, read_only=True),
    ParamSpec('mount_pitch_deg', DOUBLE, 0.0,
              'Optical axis elevation: positive up, negative down.',
              'camera', min_value=-89.0, max_value=89.0, read_only=True),
    ParamSpec('mount_roll_deg', DOUBLE, 0.0,
              'Rotation of the image about the optical axis (0: image rows level).',
              'camera', min_value=-180.0, max_value=180.0, read_only=True),
    ParamSpec('mount_height_m', DOUBLE, 1.0,
              'Optical centre above the ground.',
              'camera', min_value=0.0, max_value=20.0, read_only=True),
    ParamSpec('canopy_distance_m', DOUBLE, 0.75,
              'Distance from the optical centre to the canopy, a vertical plane parallel to '
              'the direction of travel on the side the camera looks at.',
              'camera', min_value=0.05, max_value=50.0, read_only=True),
    ParamSpec('canopy_distance_sigma_m', DOUBLE, 0.10,
              'Uncertainty (1 sigma) of canopy_distance_m: the canopy is not a plane.',
              'camera', min_value=0.0, max_value=50.0, read_only=True),
    ParamSpec('heading_source', STRING, 'course',
              "The robot's heading: course (over ground, from the fixes), odometry "
              "(nav_msgs/Odometry on 'odom', yaw in an ENU frame) or imu (sensor_msgs/Imu on "
              "'imu', ENU yaw).",
              'camera', choices=HEADING_SOURCES, read_only=True),
    ParamSpec('heading_sigma_deg', DOUBLE, 2.0,
              'Heading uncertainty (1 sigma) of the course, and of a yaw without covariance.',
              'camera', min_value=0.0, max_value=180.0, read_only=True),
    ParamSpec('heading_hold_s', DOUBLE, 10.0,
              'Without a heading (robot stopped) the last good one is held this long, its '
              'uncertainty growing; then findings are at the camera position, flagged.',
              'camera', min_value=0.0, max_value=3600.0, read_only=True),
    ParamSpec('depth_enabled', BOOL, False,
              "Node: subscribe to 'depth', a depth image aligned to the colour image (same "
              'stamp; 16UC1 mm or 32FC1 m; zero = no depth): the distance per tile.',
              'camera', read_only=True),
    # --- map (replay) ------------------------------------------------------------
    ParamSpec('merge_radius_m', DOUBLE, 1.5,
              'Findings of one label closer than this are merged into one map feature '
              "(replay maps; the node's live map keeps the value it started with).",
              'map', min_value=0.0, max_value=1000.0),
    # --- evidence before a finding goes to navigation (node and replay) ----------
    ParamSpec('evidence_min_sightings', INT, 2,
              'A finding goes to ~/geo_detections only once its disease was seen on this '
              'many frames: of the last evidence_window_frames, or at one spot (within '
              'evidence_radius_m); 1 = every finding, no evidence needed.',
              'evidence', min_value=1, max_value=100, read_only=True),
    ParamSpec('evidence_window_frames', INT, 3,
              'Frames (processed, most recent) over which evidence_min_sightings are counted.',
              'evidence', min_value=1, max_value=1000, read_only=True),
    ParamSpec('evidence_radius_m', DOUBLE, 1.0,
              'Sightings of one disease closer than this count as one spot (the map merge '
              'rule); with ground positions also within position_gate_sigma; 0 = frames '
              'rule only.',
              'evidence', min_value=0.0, max_value=100.0, read_only=True),
    ParamSpec('position_gate_sigma', DOUBLE, 2.45,
              'Two ground positions are one spot (evidence, map merge) when their distance is '
              'within this many sigmas of their combined covariance (2.45: 95 % of one '
              "spot's pairs), capped by evidence_radius_m / merge_radius_m; 0 = radii only.",
              'evidence', min_value=0.0, max_value=10.0, read_only=True),
    ParamSpec('live_map_dir', STRING, '',
              'Node only: folder where the node keeps findings.geojson, the merged findings '
              'of the run (rewritten every live_map_period_s and at shutdown); empty = off.',
              'map', read_only=True),
    ParamSpec('live_map_period_s', DOUBLE, 10.0,
              'Node only: how often findings.geojson is rewritten when it changed.',
              'map', min_value=1.0, max_value=3600.0, read_only=True),
    # --- ROS interface (node) ----------------------------------------------------
    ParamSpec('image_transport', STRING, 'raw',
              "raw: subscribe to 'image' (sensor_msgs/Image); compressed: "
              "'image/compressed' (sensor_msgs/CompressedImage).",
              'ros', choices=IMAGE_TRANSPORTS, read_only=True),
    ParamSpec('image_qos_reliability', STRING, 'best_effort',
              'Image subscription reliability; best_effort (sensor data) also receives '
              'from reliable publishers.',
              'ros', choices=QOS_RELIABILITIES, read_only=True),
    ParamSpec('image_qos_depth', INT, 1,
              'Image subscription queue depth (keep-last).',
              'ros', min_value=1, max_value=1000, read_only=True),
    ParamSpec('no_image_warn_s', DOUBLE, 5.0,
              'Warn once when no image has arrived this long after start.',
              'ros', min_value=0.1, max_value=3600.0, read_only=True),
    ParamSpec('geo_frame_id', STRING, 'utm',
              'frame_id of ~/geo_detections (positions in UTM metres).',
              'ros', read_only=True),
    ParamSpec('utm_zone', STRING, '',
              'UTM zone of ~/geo_detections for the whole run, as robot_localization '
              "takes it: zone number and MGRS latitude band, e.g. '31U' (bands C-M are "
              "south of the equator, N-X north). '' = the zone of the first valid fix. "
              'Published on ~/utm_zone (latched) and in the diagnostics.',
              'ros', read_only=True),
    ParamSpec('debug_image_rate_hz', DOUBLE, 2.0,
              'Maximum rate of ~/debug_image (drawn only while subscribed); 0 = off.',
              'ros', min_value=0.0, max_value=120.0),
    ParamSpec('diagnostics_period_s', DOUBLE, 1.0,
              'Period of the /diagnostics status.',
              'ros', min_value=0.1, max_value=60.0, read_only=True),
    ParamSpec('latency_budget_ms', DOUBLE, 500.0,
              'Diagnostics WARN when latency p99 (image stamp to publish) exceeds this.',
              'ros', min_value=1.0, max_value=600000.0),
    ParamSpec('no_fix_warn_s', DOUBLE, 2.0,
              'Diagnostics WARN when the newest usable fix is older than this.',
              'ros', min_value=0.1, max_value=3600.0),
    ParamSpec('domain_window_tiles', INT, 300,
              'Diagnostics: classified tiles (whole recent frames) over which the shares of '
              'unknown, background and gated-out tiles are reported.',
              'ros', min_value=10, max_value=1000000, read_only=True),
    ParamSpec('domain_unknown_warn_fraction', DOUBLE, 0.2,
              'Diagnostics WARN (out of the model domain; fix: docs/adaptation.md) when at '
              'least this share of the tiles of the window fell to unknown.',
              'ros', min_value=0.01, max_value=1.0),
    ParamSpec('domain_far_warn_fraction', DOUBLE, 0.2,
              'Diagnostics WARN (out of the model domain) when at least this share of the '
              "tiles of the window is far from the domain reference (the card's "
              'embedding_distance threshold, or a site reference): a confidently wrong '
              'model is far without being unknown.',
              'ros', min_value=0.01, max_value=1.0),
    ParamSpec('domain_min_tiles', INT, 15,
              'The domain check judges once it has this many classified tiles (15: one '
              '1280x720 frame at the default tiling; the window keeps growing to '
              'domain_window_tiles); before, it is collecting and findings are held back '
              '(hold_findings_out_of_domain).',
              'ros', min_value=1, max_value=1000000, read_only=True),
    ParamSpec('hold_findings_out_of_domain', BOOL, True,
              'While the domain check is out of the domain (or still collecting), findings '
              'stay off ~/geo_detections and the maps (node live map; replay map, GeoJSON, '
              'KML, geo_detections) and are never released later; ~/detections still '
              'carries every tile.',
              'ros', read_only=True),
    ParamSpec('start_enabled', BOOL, True,
              'Process frames from start; ~/enable pauses and resumes.',
              'ros', read_only=True),
)

PARAMETERS_BY_NAME: Dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}

#: parameters ROS declares on every node (not typos: accepted, left to ROS)
ROS_OWN_PARAMETERS = frozenset(('use_sim_time', 'start_type_description_service'))
ROS_OWN_PREFIXES = ('qos_overrides.',)


def is_ros_own(name: str) -> bool:
    """Return whether ``name`` is a parameter ROS itself gives every node."""
    return name in ROS_OWN_PARAMETERS or name.startswith(ROS_OWN_PREFIXES)


def closest_parameter(name: str) -> Optional[str]:
    """Return the table's parameter name closest to ``name`` (a likely typo), or None."""
    close = difflib.get_close_matches(str(name), list(PARAMETERS_BY_NAME), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_parameter_error(name: str, where: str = '') -> ConfigError:
    """Return the error for a name that is not in the table (with the closest name)."""
    close = closest_parameter(name)
    return ConfigError(str(name), 'unknown parameter' + (f' in {where}' if where else '')
                       + (f' (did you mean {close}?)' if close else '')
                       + '; every parameter is listed in docs/parameters.md and '
                       'config/detector.yaml')


def strict_parameters(values: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """
    Return the table's parameters of ``values``; any other name is an error.

    :param values: name -> value (a params file section, ``--param``, node overrides).
    :param where: where the names come from, for the message (e.g. the file).

    :raises ConfigError: the first unknown name, with the closest known one; the
        parameters ROS declares itself (``use_sim_time``...) are dropped, not errors.
    """
    out: Dict[str, Any] = {}
    for name, value in values.items():
        if name in PARAMETERS_BY_NAME:
            out[name] = value
        elif not is_ros_own(str(name)):
            raise unknown_parameter_error(name, where)
    return out


def check_parameter_names(names: Iterable[str], where: str) -> None:
    """Raise ConfigError for the first name that is neither in the table nor ROS's own."""
    strict_parameters(dict.fromkeys(names), where)


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python; a YAML 'true' must not pass as 1.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_range(spec: ParamSpec, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(spec.name, f'{shown(value)} is not a finite number')
    if spec.min_value is not None and value < spec.min_value:
        raise ConfigError(spec.name, f'{shown(value)} is below the minimum {spec.min_value}')
    if spec.max_value is not None and value > spec.max_value:
        raise ConfigError(spec.name, f'{shown(value)} is above the maximum {spec.max_value}')


def validate_value(name: str, value: Any) -> Any:
    """
    Return ``value`` coerced to the parameter's type, or raise ConfigError.

    Ints are accepted for doubles (YAML writes ``1`` for ``1.0``); nothing else is
    coerced: a string for a number is an error, not a guess.
    """
    spec = PARAMETERS_BY_NAME.get(name)
    if spec is None:
        raise unknown_parameter_error(name)
    if spec.type == BOOL:
        if not isinstance(value, bool):
            raise ConfigError(name, f'expected true or false, got {shown(value)}')
        return value
    if spec.type == INT:
        if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(name, f'expected an integer, got {shown(value)}')
        value = int(value)
        _check_range(spec, value)
        return value
    if spec.type == DOUBLE:
        if not _is_number(value):
            raise ConfigError(name, f'expected a number, got {shown(value)}')
        value = float(value)
        _check_range(spec, value)
        return value
    if spec.type == STRING:
        if not isinstance(value, str):
            raise ConfigError(name, f'expected a string, got {shown(value)}')
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(name, f'{shown(value)} is not one of {", ".join(spec.choices)}')
        return value
    if spec.type == DOUBLE_ARRAY:
        if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
            raise ConfigError(name, f'expected a list of numbers, got {shown(value)}')
        if spec.array_length is not None and len(value) != spec.array_length:
            raise ConfigError(name, f'expected {spec.array_length} numbers, got {len(value)}')
        values = [float(v) for v in value]
        for v in values:
            _check_range(spec, v)
        return values
    raise ConfigError(name, f'parameter table has unknown type {spec.type!r}')


#: the frame the tile cap is stated for: Full HD, the usual robot camera (width, height)
TILE_CAP_FRAME_WH_PX = (1920, 1080)
#: the most tiles ``grid`` tiling may cut :data:`TILE_CAP_FRAME_WH_PX` into. A frame's kept
#: tiles are preprocessed as one float32 batch: at the shipped model's 224x224 input a tile
#: is 3 x 224 x 224 x 4 = 602,112 bytes, so 2048 tiles are 1.15 GiB for one frame, the most
#: an 8 GB Jetson can give a frame beside the engine; ``--tile-size 16 --tile-stride 8``
#: would cut 32,026 tiles (18 GiB).
MAX_TILES_PER_FRAME = 2048


def _tiles_along(length_px: int, size_px: int, stride_px: int) -> int:
    """Return how many tiles ``grid`` tiling puts along one side (see perception/tiling.py)."""
    size_px = min(size_px, length_px)
    count = (length_px - size_px) // stride_px + 1
    return count + (1 if (count - 1) * stride_px + size_px < length_px else 0)


def tiles_per_frame(tile_size_px: int, tile_stride_px: int,
                    frame_wh_px: Tuple[int, int] = TILE_CAP_FRAME_WH_PX) -> int:
    """Return the number of ``grid`` tiles of a ``frame_wh_px`` frame."""
    width, height = frame_wh_px
    return (_tiles_along(width, tile_size_px, tile_stride_px)
            * _tiles_along(height, tile_size_px, tile_stride_px))


def _cross_check(values: Mapping[str, Any]) -> None:
    if values['tile_stride_px'] > values['tile_size_px']:
        raise ConfigError(
            'tile_stride_px',
            f"{values['tile_stride_px']} is larger than tile_size_px "
            f"{values['tile_size_px']}: the frame would have unclassified gaps")
    if values['tiling'] != 'grid':
        return
    tiles = tiles_per_frame(values['tile_size_px'], values['tile_stride_px'])
    if tiles > MAX_TILES_PER_FRAME:
        width, height = TILE_CAP_FRAME_WH_PX
        raise ConfigError(
            'tile_stride_px',
            f"tile_size_px {values['tile_size_px']} and tile_stride_px "
            f"{values['tile_stride_px']} cut a {width}x{height} frame into {tiles:,} tiles, "
            f'more than {MAX_TILES_PER_FRAME:,} (each tile is a model input: about '
            f'{tiles * 602112 / 2 ** 30:.1f} GiB a frame at 224x224). Give a larger '
            'tile_stride_px (and tile_size_px), or tiling none for a close-up camera')


def _cross_check_domain(values: Mapping[str, Any]) -> None:
    if values['domain_min_tiles'] > values['domain_window_tiles']:
        raise ConfigError(
            'domain_min_tiles',
            f"{values['domain_min_tiles']} is larger than domain_window_tiles "
            f"{values['domain_window_tiles']}: the domain check could never judge")


def _cross_check_evidence(values: Mapping[str, Any]) -> None:
    if values['evidence_min_sightings'] > values['evidence_window_frames']:
        raise ConfigError(
            'evidence_min_sightings',
            f"{values['evidence_min_sightings']} is larger than evidence_window_frames "
            f"{values['evidence_window_frames']}: the frames rule could never confirm")


def _check_utm_zone(values: Mapping[str, Any]) -> None:
    zone = values['utm_zone']
    if zone and UTM_ZONE_PATTERN.fullmatch(zone) is None:
        raise ConfigError(
            'utm_zone',
            f'{shown(zone)} is not a UTM zone: write the zone number (1-60) and the MGRS '
            "latitude band in capitals, e.g. '31U' as robot_localization's setUTMZone takes "
            "it (bands C-M are south of the equator, N-X north: '33S' is band S, 32-40 "
            "degrees north), or '' for the zone of the first valid fix")


def defaults() -> Dict[str, Any]:
    """Return every parameter at its default (a fresh, mutable dict)."""
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default)
            for p in PARAMETERS}


def validate_parameters(values: Mapping[str, Any], *,
                        ignore_unknown: bool = False) -> Dict[str, Any]:
    """
    Validate a set of parameter values; missing ones take their default.

    :param values: name -> value, e.g. from a params file or the command line.
    :param ignore_unknown: skip names not in the table (a params file may carry
        parameters of other nodes, or ``use_sim_time``) instead of failing.

    :returns: Every parameter of the table with a validated value.
    """
    result = defaults()
    for name, value in values.items():
        if name not in PARAMETERS_BY_NAME:
            if ignore_unknown:
                continue
            raise unknown_parameter_error(name)
        result[name] = validate_value(name, value)
    _cross_check(result)
    _cross_check_evidence(result)
    _cross_check_domain(result)
    _check_utm_zone(result)
    return result


#: a params file is a few kB; reading stops beyond this
MAX_PARAMS_FILE_BYTES = 1024 * 1024
#: values (scalars, lists, mappings) a params file may expand to, aliases counted
MAX_PARAMS_VALUES = 100_000
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 8
_SHOWN.maxlevel = 3


def shown(value: Any) -> str:
    """Return ``repr(value)`` bounded for a message (long strings, big or deep values cut)."""
    return _SHOWN.repr(value)


def load_params_file(path: str, node_name: str = 'detector_node') -> Dict[str, Any]:
    """
    Read the parameters of ``node_name`` from a ROS 2 params YAML file, strictly.

    The sections that apply to the node (see :func:`read_params_file`) may only hold
    parameters of the table (and ROS's own, which are dropped): anything else is an
    error naming the key and the closest known name. Values are checked later by
    :func:`validate_parameters`.

    :raises ConfigError: unreadable file, invalid YAML, or an unknown key.
    """
    return strict_parameters(read_params_file(path, node_name),
                             f'params file {path} (the {node_name} or /** sections)')


def read_params_file(path: str, node_name: str = 'detector_node') -> Dict[str, Any]:
    """
    Read the parameters of ``node_name`` from a ROS 2 params YAML file, as written.

    Accepts the ROS 2 layout (``<node or /**>: ros__parameters: {...}``), also under a
    namespace, and a flat mapping of parameter names. Nested dictionaries are
    flattened with dots as ROS does. Sections of other nodes are ignored. Only the
    syntax is checked here: :func:`load_params_file` checks the names.
    """
    import yaml  # local: pyyaml is only needed when a file is read

    try:
        with open(path, 'rb') as stream:
            data = stream.read(MAX_PARAMS_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError('params_file', f'cannot read {path}: {exc.strerror}') from exc
    if len(data) > MAX_PARAMS_FILE_BYTES:
        raise ConfigError('params_file', f'{path} is larger than '
                          f'{MAX_PARAMS_FILE_BYTES // 1024} KiB: not a params file')
    try:
        loader = yaml.SafeLoader(data.decode('utf-8'))
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expansion(node, path)
            document = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError('params_file', f'{path} is not valid YAML: {exc}') from exc
    except RecursionError as exc:
        raise ConfigError('params_file', f'{path} nests too deep') from exc
    if not isinstance(document, dict):
        raise ConfigError('params_file', f'{path} does not hold a mapping of parameters')

    try:
        if not _has_ros_parameters(document):
            # A flat mapping of parameter names (the replay's own shorthand).
            return _flatten(document)
        wildcard: Dict[str, Any] = {}
        exact: Dict[str, Any] = {}
        _collect(document, (), node_name, wildcard, exact, path)
    except RecursionError as exc:  # YAML aliases can make a mapping contain itself
        raise ConfigError('params_file', f'{path} nests too deep (or refers to itself)'
                          ) from exc
    # A section naming the node overrides wildcard sections, as in rcl.
    wildcard.update(exact)
    return wildcard


def _check_expansion(root: Any, path: str) -> None:
    """
    Refuse a composed YAML document that expands to more than MAX_PARAMS_VALUES values.

    Anchors and aliases share one node, so a few lines can stand for billions of values
    ("billion laughs"): every later step (flattening, checking, an error message that
    shows the value) would expand them. Counted once per node, aliases multiplied.
    """
    import yaml

    sizes: Dict[int, int] = {}
    open_nodes: set = set()

    def size(node: Any) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in open_nodes:
            raise ConfigError('params_file', f'{path} refers to itself (a YAML alias inside '
                              'its own anchor)')
        total = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            open_nodes.add(id(node))
            children = (node.value if isinstance(node, yaml.SequenceNode)
                        else [part for pair in node.value for part in pair])
            for child in children:
                total += size(child)
                if total > MAX_PARAMS_VALUES:
                    raise ConfigError('params_file', f'{path} expands to more than '
                                      f'{MAX_PARAMS_VALUES} values (YAML anchors and '
                                      'aliases): not a params file')
            open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _has_ros_parameters(section: Mapping[str, Any]) -> bool:
    return any(key == 'ros__parameters' or (isinstance(value, dict)
                                            and _has_ros_parameters(value))
               for key, value in section.items())


def _collect(section: Mapping[Any, Any], path: Tuple[str, ...], node_name: str,
             wildcard: Dict[str, Any], exact: Dict[str, Any], file_path: str) -> None:
    for key, value in section.items():
        if key == 'ros__parameters':
            node = path[-1].strip('/').split('/')[-1] if path else ''
            ours = node == node_name or any('*' in part for part in path)
            if ours and not isinstance(value, dict):
                raise ConfigError('params_file', f'{file_path}: ros__parameters of '
                                  f'{"/".join(path) or "the file"} is not a mapping of '
                                  'parameters')
            if node == node_name:
                exact.update(_flatten(value))
            elif ours:
                wildcard.update(_flatten(value))
        elif isinstance(value, dict):
            _collect(value, path + (str(key),), node_name, wildcard, exact, file_path)


def _flatten(section: Mapping[Any, Any], prefix: str = '') -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in section.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class DetectorConfig:
    """The part of the parameter set the perception pipeline reads per frame."""

    tiling: str = 'grid'
    tile_size_px: int = 256
    tile_stride_px: int = 256
    min_vegetation_fraction: float = 0.10
    min_leaf_area_fraction: float = 0.30
    vegetation_exg_threshold: float = 0.05
    top_k: int = 3
    unknown_threshold: float = -1.0
    disease_score_threshold: float = -1.0
    max_fix_gap_s: float = 1.0
    max_fix_age_s: float = 0.5
    lever_arm_m: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    min_speed_for_heading_mps: float = 0.3
    heading_window_s: float = 2.0
    max_batch: int = 16

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> 'DetectorConfig':
        """Build from a validated parameter set (extra names are ignored)."""
        fields = cls.__dataclass_fields__
        kwargs = {name: values[name] for name in fields if name in values}
        if 'lever_arm_m' in kwargs:
            kwargs['lever_arm_m'] = tuple(float(v) for v in kwargs['lever_arm_m'])
        return cls(**kwargs)
