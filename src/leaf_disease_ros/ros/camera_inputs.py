"""
Camera-geometry inputs from ROS messages, for the node and the replay (ROS-free).

- :func:`camera_info_topic`: the ``camera_info`` topic paired with an image topic, by
  image_transport's rule (``getCameraInfoTopic`` in ros-perception/image_common
  ``camera_common.cpp``: the base topic's last name replaced by ``camera_info``; a
  compressed topic's base is the topic without its transport suffix);
- :func:`apply_camera_info`: a ``sensor_msgs/CameraInfo`` into a
  :class:`~leaf_disease_ros.geo.leaf_position.LeafLocator`;
- :func:`odometry_yaw` / :func:`imu_yaw`: the yaw and its sigma of a
  ``nav_msgs/Odometry`` (pose covariance index 35) or a ``sensor_msgs/Imu``
  (orientation covariance index 8; ``orientation_covariance[0] == -1``: no orientation);
- :func:`depth_metres`: an aligned depth ``sensor_msgs/Image`` (16UC1 mm, 32FC1 m) as
  a float array in metres;
- :func:`mount_from_transform`: a TF ``geometry_msgs/TransformStamped`` as a mount.

Messages are read by field name (rclpy and rosbags classes alike).
"""

import math
from typing import Any, Optional, Tuple

import numpy as np

from leaf_disease_ros.geo.camera_geometry import CameraGeometryError, Mount, mount_from_quaternion
from leaf_disease_ros.geo.leaf_position import depth_image_m, LeafLocator, yaw_of_quaternion
from leaf_disease_ros.ros.conversions import stamp_to_ns

CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
_TRANSPORT_SUFFIXES = ('/compressed', '/compressedDepth', '/theora', '/zstd')


def base_image_topic(topic: str) -> str:
    """Return the image_transport base topic of a (transport) topic name."""
    for suffix in _TRANSPORT_SUFFIXES:
        if topic.endswith(suffix):
            return topic[:-len(suffix)]
    return topic


def camera_info_topic(image_topic: str) -> str:
    """Return the camera_info topic image_transport pairs with ``image_topic`` (resolved)."""
    tokens = [t for t in base_image_topic(image_topic).split('/') if t]
    return '/' + '/'.join(tokens[:-1] + ['camera_info']) if tokens else '/camera_info'


def apply_camera_info(locator: LeafLocator, msg: Any) -> str:
    """
    Give a ``CameraInfo`` to the locator; return the camera source now in use.

    :raises CameraGeometryError: a calibration the package cannot use (the previous
        model stays; the caller counts and logs it).
    """
    roi = msg.roi
    return locator.set_camera_info(
        [float(v) for v in msg.k], [float(v) for v in msg.d], str(msg.distortion_model),
        [float(v) for v in msg.r], [float(v) for v in msg.p], int(msg.width), int(msg.height),
        int(msg.binning_x), int(msg.binning_y),
        (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)))


def odometry_yaw(msg: Any) -> Tuple[int, float, Optional[float]]:
    """Return ``(stamp_ns, yaw_rad, sigma_rad or None)`` of a ``nav_msgs/Odometry``."""
    q = msg.pose.pose.orientation
    variance = float(msg.pose.covariance[35])
    sigma = math.sqrt(variance) if variance > 0.0 and math.isfinite(variance) else None
    return (stamp_to_ns(msg.header.stamp),
            yaw_of_quaternion(float(q.x), float(q.y), float(q.z), float(q.w)), sigma)


def imu_yaw(msg: Any) -> Optional[Tuple[int, float, Optional[float]]]:
    """Return ``(stamp_ns, yaw_rad, sigma_rad or None)`` of a ``sensor_msgs/Imu``; None without."""
    if float(msg.orientation_covariance[0]) == -1.0:
        return None  # sensor_msgs/Imu.msg: the IMU gives no orientation
    q = msg.orientation
    variance = float(msg.orientation_covariance[8])
    sigma = math.sqrt(variance) if variance > 0.0 and math.isfinite(variance) else None
    return (stamp_to_ns(msg.header.stamp),
            yaw_of_quaternion(float(q.x), float(q.y), float(q.z), float(q.w)), sigma)


def depth_metres(msg: Any) -> np.ndarray:
    """
    Return an aligned depth image ``(H, W)`` in metres.

    :raises CameraGeometryError: an encoding other than 16UC1 / 32FC1, or a size that
        does not match the data.
    """
    dtype = {'16UC1': np.uint16, 'mono16': np.uint16, '32FC1': np.float32}.get(msg.encoding)
    if dtype is None:
        depth_image_m(np.zeros((1, 1)), str(msg.encoding))  # raises with the fix
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dtype).itemsize
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if step < width * itemsize or raw.size < height * step:
        raise CameraGeometryError(f'depth image {width}x{height} step {step} does not match '
                                  f'its {raw.size} bytes')
    kind = np.dtype(dtype).newbyteorder('>' if int(msg.is_bigendian) else '<')
    rows = raw[:height * step].reshape(height, step)[:, :width * itemsize]
    array = rows.copy().view(kind).reshape(height, width)
    return depth_image_m(array, str(msg.encoding))


def mount_from_transform(transform: Any) -> Mount:
    """Return the mount of a ``TransformStamped`` base frame <- camera optical frame."""
    q = transform.transform.rotation
    height = float(transform.transform.translation.z)
    if not math.isfinite(height):
        raise CameraGeometryError('the mount transform has a non-finite height')
    return mount_from_quaternion(float(q.x), float(q.y), float(q.z), float(q.w), height)
