"""
Static checks of the ROS side that run without ROS.

The node and the launch file cannot be imported here (no rclpy), so they are
compiled and read as syntax trees: the ROS dependencies in package.xml, the launch
arguments, the node's ROS interface (topic and service names of DESIGN.md) and its
exception handling. The import rules themselves are the import-linter contracts in
setup.cfg (test/test_layers.py). Each checker is also run on a counter-example, so
every test can fail.
"""

import ast
import os
import py_compile
import sys
from typing import Dict, List, Set
import xml.etree.ElementTree as ElementTree

import pytest

from conftest import REPO_DIR

SRC = os.path.join(REPO_DIR, 'src', 'leaf_disease_ros')
NODE = os.path.join(SRC, 'ros', 'node.py')
ENTRY_POINT = os.path.join(SRC, 'ros', 'entry_point.py')
CONVERSIONS = os.path.join(SRC, 'ros', 'conversions.py')
LAUNCH = os.path.join(REPO_DIR, 'launch', 'detector.launch.py')
LAUNCH_TEST = os.path.join(REPO_DIR, 'test', 'test_detector_launch.py')
PACKAGE_XML = os.path.join(REPO_DIR, 'package.xml')
SETUP_PY = os.path.join(REPO_DIR, 'setup.py')

ROS_PACKAGES = {'rclpy', 'rclcpp', 'launch', 'launch_ros', 'launch_testing',
                'launch_testing_ros', 'cv_bridge', 'ament_index_python', 'message_filters',
                'image_transport', 'rosbag2_py', 'rosidl_runtime_py', 'tf2_ros', 'rcl_interfaces',
                'builtin_interfaces'}
# rosdep keys of the Python libraries the package imports
PYTHON_DEPS = {'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'yaml': 'python3-yaml',
               'onnxruntime': 'python3-onnxruntime-pip', 'pytest': 'python3-pytest',
               # the module tf2_ros ships in tf2_ros_py (ros2/geometry2 tf2_ros_py/package.xml)
               'tf2_ros': 'tf2_ros_py'}
LOCAL = {'leaf_disease_ros', 'conftest', 'tiny_model'}


def is_ros_package(module: str) -> bool:
    """Return whether a top-level module name is a ROS 2 package."""
    top = module.split('.')[0]
    return top in ROS_PACKAGES or top.endswith(('_msgs', '_srvs', '_interfaces'))


def read(path: str) -> str:
    """Return the text of ``path``."""
    with open(path, encoding='utf-8') as stream:
        return stream.read()


def imported_modules(source: str, package: str = '') -> Set[str]:
    """
    Return every module ``source`` imports, at module level or inside functions.

    ``from a.b import c`` gives ``a.b`` and ``a.b.c`` (``c`` may be a module);
    relative imports are resolved against ``package``.
    """
    found: Set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parts = parts[:len(parts) - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            found.add(base)
            found.update(f'{base}.{alias.name}' for alias in node.names)
    return found


def source_files() -> Dict[str, str]:
    """Return relative path -> path of every module under src/leaf_disease_ros."""
    files = {}
    for folder, _, names in os.walk(SRC):
        for name in names:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                files[os.path.relpath(path, SRC).replace(os.sep, '/')] = path
    return files


def package_of(relative_path: str) -> str:
    """Return the dotted package a module under src/leaf_disease_ros belongs to."""
    parts = ['leaf_disease_ros'] + relative_path.split('/')[:-1]
    return '.'.join(parts)


# --- compilation -------------------------------------------------------------------


@pytest.mark.parametrize('path', [NODE, LAUNCH, LAUNCH_TEST], ids=os.path.basename)
def test_compiles(path, tmp_path):
    py_compile.compile(path, cfile=str(tmp_path / 'out.pyc'), doraise=True)


def test_the_entry_point_checks_python_before_importing_the_node():
    # detector_node runs ros/entry_point.py:main, which imports ros/node.py (rclpy, cv2,
    # cv_bridge) only inside main(), after check_python_stack()
    assert "'detector_node = leaf_disease_ros.ros.entry_point:main'" in read(SETUP_PY)
    tree = ast.parse(read(ENTRY_POINT))
    top_level = {module.split('.')[0] for node in tree.body
                 for module in imported_modules(ast.unparse(node))}
    assert top_level <= {'sys', 'textwrap', 'typing', 'leaf_disease_ros'}
    assert imported_modules(read(ENTRY_POINT)) >= {'leaf_disease_ros.ros.node'}
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'main')
    check = min(n.lineno for n in ast.walk(main)
                if isinstance(n, ast.Call) and call_name(n) == 'check_python_stack')
    node_import = min(n.lineno for n in ast.walk(main) if isinstance(n, ast.ImportFrom))
    assert check < node_import
    node_tree = ast.parse(read(NODE))
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'main' for n in node_tree.body)


