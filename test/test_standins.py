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
