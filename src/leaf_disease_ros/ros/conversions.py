"""
Messages <-> core types: fixes, detections, geo detections, labels, diagnostics.

Every builder takes a :class:`MessageTypes` holding the message classes to build
with, so one implementation serves the rclpy node (``ros_message_types()`` in ``node.py``)
and the rosbags replay and tests (``MessageTypes.from_typestore(store)``). Messages
are built with keyword arguments for every field (rosbags classes have no
defaults) and numeric arrays as float64 numpy arrays (accepted by both). Nothing
here imports ROS at module import, so it is importable and tested without ROS.

Conventions of the published messages:

- every output copies the input image header (stamp and frame id);
  ``~/geo_detections`` keeps the stamp and uses the geo frame id;
- a tile box is the half-open pixel rectangle ``[x0, x1) x [y0, y1)``: centre
  ``((x0 + x1) / 2, (y0 + y1) / 2)``, size ``(x1 - x0, y1 - y0)`` in pixels;
- ``results`` are the top-k hypotheses, best first, ``class_id`` = label string;
  a rejected tile gets ``unknown`` with the best score first, then its top-k;
- ``id`` is ``<sec>.<nanosec>:<tile index>``, the same in the 2D and 3D arrays so a
  geo finding can be joined with its tile;
- geo detections are in UTM metres of the run's one zone (``geo/utm_zone.py``: the
  ``utm_zone`` parameter or the first valid fix's, as robot_localization's
  navsat_transform does; the frame id stays ``geo_frame_id`` for TF), with the
  fix's ENU position covariance; a position the zone cannot carry (beyond 84 N or
  80 S, or about a zone away) is left out of the array (the
  frame's ``~/detections/fix`` still carries the latitude and longitude, and the
  replay and the diagnostics count it); orientation is unknown (variance
  :data:`UNKNOWN_ROTATION_VARIANCE_RAD2`), and a fix without covariance gets
  :data:`UNKNOWN_POSITION_VARIANCE_M2` so a consumer never reads it as exact.
"""

from dataclasses import dataclass, fields
import math
from typing import AbstractSet, Any, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.geo.utm_zone import RunZone
from leaf_disease_ros.perception.model_card import ModelCard, UNKNOWN_LABEL
from leaf_disease_ros.perception.pipeline import Detection, FrameResult
from leaf_disease_ros.perception.positions import COVARIANCE_TYPE_UNKNOWN, Fix, STATUS_NO_FIX
from leaf_disease_ros.ros.diagnostics import DiagnosticReport

UNKNOWN_POSITION_VARIANCE_M2 = 100.0
#: sensor_msgs/NavSatFix COVARIANCE_TYPE_KNOWN (a ground position's full covariance)
COVARIANCE_TYPE_KNOWN = 3
UNKNOWN_ROTATION_VARIANCE_RAD2 = 1.0e6
# vision_msgs/LabelInfo reserves the largest uint16 id for "unlabeled"; rejected
# tiles are published with this id in the class map.
UNKNOWN_CLASS_ID = 65535