# --- package.xml -----------------------------------------------------------------------


def declared(xml_text: str, tags: Set[str]) -> Set[str]:
    """Return the dependency names of the given tags in a package.xml."""
    root = ElementTree.fromstring(xml_text)
    return {element.text.strip() for element in root if element.tag in tags}


def missing_dependencies(paths: List[str], keys: Set[str]) -> List[str]:
    """Return the rosdep keys that ``paths`` import but ``keys`` lack."""
    stdlib = set(sys.stdlib_module_names)
    missing = set()
    for path in paths:
        for module in imported_modules(read(path), 'leaf_disease_ros.ros'):
            top = module.split('.')[0]
            if not top or top in stdlib or top in LOCAL:
                continue
            key = PYTHON_DEPS.get(top, top if is_ros_package(top) else f'<unmapped {top}>')
            if key not in keys:
                missing.add(key)
    return sorted(missing)


def test_package_xml_declares_what_the_node_and_launch_file_import():
    xml_text = read(PACKAGE_XML)
    run = declared(xml_text, {'exec_depend', 'depend'})
    assert missing_dependencies([NODE, CONVERSIONS, LAUNCH], run) == []
    test = run | declared(xml_text, {'test_depend'})
    assert missing_dependencies([LAUNCH_TEST], test) == []


def test_vision_msgs_is_at_least_4_1_for_label_info():
    root = ElementTree.fromstring(read(PACKAGE_XML))
    (vision,) = [e for e in root if e.tag == 'exec_depend' and e.text == 'vision_msgs']
    assert vision.get('version_gte') == '4.1.0'  # vision_msgs/LabelInfo is new in 4.1.0


def test_package_xml_check_can_fail():
    root = ElementTree.fromstring(read(PACKAGE_XML))
    for element in [e for e in root if e.text == 'vision_msgs']:
        root.remove(element)
    without = ElementTree.tostring(root, encoding='unicode')
    run = declared(without, {'exec_depend', 'depend'})
    assert missing_dependencies([NODE], run) == ['vision_msgs']


# --- launch file -------------------------------------------------------------------------

LAUNCH_ARGUMENTS = {'model', 'backend', 'image_topic', 'fix_topic', 'image_transport',
                    'live_map_dir', 'params_file', 'namespace', 'use_sim_time', 'log_level',
                    'lifecycle'}
# launch arguments that override parameters of params_file, only when given
OVERRIDES = {'model': 'model_path', 'backend': 'backend', 'image_transport': 'image_transport',
             'live_map_dir': 'live_map_dir', 'use_sim_time': 'use_sim_time'}
FORBIDDEN_CALLS = {'eval', 'exec', 'OpaqueFunction', 'ExecuteProcess', 'system', 'Popen',
                   'run', 'check_output', 'check_call', 'PythonExpression'}


def call_name(node: ast.Call) -> str:
    """Return the called name of a call node ('' when not a simple name)."""
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, 'attr', '')


