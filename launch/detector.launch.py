"""
Launch the grapevine leaf disease detector node.

    ros2 launch leaf_disease_ros detector.launch.py image_topic:=/camera/image_raw

Every argument maps onto the node directly: topics by remapping, the rest as
parameters (which win over the same names in ``params_file``). No logic here: what
the node does with a value is the node's business.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'leaf_disease_ros'


def generate_launch_description() -> LaunchDescription:
    """Return the launch description: the arguments and the detector node."""
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            'model', default_value=PathJoinSubstitution([share, 'engines',
                                                         'leaf_resnet18.onnx']),
            description='ONNX model (.onnx, with its .json card beside it) or TensorRT '
                        'engine (.engine); default: the shipped model'),
        DeclareLaunchArgument(
            'backend', default_value='auto', choices=['auto', 'onnxruntime', 'tensorrt'],
            description='auto: a matching TensorRT engine, else ONNX Runtime; onnxruntime '
                        'or tensorrt: that one or fail at start'),
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='camera topic (sensor_msgs/Image); with image_transport compressed '
                        'the node reads <image_topic>/compressed'),
        DeclareLaunchArgument(
            'fix_topic', default_value='/fix',
            description='GNSS fix topic (sensor_msgs/NavSatFix)'),
        DeclareLaunchArgument(
            'image_transport', default_value='raw', choices=['raw', 'compressed'],
            description='raw: sensor_msgs/Image; compressed: sensor_msgs/CompressedImage'),
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([share, 'config',
                                                               'detector.yaml']),
            description='ROS 2 params file with the detector parameters'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='namespace of the node (one detector per camera)'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false', choices=['true', 'false'],
            description='true when playing a bag with ros2 bag play --clock'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            choices=['debug', 'info', 'warn', 'error', 'fatal'],
            description='log level of the node'),
    ]
    detector = Node(
        package=PACKAGE,
        executable='detector_node',
        name='detector_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'model_path': ParameterValue(LaunchConfiguration('model'), value_type=str),
                'backend': ParameterValue(LaunchConfiguration('backend'), value_type=str),
                'image_transport': ParameterValue(LaunchConfiguration('image_transport'),
                                                  value_type=str),
                'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                               value_type=bool),
            },
        ],
        remappings=[
            ('image', LaunchConfiguration('image_topic')),
            ('image/compressed', [LaunchConfiguration('image_topic'), '/compressed']),
            ('fix', LaunchConfiguration('fix_topic')),
        ],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
    )
    return LaunchDescription(arguments + [detector])