@dataclass(frozen=True)
class MessageTypes:
    """The message classes conversions build with (rclpy or rosbags)."""

    Time: Any
    Header: Any
    NavSatFix: Any
    NavSatStatus: Any
    Point: Any
    Quaternion: Any
    Pose: Any
    PoseWithCovariance: Any
    Vector3: Any
    Point2D: Any
    VisionPose2D: Any
    BoundingBox2D: Any
    BoundingBox3D: Any
    ObjectHypothesis: Any
    ObjectHypothesisWithPose: Any
    Detection2D: Any
    Detection2DArray: Any
    Detection3D: Any
    Detection3DArray: Any
    VisionClass: Any
    LabelInfo: Any
    KeyValue: Any
    DiagnosticStatus: Any
    DiagnosticArray: Any

    @classmethod
    def from_typestore(cls, typestore: Any) -> 'MessageTypes':
        """Return the classes of a rosbags type store (see ``replay/typestore.py``)."""
        names = {
            'Time': 'builtin_interfaces/msg/Time', 'Header': 'std_msgs/msg/Header',
            'NavSatFix': 'sensor_msgs/msg/NavSatFix',
            'NavSatStatus': 'sensor_msgs/msg/NavSatStatus',
            'Point': 'geometry_msgs/msg/Point', 'Quaternion': 'geometry_msgs/msg/Quaternion',
            'Pose': 'geometry_msgs/msg/Pose',
            'PoseWithCovariance': 'geometry_msgs/msg/PoseWithCovariance',
            'Vector3': 'geometry_msgs/msg/Vector3', 'Point2D': 'vision_msgs/msg/Point2D',
            'VisionPose2D': 'vision_msgs/msg/Pose2D',
            'BoundingBox2D': 'vision_msgs/msg/BoundingBox2D',
            'BoundingBox3D': 'vision_msgs/msg/BoundingBox3D',
            'ObjectHypothesis': 'vision_msgs/msg/ObjectHypothesis',
            'ObjectHypothesisWithPose': 'vision_msgs/msg/ObjectHypothesisWithPose',
            'Detection2D': 'vision_msgs/msg/Detection2D',
            'Detection2DArray': 'vision_msgs/msg/Detection2DArray',
            'Detection3D': 'vision_msgs/msg/Detection3D',
            'Detection3DArray': 'vision_msgs/msg/Detection3DArray',
            'VisionClass': 'vision_msgs/msg/VisionClass',
            'LabelInfo': 'vision_msgs/msg/LabelInfo',
            'KeyValue': 'diagnostic_msgs/msg/KeyValue',
            'DiagnosticStatus': 'diagnostic_msgs/msg/DiagnosticStatus',
            'DiagnosticArray': 'diagnostic_msgs/msg/DiagnosticArray',
        }
        missing = [t for t in names.values() if t not in typestore.types]
        if missing:
            raise KeyError('type store lacks ' + ', '.join(missing)
                           + '; build it with leaf_disease_ros.replay.typestore.make_typestore')
        return cls(**{field.name: typestore.types[names[field.name]] for field in fields(cls)})


# --- time -----------------------------------------------------------------------


def stamp_to_ns(stamp: Any) -> int:
    """
    Return a ``builtin_interfaces/Time`` as integer nanoseconds; 0 when it is invalid.

    ``nanosec`` is valid in [0, 1e9) (builtin_interfaces/msg/Time.msg); a stamp
    outside that is no time at all, so it is treated like an unstamped header (0):
    no position, never joined with ground truth.
    """
    nanosec = int(stamp.nanosec)
    if not 0 <= nanosec < 1_000_000_000:
        return 0
    return int(stamp.sec) * 1_000_000_000 + nanosec