def launch_problems(source: str) -> List[str]:
    """Return what is wrong with a launch file's source."""
    tree = ast.parse(source)
    problems = []
    declared_args = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.IfExp, ast.For, ast.While, ast.Try, ast.Lambda)):
            problems.append(f'logic: {type(node).__name__} at line {node.lineno}')
        if isinstance(node, ast.Call):
            name = call_name(node)
            if name in FORBIDDEN_CALLS:
                problems.append(f'forbidden call {name} at line {node.lineno}')
            if name == 'DeclareLaunchArgument' and node.args:
                declared_args.add(ast.literal_eval(node.args[0]))
    if 'subprocess' in imported_modules(source):
        problems.append('imports subprocess')
    if declared_args != LAUNCH_ARGUMENTS:
        problems.append(f'arguments {sorted(declared_args)} != {sorted(LAUNCH_ARGUMENTS)}')
    for needed in ("'image'", "'image/compressed'", "'fix'", "executable='detector_node'",
                   "'model_path'", "'backend'", "'image_transport'", "'use_sim_time'"):
        if needed not in source:
            problems.append(f'does not mention {needed}')
    return problems


def test_launch_file_declares_the_arguments_and_has_no_logic():
    assert launch_problems(read(LAUNCH)) == []


def test_lifecycle_argument_starts_exactly_one_of_the_two_executables():
    # launch.conditions IfCondition / UnlessCondition on the same argument: one runs;
    # both actions take the same keywords (name, namespace, remappings, arguments), so
    # the params file and the overrides of the group reach either
    tree = ast.parse(read(LAUNCH))
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and call_name(node) in ('Node', 'LifecycleNode'):
            keywords = {k.arg: k.value for k in node.keywords}
            condition = keywords['condition']
            (configuration,) = condition.args
            found[call_name(node)] = (ast.literal_eval(keywords['executable']),
                                      call_name(condition),
                                      ast.literal_eval(configuration.args[0]),
                                      ast.unparse(keywords[None]))
    assert found == {'Node': ('detector_node', 'UnlessCondition', 'lifecycle', 'common'),
                     'LifecycleNode': ('detector_lifecycle_node', 'IfCondition', 'lifecycle',
                                       'common')}
    common = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], 'id', '') == 'common')
    assert {ast.literal_eval(k) for k in common.keys} >= {'name', 'namespace', 'remappings'}
    declared = {ast.literal_eval(n.args[0]): {k.arg: k.value for k in n.keywords}
                for n in ast.walk(tree)
                if isinstance(n, ast.Call) and call_name(n) == 'DeclareLaunchArgument'}
    assert ast.literal_eval(declared['lifecycle']['default_value']) == 'false'
    assert ("'detector_lifecycle_node = leaf_disease_ros.ros.entry_point:main_lifecycle'"
            in read(SETUP_PY))
    assert 'detector_lifecycle_node' in read(os.path.join(REPO_DIR, '.ci', 'run'))


