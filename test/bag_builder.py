"""
Small rosbag2 recordings for the replay tests, written with rosbags (sqlite3 or MCAP).

Frames are given as BGR arrays and written as raw ``sensor_msgs/Image`` (any
encoding: the array is converted with OpenCV) or ``CompressedImage`` (PNG is
lossless, so a test knows the exact pixels the replay will see; JPEG too). Fixes
and ground truth are built through ``ros/conversions.py`` message classes.
"""

from dataclasses import dataclass, field
import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from leaf_disease_ros.perception.positions import STATUS_GBAS_FIX
from leaf_disease_ros.replay.typestore import make_typestore
from leaf_disease_ros.ros.conversions import make_header, MessageTypes

NS = 1_000_000_000
IMAGE_TOPIC = '/camera/image_raw/compressed'
RAW_TOPIC = '/camera/image_raw'
FIX_TOPIC = '/gps/fix'
TRUTH_TOPIC = '/ground_truth'


@dataclass
class Frame:
    """One image: its stamp and log time (ns), pixels, and how it is stored."""

    stamp_ns: int
    image_bgr: Optional[np.ndarray] = None
    kind: str = 'png'  # png, jpeg, raw
    encoding: str = 'bgr8'  # raw only
    log_time_ns: Optional[int] = None
    data: Optional[bytes] = None  # overrides the encoded bytes (corrupt frames)
    raw_shape: Optional[Tuple[int, int, int]] = None  # (height, width, step) override
    cdr: Optional[bytes] = None  # overrides the whole serialised message (undecodable)
    nanosec: Optional[int] = None  # overrides the header's nanosec (invalid stamps)


@dataclass
class GpsFix:
    """One NavSatFix: stamp, log time, position and status."""

    stamp_ns: int
    latitude_deg: float
    longitude_deg: float
    status: int = STATUS_GBAS_FIX
    log_time_ns: Optional[int] = None
    altitude_m: Optional[float] = None  # default: 30 m, NaN with NaN coordinates
    covariance_m2: Optional[Sequence[float]] = None  # default: 2 cm / 4 cm sigma, type 2
    cdr: Optional[bytes] = None  # overrides the whole serialised message (undecodable)


@dataclass
class Truth:
    """One ground-truth message: stamp and boxes ``((x0, y0, x1, y1), label)``."""

    stamp_ns: int
    boxes: Sequence[Tuple[Tuple[float, float, float, float], str]] = field(default_factory=list)
    log_time_ns: Optional[int] = None


def _raw_image(frame: Frame, T) -> object:
    image = frame.image_bgr
    conversions = {'bgr8': None, 'rgb8': cv2.COLOR_BGR2RGB, 'mono8': cv2.COLOR_BGR2GRAY,
                   'bgra8': cv2.COLOR_BGR2BGRA, 'rgba8': cv2.COLOR_BGR2RGBA}
    if frame.encoding in conversions:
        code = conversions[frame.encoding]
        pixels = image if code is None else cv2.cvtColor(image, code)
    elif frame.encoding == 'mono16':
        pixels = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
    else:
        pixels = image
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    step = pixels.strides[0]
    if frame.raw_shape is not None:
        height, width, step = frame.raw_shape
    data = frame.data if frame.data is not None else pixels.tobytes()
    return T['sensor_msgs/msg/Image'](
        header=None, height=height, width=width, encoding=frame.encoding, is_bigendian=0,
        step=step, data=np.frombuffer(data, dtype=np.uint8))