def ns_to_time(stamp_ns: int, types: MessageTypes) -> Any:
    """Return integer nanoseconds as a ``builtin_interfaces/Time`` (floor for negatives)."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return types.Time(sec=sec, nanosec=nanosec)


def make_header(stamp_ns: int, frame_id: str, types: MessageTypes) -> Any:
    """Return a ``std_msgs/Header`` (for replay and tests; the node copies headers)."""
    return types.Header(stamp=ns_to_time(stamp_ns, types), frame_id=frame_id)


def _with_frame(header: Any, frame_id: str, types: MessageTypes) -> Any:
    return types.Header(stamp=types.Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec),
                        frame_id=frame_id)


def _detection_id(header: Any, index: int) -> str:
    return f'{int(header.stamp.sec)}.{int(header.stamp.nanosec):09d}:{index}'


# --- GPS ------------------------------------------------------------------------


def navsatfix_to_fix(msg: Any) -> Fix:
    """Return the core :class:`~leaf_disease_ros.perception.positions.Fix` of a ``NavSatFix``."""
    return Fix(stamp_ns=stamp_to_ns(msg.header.stamp),
               latitude_deg=float(msg.latitude), longitude_deg=float(msg.longitude),
               altitude_m=float(msg.altitude), status=int(msg.status.status),
               service=int(msg.status.service),
               covariance_m2=tuple(float(v) for v in msg.position_covariance),
               covariance_type=int(msg.position_covariance_type))


def to_geotag_fix(result: FrameResult, header: Any, types: MessageTypes) -> Any:
    """
    Return the frame's position at its stamp as a ``NavSatFix`` with the image header.

    Without a position the status is NO_FIX and the coordinates are NaN.
    """
    tag = result.geotag.geotag
    if tag is None:
        return types.NavSatFix(
            header=header, status=types.NavSatStatus(status=STATUS_NO_FIX, service=0),
            latitude=math.nan, longitude=math.nan, altitude=math.nan,
            position_covariance=np.zeros(9, dtype=np.float64),
            position_covariance_type=COVARIANCE_TYPE_UNKNOWN)
    return types.NavSatFix(
        header=header, status=types.NavSatStatus(status=tag.status, service=tag.service),
        latitude=tag.latitude_deg, longitude=tag.longitude_deg, altitude=tag.altitude_m,
        position_covariance=np.asarray(tag.covariance_m2, dtype=np.float64),
        position_covariance_type=tag.covariance_type)


# --- detections -----------------------------------------------------------------


def _identity_pose(types: MessageTypes, x: float = 0.0, y: float = 0.0,
                   z: float = 0.0) -> Any:
    return types.Pose(position=types.Point(x=x, y=y, z=z),
                      orientation=types.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))


def _hypotheses(detection: Detection, pose: Any, types: MessageTypes) -> List[Any]:
    ranked: List[Tuple[str, float]] = list(detection.top_k)
    if detection.is_unknown:
        ranked.insert(0, (UNKNOWN_LABEL, detection.score))
    return [types.ObjectHypothesisWithPose(
        hypothesis=types.ObjectHypothesis(class_id=label, score=float(score)), pose=pose)
        for label, score in ranked]


def to_detection2d_array(result: FrameResult, header: Any, types: MessageTypes) -> Any:
    """Return one ``Detection2D`` per classified tile, with the image header."""
    pose = types.PoseWithCovariance(pose=_identity_pose(types),
                                    covariance=np.zeros(36, dtype=np.float64))
    detections = []
    for index, detection in enumerate(result.detections):
        x0, y0, x1, y1 = detection.box_xyxy_px
        bbox = types.BoundingBox2D(
            center=types.VisionPose2D(position=types.Point2D(x=(x0 + x1) / 2.0,
                                                             y=(y0 + y1) / 2.0),
                                      theta=0.0),
            size_x=float(x1 - x0), size_y=float(y1 - y0))
        detections.append(types.Detection2D(header=header,
                                            results=_hypotheses(detection, pose, types),
                                            bbox=bbox, id=_detection_id(header, index)))
    return types.Detection2DArray(header=header, detections=detections)


def position_covariance_6x6(covariance_m2: Sequence[float], covariance_type: int) -> np.ndarray:
    """
    Return the 36-element pose covariance of a geotag's 3x3 ENU position covariance.

    Rotation is unknown: :data:`UNKNOWN_ROTATION_VARIANCE_RAD2` on its diagonal. A fix
    with unknown covariance gets :data:`UNKNOWN_POSITION_VARIANCE_M2` per axis.
    """
    out = np.zeros((6, 6), dtype=np.float64)
    position = np.asarray(covariance_m2, dtype=np.float64).reshape(3, 3)
    if covariance_type == COVARIANCE_TYPE_UNKNOWN or not np.any(position):
        position = np.eye(3) * UNKNOWN_POSITION_VARIANCE_M2
    out[:3, :3] = position
    out[3:, 3:] = np.eye(3) * UNKNOWN_ROTATION_VARIANCE_RAD2
    return out.reshape(36)


def to_detection3d_array(result: FrameResult, header: Any, frame_id: str,
                         types: MessageTypes,
                         confirmed: Optional[AbstractSet[int]] = None, *,
                         zone: Optional[RunZone] = None) -> Any:
    """
    Return the frame's disease findings in UTM metres as a ``Detection3DArray``.

    One ``Detection3D`` per finding, at the finding's own position
    (``FrameResult.position_of``: its leaf from the camera geometry, else the camera)
    with that position's covariance, in the run's one UTM zone. The header keeps the
    image stamp with ``frame_id`` (the geo frame). Without a position, with a position
    the run's zone cannot carry (polar caps, too far from the zone), or without
    findings, the array is empty.

    :param confirmed: indices (in ``result.detections``) of the findings that passed
        the evidence rule (``geo/evidence.py``); only those are included. None
        includes every finding.
    :param zone: the run's UTM zone (the node's and the replay's); None projects into
        the zone of this frame's own position (a run of one frame).
    """
    out_header = _with_frame(header, frame_id, types)
    detections = []
    run_zone = RunZone() if zone is None else zone
    for index, detection in enumerate(result.detections):
        if not detection.is_finding or (confirmed is not None and index not in confirmed):
            continue
        position = result.position_of(index)
        utm = (None if position is None
               else run_zone.project(position.latitude_deg, position.longitude_deg))
        if position is None or utm is None:
            continue
        altitude = 0.0 if math.isnan(position.altitude_m) else position.altitude_m
        known = any(position.covariance_m2)
        pose = types.PoseWithCovariance(
            pose=_identity_pose(types, utm.easting_m, utm.northing_m, altitude),
            covariance=position_covariance_6x6(
                position.covariance_m2,
                COVARIANCE_TYPE_KNOWN if known else COVARIANCE_TYPE_UNKNOWN))
        bbox = types.BoundingBox3D(center=pose.pose, size=types.Vector3(x=0.0, y=0.0, z=0.0))
        detections.append(types.Detection3D(header=out_header,
                                            results=_hypotheses(detection, pose, types),
                                            bbox=bbox, id=_detection_id(header, index)))
    return types.Detection3DArray(header=out_header, detections=detections)


def to_label_info(card: ModelCard, header: Any, types: MessageTypes, threshold: float) -> Any:
    """Return the card's labels as ``LabelInfo`` (class id = label index; unknown = 65535)."""
    class_map = [types.VisionClass(class_id=index, class_name=label)
                 for index, label in enumerate(card.labels)]
    class_map.append(types.VisionClass(class_id=UNKNOWN_CLASS_ID, class_name=UNKNOWN_LABEL))
    return types.LabelInfo(header=header, class_map=class_map, threshold=float(threshold))


