"""
The rosbags type store the replay reads and writes bags with.

``rosbags`` ships the ROS 2 Humble core types (std_msgs, sensor_msgs,
geometry_msgs, diagnostic_msgs...) but not vision_msgs, which is not a core
package. Its 4.x definitions (Humble, Jazzy) are registered here from their
``.msg`` text, fully qualified and field for field as upstream declares them: a
field out of order would serialise without error and deserialise into nonsense,
so tests round-trip every published type through CDR.
"""

from typing import Any, Dict

# vision_msgs 4.x (ros-perception/vision_msgs, branch ros2), comments stripped.
VISION_MSGS_4: Dict[str, str] = {
    'vision_msgs/msg/Point2D': 'float64 x\nfloat64 y\n',
    'vision_msgs/msg/Pose2D': 'vision_msgs/Point2D position\nfloat64 theta\n',
    'vision_msgs/msg/BoundingBox2D': (
        'vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n'),
    'vision_msgs/msg/BoundingBox3D': 'geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n',
    'vision_msgs/msg/ObjectHypothesis': 'string class_id\nfloat64 score\n',
    'vision_msgs/msg/ObjectHypothesisWithPose': (
        'vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n'),
    'vision_msgs/msg/Detection2D': (
        'std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n'
        'vision_msgs/BoundingBox2D bbox\nstring id\n'),
    'vision_msgs/msg/Detection2DArray': (
        'std_msgs/Header header\nvision_msgs/Detection2D[] detections\n'),
    'vision_msgs/msg/Detection3D': (
        'std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n'
        'vision_msgs/BoundingBox3D bbox\nstring id\n'),
    'vision_msgs/msg/Detection3DArray': (
        'std_msgs/Header header\nvision_msgs/Detection3D[] detections\n'),
    'vision_msgs/msg/VisionClass': 'uint16 class_id\nstring class_name\n',
    'vision_msgs/msg/LabelInfo': (
        'std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n'),
}


def make_typestore() -> Any:
    """
    Return a rosbags type store: ROS 2 Humble core types plus vision_msgs 4.x.

    :raises ImportError: when rosbags is not installed (``pip install '.[replay]'``).
    """
    from rosbags.typesys import get_typestore, get_types_from_msg, Stores

    typestore = get_typestore(Stores.ROS2_HUMBLE)
    extra: Dict[str, Any] = {}
    for name, text in VISION_MSGS_4.items():
        extra.update(get_types_from_msg(text, name))
    typestore.register(extra)
    return typestore
