"""The parameter table as the node presents it to ROS, and the review of live changes."""

import array

import numpy as np
import pytest

from leaf_disease_ros.perception.config import (DOUBLE, DOUBLE_ARRAY, INT, PARAMETERS,
                                                PARAMETERS_BY_NAME, STRING, validate_parameters)
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.ros.params import (check_overrides, descriptor_fields, EFFECT_DEBUG_RATE,
                                         EFFECT_DETECTOR, EFFECT_LABEL_INFO, EFFECT_REPLAY_ONLY,
                                         from_ros_value, live_effects, READ_AT_EACH_REPORT,
                                         review_changes, ros_default, ros_type_of, type_hint)

CURRENT = validate_parameters({})


@pytest.mark.parametrize('spec', PARAMETERS, ids=lambda spec: spec.name)
def test_every_default_has_the_ros_type_of_its_row(spec):
    # ROS infers a parameter's static type from the default: 1 would declare an integer
    assert ros_type_of(ros_default(spec)) == spec.type


def test_ros_type_of():
    assert ros_type_of(True) == 'bool'
    assert ros_type_of(1) == INT
    assert ros_type_of(1.0) == DOUBLE
    assert ros_type_of('x') == STRING
    assert ros_type_of([0.0, 1.0]) == DOUBLE_ARRAY
    assert ros_type_of([0, 1]) == 'integer_array'
    assert ros_type_of([0, 1.0]) is None
    assert ros_type_of([]) is None


@pytest.mark.parametrize('spec', PARAMETERS, ids=lambda spec: spec.name)
def test_descriptor_fields_carry_type_range_and_read_only(spec):
    fields = descriptor_fields(spec)
    assert fields.name == spec.name and fields.type == spec.type
    assert fields.description == spec.description
    assert fields.read_only == spec.read_only
    if spec.type == INT and spec.min_value is not None:
        assert fields.integer_range == (spec.min_value, spec.max_value)
    else:
        assert fields.integer_range is None
    if spec.type == DOUBLE and spec.min_value is not None:
        assert fields.floating_point_range == (spec.min_value, spec.max_value)
    else:
        assert fields.floating_point_range is None
    for choice in spec.choices or ():
        assert choice in fields.additional_constraints
    assert ('read-only' in fields.additional_constraints) == spec.read_only


def test_type_hints_say_how_to_write_the_value():
    assert type_hint(PARAMETERS_BY_NAME['max_fix_age_s']) == (
        'write a number with a decimal point (1.0, not 1; default 0.5)')
    assert '[0.0, 0.0, 0.0]' in type_hint(PARAMETERS_BY_NAME['lever_arm_m'])
    assert 'without a decimal point' in type_hint(PARAMETERS_BY_NAME['top_k'])
    assert 'true or false' in type_hint(PARAMETERS_BY_NAME['start_enabled'])
    assert "'grid'" in type_hint(PARAMETERS_BY_NAME['tiling'])


def test_from_ros_value_turns_arrays_into_lists():
    assert from_ros_value(array.array('d', [1.0, 2.0, 3.0])) == [1.0, 2.0, 3.0]
    assert from_ros_value(np.array([1.0, 2.0])) == [1.0, 2.0]
    assert from_ros_value((1.0, 2.0)) == [1.0, 2.0]
    assert from_ros_value(0.5) == 0.5 and from_ros_value('grid') == 'grid'
    assert from_ros_value(True) is True


def test_parameters_the_node_does_not_own_are_accepted_untouched():
    review = review_changes([('use_sim_time', True), ('qos_overrides./fix.depth', 3)], CURRENT)
    assert review.successful and review.updates == {}


def test_a_valid_live_change_is_accepted_coerced():
    review = review_changes([('disease_score_threshold', 0.8), ('lever_arm_m',
                             array.array('d', [0.5, 0.0, 1.0]))], CURRENT)
    assert review.successful
    assert review.updates == {'disease_score_threshold': 0.8, 'lever_arm_m': [0.5, 0.0, 1.0]}