def set_parameters(source: str) -> Dict[str, str]:
    """Return parameter name -> launch argument of the SetParameter actions of a launch file."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and call_name(node) == 'SetParameter':
            keywords = {k.arg: k.value for k in node.keywords}
            argument = next((ast.literal_eval(n.args[0]) for n in ast.walk(keywords['value'])
                             if isinstance(n, ast.Call) and call_name(n) == 'LaunchConfiguration'),
                            '')
            condition = keywords.get('condition')
            given = (isinstance(condition, ast.Call) and call_name(condition) == 'given'
                     and ast.literal_eval(condition.args[0]) == argument)
            found[ast.literal_eval(keywords['name'])] = argument if given else '<always>'
    return found


def test_launch_file_parameters_are_in_the_table():
    from leaf_disease_ros.perception.config import PARAMETERS_BY_NAME

    keys = set(set_parameters(read(LAUNCH)))
    assert keys and keys <= set(PARAMETERS_BY_NAME) | {'use_sim_time'}


def test_launch_arguments_override_the_params_file_only_when_given():
    source = read(LAUNCH)
    assert {argument: name for name, argument in set_parameters(source).items()} == OVERRIDES
    tree = ast.parse(source)
    for node in ast.walk(tree):  # each overriding argument defaults to empty: "not given"
        if isinstance(node, ast.Call) and call_name(node) == 'DeclareLaunchArgument':
            if ast.literal_eval(node.args[0]) in OVERRIDES:
                default = {k.arg: k.value for k in node.keywords}['default_value']
                assert ast.literal_eval(default) == ''
    # the params file goes first (--params-file), the given arguments after it (-p), in
    # one scoped group with the node: rcl applies them in that order
    group = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and call_name(n) == 'GroupAction')
    text = ast.unparse(group)
    assert text.index('SetParametersFromFile') < text.index('overrides') < text.index('detector')
    assert not any(isinstance(n, ast.Call) and call_name(n) == 'Node' and any(
        k.arg == 'parameters' for k in n.keywords) for n in ast.walk(tree))


def launch_rules(source: str, given: Dict[str, str]) -> List[str]:
    """
    Return the ``-p`` words launch_ros gives the node for the launch arguments ``given``.

    Each ``SetParameter(value=ParameterValue([...], value_type=str))`` is evaluated as
    launch does (the substitutions concatenated; ``coerce_to_type`` returns a str value
    unchanged) and written as launch_ros/actions/node.py does: ``f'{name}:={value}'``.
    """
    tree = ast.parse(source)
    constants = {target.id: ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) for target in node.targets
                 if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant)}
    rules = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and call_name(node) == 'SetParameter'):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        argument = ast.literal_eval(keywords['condition'].args[0])
        if argument not in given:
            continue
        value = keywords['value'].args[0]
        parts = value.elts if isinstance(value, ast.List) else [value]
        text = ''
        for part in parts:
            if isinstance(part, ast.Name):
                text += constants[part.id]
            elif isinstance(part, ast.Constant):
                text += part.value
            else:  # LaunchConfiguration(argument)
                text += given[ast.literal_eval(part.args[0])]
        rules += ['-p', f'{ast.literal_eval(keywords["name"])}:={text}']
    return rules


@pytest.mark.parametrize('text', ['2024', 'yes', 'on', 'off', '1e3', 'nan', '0x10', '010',
                                  '.inf', 'maps 2024', '/data/run:1', 'true'])
def test_string_launch_arguments_reach_the_node_as_strings(text):
    # launch_ros passes SetParameter values as '-p name:=value' and rcl re-types the text
    from rclpy_standin import ros_param_rules

    given = {'model': text, 'live_map_dir': text, 'backend': 'onnxruntime',
             'image_transport': 'raw', 'use_sim_time': 'true'}
    rules = dict(ros_param_rules(['--ros-args'] + launch_rules(read(LAUNCH), given)))
    assert rules == {'model_path': text, 'live_map_dir': text, 'backend': 'onnxruntime',
                     'image_transport': 'raw', 'use_sim_time': True}


def test_unquoted_launch_values_would_be_retyped_by_rcl():
    # what the launch file did before: ParameterValue(LaunchConfiguration(...), value_type=str)
    from rclpy_standin import ros_param_rules

    source = read(LAUNCH).replace("[QUOTE, LaunchConfiguration('live_map_dir'), QUOTE]",
                                  "LaunchConfiguration('live_map_dir')")
    rules = ros_param_rules(['--ros-args'] + launch_rules(source, {'live_map_dir': '2024'}))
    assert rules == [('live_map_dir', 2024)]


def test_launch_override_check_can_fail():
    source = read(LAUNCH)
    broken = source.replace("condition=given('backend'),", '', 1)
    assert set_parameters(broken)['backend'] == '<always>'


def test_launch_check_can_fail():
    source = read(LAUNCH)
    assert launch_problems(source.replace("'log_level'", "'verbosity'", 1))
    assert launch_problems(source + '\nif True:\n    pass\n')
    assert launch_problems(source + '\nimport subprocess\nsubprocess.run(["ls"])\n')
    assert launch_problems(source + '\nx = eval("1")\n')


# --- the node's ROS interface and error handling ----------------------------------------

# the design's table, plus ~/utm_zone (the run's UTM zone of ~/geo_detections, issue 19)
TOPICS_OUT = {'~/detections', '~/detections/fix', '~/geo_detections', '~/label_info',
              '~/utm_zone', '~/debug_image', '/diagnostics'}
TOPICS_IN = {'image', 'image/compressed', 'fix', 'odom', 'imu', 'depth'}
SERVICES = {'~/enable'}
# exception names the node may catch, and where the broad ones are allowed
NARROW = {'FrameError', 'InferenceError', 'self._bridge_error',
          'InvalidParameterTypeException', 'InvalidParameterValueException',
          'LeafDiseaseError', 'KeyboardInterrupt', 'ExternalShutdownException', 'OSError',
          'CameraGeometryError', 'TransformException'}
# broader catches, each allowed in the functions named only: the worker's last resort,
# the publishing path (no exception from it may end the worker), start-up clean-up, the
# lifecycle transitions (rclpy turns an exception there into ERROR and logs nothing:
# rclpy/lifecycle/node.py __execute_callback, so the node logs the traceback itself)
LIFECYCLE_CALLBACKS = {'on_configure', 'on_activate', 'on_deactivate', 'on_cleanup',
                       'on_shutdown', 'on_error'}
BROAD = {'Exception': {'_worker_main', '_publish_frame'} | LIFECYCLE_CALLBACKS,
         'BaseException': {'__init__'},
         'broken_import': {'_make_bridge'},
         'broken_import + (cv_bridge.CvBridgeError,)': {'_make_bridge'}}


def names_in(call_args, name: str, tree: ast.AST) -> Set[str]:
    """Return the string literals passed as the topic/service argument of ``name`` calls."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and call_name(node) == name:
            args = list(node.args[:call_args + 1])
            if len(args) > call_args and isinstance(args[call_args], ast.Constant):
                found.add(args[call_args].value)
            elif len(args) > call_args and isinstance(args[call_args], ast.Name):
                found.add(f'<variable {args[call_args].id}>')
    return found


