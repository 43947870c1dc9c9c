"""
Launch the grapevine leaf disease detector node.

    ros2 launch leaf_disease_ros detector.launch.py image_topic:=/camera/image_raw

Topics map onto the node by remapping. The parameters come from ``params_file``; the
launch arguments ``model``, ``backend``, ``image_transport``, ``live_map_dir`` and
``use_sim_time`` override the same names in it **only when given** (left empty, the
file's value, else the table default, stays in force). This is done without logic:
the params file and the given arguments are passed in that order as ``--params-file``
and ``-p`` rules (launch_ros ``SetParametersFromFile`` / ``SetParameter``, scoped to
the node by a ``GroupAction``), and rcl applies parameter rules in command-line order.
No other logic here: what the node does with a value is the node's business.

``lifecycle:=true`` starts ``detector_lifecycle_node`` (a launch_ros ``LifecycleNode``
action: same name, remappings and parameters) instead of ``detector_node``; the node
then waits unconfigured for a lifecycle manager (nav2's ``lifecycle_manager``, see
docs/robot.md) or ``ros2 lifecycle set /detector_node configure``. The two actions
carry opposite conditions on the one argument, so exactly one runs.

String arguments stay strings. launch_ros turns a ``SetParameter`` into the command-line
rule ``-p name:=value`` (launch_ros/actions/node.py, humble and jazzy:
``cmd_extension = ['-p', f'{name}:={value}']``, the ``value_type`` is not passed on)
and rcl types that text again as YAML (rcl_yaml_param_parser ``get_value``: ``2024``
an integer, ``yes``/``on`` a boolean, ``1e3``/``nan`` a double), so
``live_map_dir:=2024`` reached the node as an integer and the string parameter refused
it at start. The string values are therefore sent single-quoted (``'2024'``), which rcl
keeps as a string whatever it holds; a value that itself contains a single quote cannot
be given this way (rcl refuses the rule at start): put it in ``params_file``.
"""

from launch import Condition, LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node, SetParameter, SetParametersFromFile
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'leaf_disease_ros'
QUOTE = "'"  # a YAML single-quoted scalar: rcl keeps it a string


def given(argument: str) -> Condition:
    """Return a condition that holds when the launch argument ``argument`` is not empty."""
    def predicate(context: LaunchContext) -> bool:
        return bool(context.launch_configurations.get(argument, ''))

    return Condition(predicate=predicate)


def generate_launch_description() -> LaunchDescription:
    """Return the launch description: the arguments and the detector node."""
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            'model', default_value='',
            description='ONNX model (.onnx, with its .json card beside it) or TensorRT engine '
                        '(.engine); empty: model_path of params_file (default: the shipped '
                        'engines/leaf_lite0_field.onnx)'),
        DeclareLaunchArgument(
            'backend', default_value='', choices=['', 'auto', 'onnxruntime', 'tensorrt'],
            description='auto: a matching TensorRT engine, else ONNX Runtime; onnxruntime '
                        'or tensorrt: that one or fail at start; empty: as in params_file '
                        '(default auto)'),
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='camera topic (sensor_msgs/Image); with image_transport compressed '
                        'the node reads <image_topic>/compressed'),
        DeclareLaunchArgument(
            'fix_topic', default_value='/fix',
            description='GNSS fix topic (sensor_msgs/NavSatFix)'),
        DeclareLaunchArgument(
            'image_transport', default_value='', choices=['', 'raw', 'compressed'],
            description='raw: sensor_msgs/Image; compressed: sensor_msgs/CompressedImage; '
                        'empty: as in params_file (default raw)'),
        DeclareLaunchArgument(
            'live_map_dir', default_value='',
            description='folder where the node keeps findings.geojson, the merged findings '
                        'of the run (every live_map_period_s and at shutdown); empty: as in '
                        'params_file (default off)'),
        DeclareLaunchArgument(
            'params_file', default_value=PathJoinSubstitution([share, 'config',
                                                               'detector.yaml']),
            description='ROS 2 params file with the detector parameters'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='namespace of the node (one detector per camera)'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='', choices=['', 'true', 'false'],
            description='true when playing a bag with ros2 bag play --clock; empty: as in '
                        'params_file (default false)'),
        DeclareLaunchArgument(
            'lifecycle', default_value='false', choices=['true', 'false'],
            description='true: the managed node detector_lifecycle_node, which waits '
                        'unconfigured for a lifecycle manager (nav2 lifecycle_manager, '
                        'ros2 lifecycle set); false: detector_node, detecting at once'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            choices=['debug', 'info', 'warn', 'error', 'fatal'],
            description='log level of the node'),
    ]
    overrides = [  # strings single-quoted: rcl re-types the -p text (see the docstring)
        SetParameter(name='model_path', condition=given('model'),
                     value=ParameterValue([QUOTE, LaunchConfiguration('model'), QUOTE],
                                          value_type=str)),
        SetParameter(name='backend', condition=given('backend'),
                     value=ParameterValue([QUOTE, LaunchConfiguration('backend'), QUOTE],
                                          value_type=str)),
        SetParameter(name='image_transport', condition=given('image_transport'),
                     value=ParameterValue([QUOTE, LaunchConfiguration('image_transport'),
                                           QUOTE], value_type=str)),
        SetParameter(name='live_map_dir', condition=given('live_map_dir'),
                     value=ParameterValue([QUOTE, LaunchConfiguration('live_map_dir'), QUOTE],
                                          value_type=str)),
        SetParameter(name='use_sim_time', condition=given('use_sim_time'),
                     value=ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)),
    ]
    common = {
        'package': PACKAGE,
        'name': 'detector_node',
        'namespace': LaunchConfiguration('namespace'),
        'output': 'screen',
        'emulate_tty': True,
        'remappings': [
            ('image', LaunchConfiguration('image_topic')),
            ('image/compressed', [LaunchConfiguration('image_topic'), '/compressed']),
            ('fix', LaunchConfiguration('fix_topic')),
        ],
        'arguments': ['--ros-args', '--log-level', LaunchConfiguration('log_level')],
    }
    detector = Node(executable='detector_node',
                    condition=UnlessCondition(LaunchConfiguration('lifecycle')), **common)
    # launch_ros LifecycleNode (humble and jazzy): name and namespace are required
    managed_detector = LifecycleNode(executable='detector_lifecycle_node',
                                     condition=IfCondition(LaunchConfiguration('lifecycle')),
                                     **common)
    node_group = GroupAction(
        [SetParametersFromFile(LaunchConfiguration('params_file'))] + overrides
        + [detector, managed_detector],
        scoped=True)
    return LaunchDescription(arguments + [node_group])