def write_bag(path: str, storage: str = 'mcap', frames: Sequence[Frame] = (),
              fixes: Sequence[GpsFix] = (), truth: Sequence[Truth] = (),
              image_topic: Optional[str] = None, raw: bool = False,
              frame_id: str = 'camera',
              extra: Sequence[Tuple[str, str, int, object]] = (),
              fix_topic: str = FIX_TOPIC) -> str:
    """
    Write a bag folder at ``path`` and return ``path``.

    ``extra`` adds messages ``(topic, type, log time ns, message)`` (built with
    :func:`message_types`), each topic-and-type pair one connection: a second GPS
    topic, or a topic recorded with two types.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = make_typestore()
    types = MessageTypes.from_typestore(store)
    T = store.types
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    image_type = 'sensor_msgs/msg/Image' if raw else 'sensor_msgs/msg/CompressedImage'
    topic = image_topic or (RAW_TOPIC if raw else IMAGE_TOPIC)
    events: List[Tuple[int, int, str, bytes]] = []
    for frame in frames:
        header = make_header(frame.stamp_ns, frame_id, types)
        if frame.nanosec is not None:
            header.stamp.nanosec = frame.nanosec
        if raw:
            msg = _raw_image(frame, T)
            msg.header = header
        else:
            if frame.data is not None:
                data = frame.data
            else:
                ext = '.png' if frame.kind == 'png' else '.jpg'
                ok, buffer = cv2.imencode(ext, frame.image_bgr)
                data = buffer.tobytes()
            msg = T['sensor_msgs/msg/CompressedImage'](
                header=header, format=frame.kind, data=np.frombuffer(data, dtype=np.uint8))
        log = frame.log_time_ns if frame.log_time_ns is not None else frame.stamp_ns
        data = frame.cdr if frame.cdr is not None else store.serialize_cdr(msg, image_type)
        events.append((log, 0, 'image', data))
    for fix in fixes:
        nan = math.isnan(fix.latitude_deg)
        cov = np.zeros(9, dtype=np.float64)
        cov[[0, 4, 8]] = [0.0004, 0.0004, 0.0016]
        if fix.covariance_m2 is not None:
            cov = np.asarray(fix.covariance_m2, dtype=np.float64)
        altitude = fix.altitude_m if fix.altitude_m is not None else (math.nan if nan else 30.0)
        msg = types.NavSatFix(
            header=make_header(fix.stamp_ns, 'gps', types),
            status=types.NavSatStatus(status=fix.status, service=1),
            latitude=fix.latitude_deg, longitude=fix.longitude_deg,
            altitude=altitude, position_covariance=cov,
            position_covariance_type=2)
        log = fix.log_time_ns if fix.log_time_ns is not None else fix.stamp_ns
        data = (fix.cdr if fix.cdr is not None
                else store.serialize_cdr(msg, 'sensor_msgs/msg/NavSatFix'))
        events.append((log, 1, 'fix', data))
    for item in truth:
        header = make_header(item.stamp_ns, frame_id, types)
        detections = []
        for (x0, y0, x1, y1), label in item.boxes:
            pose = types.PoseWithCovariance(
                pose=types.Pose(position=types.Point(x=0.0, y=0.0, z=0.0),
                                orientation=types.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
                covariance=np.zeros(36, dtype=np.float64))
            detections.append(types.Detection2D(
                header=header,
                results=[types.ObjectHypothesisWithPose(
                    hypothesis=types.ObjectHypothesis(class_id=label, score=1.0), pose=pose)],
                bbox=types.BoundingBox2D(
                    center=types.VisionPose2D(
                        position=types.Point2D(x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0),
                        theta=0.0),
                    size_x=float(x1 - x0), size_y=float(y1 - y0)),
                id=''))
        msg = types.Detection2DArray(header=header, detections=detections)
        log = item.log_time_ns if item.log_time_ns is not None else item.stamp_ns + 1000
        events.append((log, 2, 'truth',
                       store.serialize_cdr(msg, 'vision_msgs/msg/Detection2DArray')))
    events.sort(key=lambda e: (e[0], e[1]))
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        connections = {}
        if frames:
            connections['image'] = writer.add_connection(topic, image_type, typestore=store)
        if fixes:
            connections['fix'] = writer.add_connection(fix_topic, 'sensor_msgs/msg/NavSatFix',
                                                       typestore=store)
        if truth:
            connections['truth'] = writer.add_connection(
                TRUTH_TOPIC, 'vision_msgs/msg/Detection2DArray', typestore=store)
        for topic_name, msgtype, log, msg in extra:
            key = f'{topic_name} {msgtype}'
            if key not in connections:
                connections[key] = writer.add_connection(topic_name, msgtype, typestore=store)
            events.append((log, 3, key, store.serialize_cdr(msg, msgtype)))
        events.sort(key=lambda e: (e[0], e[1]))
        for log, _, kind, data in events:
            writer.write(connections[kind], log, data)
    return path


def message_types():
    """Return ``(typestore, MessageTypes)`` to build messages for ``write_bag(extra=...)``."""
    store = make_typestore()
    return store, MessageTypes.from_typestore(store)


def fix_message(types, stamp_ns: int, latitude_deg: float, longitude_deg: float) -> object:
    """Return a NavSatFix (GBAS fix, 2 cm sigma) for ``write_bag(extra=...)``."""
    cov = np.zeros(9, dtype=np.float64)
    cov[[0, 4, 8]] = [0.0004, 0.0004, 0.0016]
    return types.NavSatFix(
        header=make_header(stamp_ns, 'gps', types),
        status=types.NavSatStatus(status=STATUS_GBAS_FIX, service=1),
        latitude=latitude_deg, longitude=longitude_deg, altitude=30.0,
        position_covariance=cov, position_covariance_type=2)


def mosaic(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Return the images (equal size) tiled ``columns`` wide, row by row."""
    rows = [np.hstack(images[i:i + columns]) for i in range(0, len(images), columns)]
    return np.vstack(rows)
