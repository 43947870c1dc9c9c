"""
The stand-ins refuse what the real libraries refuse: one test per strictness.

test/rclpy_standin.py and test/trt_standin.py stand in for rclpy and TensorRT in tier 1;
a double looser than the real API lets a bug through that only a robot finds. Each
rule here is taken from the real source named in the test.
"""

import math

import pytest

import rclpy_standin


# --- rclpy: -p rules, as rcl reads them ----------------------------------------------------

def test_p_rules_count_only_after_ros_args_and_before_the_double_dash():
    # rcl/src/rcl/arguments.c: ROS arguments live between --ros-args and --
    words = ['-p', 'a:=1', '--ros-args', '-p', 'b:=2', '--param', 'c:=x', '--', '-p', 'd:=3']
    assert rclpy_standin.ros_param_rules(words) == [('b', 2), ('c', 'x')]
    assert rclpy_standin.ros_param_rules(['-p', 'a:=1']) == []


def test_a_p_rule_without_separator_is_refused():
    with pytest.raises(ValueError, match="couldn't parse parameter override rule"):
        rclpy_standin.ros_param_rules(['--ros-args', '-p', 'model_path=/x.onnx'])


@pytest.mark.parametrize('text, value', [
    ('2024', 2024), ('0x10', 16), ('010', 8), ('-3', -3),             # strtoll base 0
    ('1e3', 1000.0), ('.5', 0.5), ('-.INF', -math.inf),                # strtod, .inf words
    ('yes', True), ('On', True), ('Y', True), ('off', False), ('NO', False),
    ("'2024'", '2024'), ('"yes"', 'yes'), ('1_0', '1_0'), ('/maps 2024', '/maps 2024'),
    ('[1, 2]', [1, 2]),
])
def test_p_values_are_typed_as_rcl_does_not_as_yaml_1_1(text, value):
    # rcl_yaml_param_parser get_value (ros2/rcl humble src/parse.c); PyYAML (YAML 1.1,
    # what the stand-in used) gives 8 for '010' too but 10 for '1_0' and a string for 'Y'
    assert rclpy_standin.rcl_parameter_value(text) == value
    assert type(rclpy_standin.rcl_parameter_value(text)) is type(value)


def test_p_nan_is_a_double():
    assert math.isnan(rclpy_standin.rcl_parameter_value('nan'))


# --- rclpy: QoSProfile (rclpy/qos.py humble and jazzy) -------------------------------------

def test_qos_profile_refuses_an_unknown_keyword():
    qos = rclpy_standin.QoSProfile
    with pytest.raises(AssertionError, match='Invalid arguments'):  # rclpy asserts __slots__
        qos(depth=1, reliabilty=rclpy_standin.ReliabilityPolicy.BEST_EFFORT)


def test_qos_profile_needs_history_or_depth_and_keep_last_needs_a_depth():
    qos, history = rclpy_standin.QoSProfile, rclpy_standin.HistoryPolicy
    with pytest.raises(rclpy_standin.InvalidQoSProfileException, match='History and/or depth'):
        qos(reliability=rclpy_standin.ReliabilityPolicy.RELIABLE)
    with pytest.raises(rclpy_standin.InvalidQoSProfileException, match='without a depth'):
        qos(history=history.KEEP_LAST)
    assert qos(depth=3).history == history.KEEP_LAST
    assert qos(history=history.KEEP_ALL).history == history.KEEP_ALL


# --- rclpy: Node and its create_* keywords (rclpy/node.py) ---------------------------------

@pytest.fixture()
def node_class(monkeypatch):
    """Return a function distro -> the stand-in's rclpy.node.Node of that distro."""
    def make(distro: str = 'humble') -> type:
        return rclpy_standin.install(monkeypatch, distro).modules['rclpy.node'].Node
    return make


def test_node_refuses_unknown_keywords_and_knows_the_distro(node_class):
    with pytest.raises(TypeError, match="unexpected keyword argument 'parameters'"):
        node_class()('n', parameters=[])
    with pytest.raises(TypeError, match='enable_logger_service'):
        node_class('humble')('n', enable_logger_service=True)  # jazzy's keyword
    assert node_class('jazzy')('n', enable_logger_service=True).get_name() == 'n'
    with pytest.raises(TypeError):
        node_class()('n', '/ns')  # keyword-only after the name


def test_create_publisher_takes_rclpy_keywords_and_a_profile_or_depth(node_class):
    node = node_class()('n')
    msg = rclpy_standin.RosWorld().msg('std_msgs/msg/Header')
    with pytest.raises(TypeError, match='callback_grop'):
        node.create_publisher(msg, 't', 1, callback_grop=None)
    with pytest.raises(TypeError, match='Expected QoSProfile or int'):
        node.create_publisher(msg, 't', None)
    assert node.create_publisher(msg, 't', 7).qos.depth == 7


def test_create_subscription_takes_rclpy_keywords(node_class):
    node = node_class()('n')
    msg = rclpy_standin.RosWorld().msg('std_msgs/msg/Header')
    with pytest.raises(TypeError, match='qos'):
        node.create_subscription(msg, 't', print, qos=1)
    with pytest.raises(TypeError):
        node.create_subscription(msg, 't', print)  # qos_profile is required