def test_the_node_uses_the_topic_and_service_names_of_the_design():
    tree = ast.parse(read(NODE))
    # every output through _create_output (a lifecycle publisher in the managed node)
    assert names_in(1, 'create', tree) == TOPICS_OUT
    assert names_in(1, 'create_publisher', tree) == {'<variable topic>'}
    assert names_in(1, 'create_lifecycle_publisher', tree) == {'<variable topic>'}
    subscribed = names_in(1, 'create_subscription', tree)
    # camera_info: beside the image (image_transport's pairing) or camera_info_topic
    assert subscribed == {'fix', '<variable name>', '<variable info_topic>', 'odom', 'imu',
                          'depth'}
    for topic in TOPICS_IN:
        assert f"'{topic}'" in read(NODE)
    assert names_in(1, 'create_service', tree) == SERVICES


def handler_problems(source: str) -> List[str]:
    """Return exception handlers that catch more than the node's narrow errors."""
    problems = []
    tree = ast.parse(source)
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            if not isinstance(node, ast.ExceptHandler):
                continue
            if node.type is None:
                problems.append(f'bare except in {function.name}')
                continue
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            for caught in (ast.unparse(t) for t in types):
                if caught in NARROW:
                    continue
                if function.name in BROAD.get(caught, ()):
                    if caught == 'BaseException' and not any(
                            isinstance(n, ast.Raise) and n.exc is None for n in node.body):
                        problems.append(f'{caught} in {function.name} is not re-raised')
                    continue
                problems.append(f'{function.name} catches {caught}')
    return problems