# --- diagnostics ----------------------------------------------------------------


def _level(level: int, types: MessageTypes) -> Any:
    # diagnostic_msgs declares 'byte level': rclpy wants bytes of length 1, rosbags an int.
    if isinstance(getattr(types.DiagnosticStatus, 'OK', 0), bytes):
        return bytes([level])
    return level


def to_diagnostic_array(reports: Sequence[DiagnosticReport], header: Any,
                        types: MessageTypes) -> Any:
    """Return a ``DiagnosticArray`` of core diagnostic reports."""
    status = [types.DiagnosticStatus(
        level=_level(report.level, types), name=report.name, message=report.message,
        hardware_id=report.hardware_id,
        values=[types.KeyValue(key=key, value=value) for key, value in report.values])
        for report in reports]
    return types.DiagnosticArray(header=header, status=status)


# --- ground truth ---------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruthBox:
    """One labelled box of a ground-truth ``Detection2DArray`` (pixels, x1/y1 exclusive)."""

    box_xyxy_px: Tuple[float, float, float, float]
    label: str


def ground_truth_from_detection2d_array(msg: Any) -> List[GroundTruthBox]:
    """
    Read ground truth: one box per ``Detection2D``, label = first hypothesis's class_id.

    Detections without a hypothesis are skipped (they carry no label).
    """
    boxes = []
    for detection in msg.detections:
        if not detection.results:
            continue
        cx = float(detection.bbox.center.position.x)
        cy = float(detection.bbox.center.position.y)
        half_w = float(detection.bbox.size_x) / 2.0
        half_h = float(detection.bbox.size_y) / 2.0
        boxes.append(GroundTruthBox((cx - half_w, cy - half_h, cx + half_w, cy + half_h),
                                    str(detection.results[0].hypothesis.class_id)))
    return boxes