def test_create_service_takes_rclpy_keywords(node_class):
    world = rclpy_standin.RosWorld()
    node = node_class()('n')
    set_bool = world.factory.service('std_srvs/srv/SetBool')
    with pytest.raises(TypeError, match='qos'):
        node.create_service(set_bool, 's', print, qos=None)
    with pytest.raises(TypeError):
        node.create_service(set_bool, 's', print, None)  # keyword-only after the callback


# --- rclpy.lifecycle (rclpy/lifecycle/*.py humble = jazzy, rcl_lifecycle's state machine) ---

@pytest.fixture()
def lifecycle(monkeypatch):
    """Return (world, rclpy.lifecycle) of an installed stand-in."""
    world = rclpy_standin.install(monkeypatch, 'humble')
    return world, world.modules['rclpy.lifecycle']


def _managed_node(lifecycle_module, **callbacks):
    """Return a LifecycleNode named ``n`` whose on_* are ``callbacks``."""
    node_type = type('Managed', (lifecycle_module.LifecycleNode,),
                     {name: (lambda f: lambda self, state: f(state))(f)
                      for name, f in callbacks.items()})
    return node_type('n')


def test_lifecycle_return_codes_are_the_transition_constants(lifecycle):
    world, module = lifecycle
    transition = world.msg('lifecycle_msgs/msg/Transition')
    code = module.TransitionCallbackReturn  # lifecycle.cpp TransitionCallbackReturnType
    assert (code.SUCCESS.value, code.FAILURE.value, code.ERROR.value) == (
        transition.TRANSITION_CALLBACK_SUCCESS, transition.TRANSITION_CALLBACK_FAILURE,
        transition.TRANSITION_CALLBACK_ERROR) == (97, 98, 99)
    assert code.FAILURE.to_label() == 'transition_failure'


def test_a_transition_the_state_does_not_offer_is_refused(lifecycle):
    world, module = lifecycle
    node = _managed_node(module)
    with pytest.raises(rclpy_standin.RCLError, match='Failed to trigger'):
        node.trigger_activate()  # lifecycle.cpp: rcl_lifecycle_trigger_transition_by_id
    assert not world.change_state('/n', 'cleanup')  # the service answers success false
    assert world.lifecycle_state('/n') == 'unconfigured'


def test_the_return_code_decides_the_next_state(lifecycle):
    world, module = lifecycle
    code = module.TransitionCallbackReturn
    node = _managed_node(module, on_configure=lambda state: code.FAILURE,
                         on_shutdown=lambda state: code.FAILURE)
    assert node.trigger_configure() == code.FAILURE
    assert world.lifecycle_state('/n') == 'unconfigured'
    assert node.trigger_shutdown() == code.FAILURE  # shutting down fails into finalized
    assert world.lifecycle_state('/n') == 'finalized'


def test_a_raising_callback_is_an_error_handled_by_on_error(lifecycle):
    world, module = lifecycle
    code = module.TransitionCallbackReturn
    seen = []

    def boom(state):
        raise RuntimeError('bug')

    node = _managed_node(module, on_configure=boom,
                         on_error=lambda state: seen.append(state.label) or code.SUCCESS)
    assert node.trigger_configure() == code.ERROR  # rclpy catches it (and logs nothing)
    assert seen == ['unconfigured']  # on_error gets the state the transition started from
    assert node._state_machine.history == ['unconfigured', 'configuring', 'errorprocessing',
                                           'unconfigured']
    assert not world.logs


def test_a_callback_returning_no_code_breaks_the_transition(lifecycle):
    world, module = lifecycle
    node = _managed_node(module, on_configure=lambda state: None)
    with pytest.raises(AttributeError, match='to_label'):
        node.trigger_configure()  # rclpy: cb_return_code.to_label() on None
    assert world.lifecycle_state('/n') == 'configuring'  # stuck, as rclpy leaves it


def test_lifecycle_publishers_publish_only_while_activated(lifecycle):
    world, module = lifecycle
    header = world.msg('std_msgs/msg/Header')
    node = _managed_node(module)
    with pytest.raises(TypeError, match='publisher_class'):
        node.create_lifecycle_publisher(header, 't', 1, publisher_class=None)
    publisher = node.create_lifecycle_publisher(header, 't', 1)
    publisher.publish(header())
    assert '/t' not in world.published and len(world.dropped_inactive['/t']) == 1
    node.trigger_configure()
    node.trigger_activate()  # the default on_activate activates the managed entities
    publisher.publish(header())
    assert len(world.published['/t']) == 1
    node.trigger_deactivate()
    publisher.publish(header())
    assert len(world.published['/t']) == 1
    assert node.destroy_lifecycle_publisher(publisher) and '/t' not in world.publishers