def test_the_node_catches_only_narrow_errors():
    assert handler_problems(read(NODE)) == []


def test_handler_check_can_fail():
    assert handler_problems('def _on_image(self):\n    try:\n        pass\n'
                            '    except Exception:\n        pass\n') == [
        '_on_image catches Exception']
    assert handler_problems('def __init__(self):\n    try:\n        pass\n'
                            '    except BaseException:\n        pass\n') == [
        'BaseException in __init__ is not re-raised']
    assert handler_problems('def f():\n    try:\n        pass\n    except:\n        pass\n')


def test_src_has_no_print_assert_or_exit_outside_main_guards():
    problems = []
    for relative, path in sorted(source_files().items()):
        tree = ast.parse(read(path))
        guarded = set()
        for node in tree.body:
            if isinstance(node, ast.If) and '__main__' in ast.unparse(node.test):
                guarded.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert):
                problems.append(f'{relative}:{node.lineno} assert')
            if isinstance(node, ast.Call) and id(node) not in guarded:
                text = ast.unparse(node.func)
                if text in ('print', 'sys.exit', 'exit', 'quit', 'os._exit'):
                    problems.append(f'{relative}:{node.lineno} {text}()')
    assert problems == []


def test_the_ros_workflow_builds_and_tests_in_humble_and_jazzy_containers():
    import yaml

    with open(os.path.join(REPO_DIR, '.github', 'workflows', 'ros.yml'), encoding='utf-8') as f:
        job = yaml.safe_load(f)['jobs']['colcon']
    assert {entry['distro'] for entry in job['strategy']['matrix']['include']} == {
        'humble', 'jazzy'}
    assert job['container'] == 'ros:${{ matrix.distro }}'
    script = '\n'.join(step.get('run', '') for step in job['steps'])
    for needed in ('rosdep install --from-paths src', 'colcon build --packages-select '
                   'leaf_disease_ros', 'colcon test --packages-select leaf_disease_ros',
                   'colcon test-result --verbose', 'PIP_CONSTRAINT'):
        assert needed in script


def test_detector_node_help_answers_without_ros():
    # the README says every command answers --help; detector_node did not without ROS
    # (ModuleNotFoundError: diagnostic_msgs). It must not even import rclpy or OpenCV.
    import subprocess
    import sys

    from leaf_disease_ros.perception.config import PARAMETERS

    script = ('import sys\n'
              'from leaf_disease_ros.ros.entry_point import main\n'
              'code = main(sys.argv[1:])\n'
              'sys.stderr.write(f"{code} {\'rclpy\' in sys.modules} {\'cv2\' in sys.modules}")\n')
    env = dict(os.environ, PYTHONPATH=os.path.dirname(SRC))
    for argv in (['--help'], ['-h', '--ros-args', '-p', 'top_k:=2']):
        run = subprocess.run([sys.executable, '-c', script] + argv, capture_output=True,
                             text=True, env=env, timeout=60)
        assert run.stderr.split() == ['0', 'False', 'False'], run.stderr
        assert run.stdout.startswith('usage: ros2 run leaf_disease_ros detector_node')
        for spec in PARAMETERS:
            assert f'\n  {spec.name} (default ' in run.stdout, spec.name
        assert '~/geo_detections' in run.stdout
    # after --ros-args, -h is ROS's (rcl's own argument), not ours
    from leaf_disease_ros.ros.entry_point import help_text, wants_help
    assert not wants_help(['--ros-args', '-p', 'x:=1', '--help'])
    # the managed node's help names its own executable
    assert help_text('detector_lifecycle_node').startswith(
        'usage: ros2 run leaf_disease_ros detector_lifecycle_node')