@pytest.mark.parametrize('name, value, words', [
    ('model_path', '/tmp/other.onnx', 'read-only'),
    ('image_qos_depth', 5, 'read-only'),
    ('disease_score_threshold', 1.5, 'above the maximum'),
    ('tiling', 'hexagons', 'not one of grid, none'),
    ('top_k', 2.5, 'expected an integer'),
    ('lever_arm_m', [0.0, 1.0], 'expected 3 numbers'),
    ('tile_stride_px', 512, 'larger than tile_size_px'),
])
def test_an_invalid_change_is_rejected_naming_the_parameter_and_the_reason(name, value, words):
    review = review_changes([(name, value)], CURRENT)
    assert not review.successful
    assert name in review.reason and words in review.reason
    assert review.updates == {}


def test_a_multi_parameter_change_is_checked_as_a_whole():
    # stride 512 with size 512 together is consistent, though stride alone is not
    review = review_changes([('tile_stride_px', 512), ('tile_size_px', 512)], CURRENT)
    assert review.successful
    assert review.updates == {'tile_stride_px': 512, 'tile_size_px': 512}
    review = review_changes([('top_k', 5), ('unknown_threshold', 7.0)], CURRENT)
    assert not review.successful and review.updates == {}


def test_live_effects():
    assert live_effects({'unknown_threshold': 0.4}) == {EFFECT_DETECTOR, EFFECT_LABEL_INFO}
    assert live_effects({'disease_score_threshold': 0.4}) == {EFFECT_DETECTOR}
    assert live_effects({'min_vegetation_fraction': 0.2}) == {EFFECT_DETECTOR}
    assert live_effects({'debug_image_rate_hz': 5.0}) == {EFFECT_DEBUG_RATE}
    # diagnostics thresholds are read at every report: no effect to apply
    assert live_effects({'latency_budget_ms': 100.0}) == frozenset()
    assert live_effects({'merge_radius_m': 3.0}) == {EFFECT_REPLAY_ONLY}
    assert live_effects({}) == frozenset()


@pytest.mark.parametrize('spec', [s for s in PARAMETERS if not s.read_only],
                         ids=lambda spec: spec.name)
def test_every_live_parameter_has_an_effect(spec):
    # a parameter that may change at runtime but touches nothing would be silently ignored
    assert live_effects({spec.name: spec.default}) or spec.name in READ_AT_EACH_REPORT


def test_unknown_overrides_are_errors_with_the_closest_name():
    # Case 2 of issue 11: a typo in the node's params file was only a warning (the
    # default stayed in force); it is now an error at start, like --param in the replay.
    with pytest.raises(ConfigError) as caught:
        check_overrides(['use_sim_time', 'qos_overrides./image.subscription.depth', 'top_k',
                         'tile_sise_px'])
    assert caught.value.parameter == 'tile_sise_px'
    assert 'did you mean tile_size_px?' in str(caught.value)
    with pytest.raises(ConfigError, match='frobnicate'):
        check_overrides(['frobnicate'])
    check_overrides(['use_sim_time', 'top_k', 'qos_overrides./fix.subscription.depth'])


@pytest.mark.parametrize('spec', PARAMETERS, ids=lambda spec: spec.name)
def test_doubles_are_declared_with_dynamic_typing_and_the_rest_static(spec):
    # rclpy rejects `ros2 param set ... debug_image_rate_hz 5` (an int) for a statically
    # typed double; with dynamic typing review_changes does the type check instead
    assert descriptor_fields(spec).dynamic_typing == (spec.type in (DOUBLE, DOUBLE_ARRAY))
    if spec.type in (DOUBLE, DOUBLE_ARRAY):
        whole = 1 if spec.type == DOUBLE else [0, 0, 1]
        text = 'not a number' if spec.type == DOUBLE else ['a', 'b', 'c']
        current = validate_parameters({})
        if not spec.read_only:
            review = review_changes([(spec.name, whole)], current)
            assert review.successful or 'below the minimum' in review.reason
            assert not review_changes([(spec.name, text)], current).successful