def test_an_override_that_skips_super_leaves_the_publishers_inactive(lifecycle):
    world, module = lifecycle
    code = module.TransitionCallbackReturn
    header = world.msg('std_msgs/msg/Header')
    node = _managed_node(module, on_activate=lambda state: code.SUCCESS)
    publisher = node.create_lifecycle_publisher(header, 't', 1)
    node.trigger_configure()
    node.trigger_activate()
    assert not publisher.is_activated


def test_destroy_returns_whether_the_entity_was_the_nodes(lifecycle):
    world, module = lifecycle
    node = _managed_node(module)
    header = world.msg('std_msgs/msg/Header')
    subscription = node.create_subscription(header, 't', print, 1)
    assert node.destroy_subscription(subscription) and not world.subscriptions
    assert not node.destroy_subscription(subscription)
    timer = node.create_timer(1.0, print)
    assert node.destroy_timer(timer) and not node.destroy_timer(timer)
    with pytest.raises(ValueError):
        node.remove_on_set_parameters_callback(print)  # never added: list.remove


# --- TensorRT: network flags (NvInfer.h 10.x, pyCore.cpp create_network) -------------------

def test_strongly_typed_is_bit_1_as_in_tensorrt_10():
    import trt_standin

    assert trt_standin.NetworkDefinitionCreationFlag.STRONGLY_TYPED == 1
    assert trt_standin.NetworkDefinitionCreationFlag.EXPLICIT_BATCH == 0


def test_create_network_refuses_unknown_flag_bits():
    import trt_standin

    logger = trt_standin.Logger()
    with trt_standin.no_context_current():
        builder = object.__new__(trt_standin.Builder)  # no context needed to ask this
        builder.logger = logger
        assert builder.create_network(1 << 5) is None
        assert 'invalid NetworkDefinitionCreationFlags 32' in logger.messages[-1][1]
        assert builder.create_network(1 << 1).flags == 2


def test_a_strongly_typed_network_refuses_the_precision_flags(monkeypatch):
    import trt_standin

    trt_standin.install(monkeypatch)
    logger = trt_standin.Logger()
    context = trt_standin.Device(0).make_context()
    try:
        builder = trt_standin.Builder(logger)
        network = builder.create_network(1 << trt_standin.NetworkDefinitionCreationFlag
                                         .STRONGLY_TYPED)
        network.inputs = [trt_standin.ITensor('input', (-1, 3, 8, 8), trt_standin.DataType.FLOAT)]
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        profile.set_shape('input', (1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))
        config.add_optimization_profile(profile)
        config.set_flag(trt_standin.BuilderFlag.FP16)
        assert builder.build_serialized_network(network, config) is None
        assert 'not allowed on a strongly typed network' in logger.messages[-1][1]
        del builder, network, config
    finally:
        trt_standin.Context.pop()
        context.detach()
    trt_standin.VIOLATIONS.clear()


# --- TensorRT: the calibrator as pyInt8.cpp calls it ---------------------------------------

class _Calibrator:
    """A calibrator whose overrides can fail; records the calls."""

    def __init__(self, batch_size: int, fail: str = '') -> None:
        self.batch_size, self.fail, self.calls = batch_size, fail, []

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if self.fail == name:
            raise OSError(f'{name} failed')

    def get_batch_size(self) -> int:
        self._maybe_fail('get_batch_size')
        return self.batch_size

    def get_batch(self, names):
        self._maybe_fail('get_batch')
        return None

    def read_calibration_cache(self):
        self._maybe_fail('read_calibration_cache')
        return None

    def write_calibration_cache(self, cache):
        self._maybe_fail('write_calibration_cache')


def _calibrate(monkeypatch, calibrator, batches: int = 1):
    import trt_standin

    trt_standin.install(monkeypatch)
    logger = trt_standin.Logger()
    builder = object.__new__(trt_standin.Builder)
    builder.logger = logger
    network = object.__new__(trt_standin.INetworkDefinition)
    network.inputs = [trt_standin.ITensor('input', (-1, 3, 2, 2), trt_standin.DataType.FLOAT)]
    network.onnx_bytes = b'model'
    config = object.__new__(trt_standin.IBuilderConfig)
    config.int8_calibrator = calibrator
    profile = trt_standin.IOptimizationProfile()
    profile.set_shape('input', (batches, 3, 2, 2), (batches, 3, 2, 2), (batches, 3, 2, 2))
    config.calibration_profile = profile
    return builder._calibrate(config, network), logger


def test_calibrator_exceptions_are_printed_not_raised(monkeypatch, capsys):
    for name in ('get_batch_size', 'read_calibration_cache', 'get_batch'):
        calibrator = _Calibrator(1, fail=name)
        result, _ = _calibrate(monkeypatch, calibrator)
        assert result is None
        assert f'[ERROR] Exception caught in {name}(): {name} failed' in capsys.readouterr().err


def test_get_batch_size_is_asked_and_must_match_the_calibration_profile(monkeypatch):
    calibrator = _Calibrator(4)
    result, logger = _calibrate(monkeypatch, calibrator, batches=8)
    assert result is None and calibrator.calls == ['get_batch_size']
    assert 'batch size 4 does not match the calibration profile batch 8' in \
        logger.messages[-1][1]
