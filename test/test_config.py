"""The parameter table and its validators; ROS params files."""

import pytest

from leaf_disease_ros.perception.config import (defaults, DetectorConfig, load_params_file,
                                                PARAMETERS, PARAMETERS_BY_NAME,
                                                validate_parameters, validate_value)
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.ros.params import review_changes


def test_table_is_consistent():
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names))
    for spec in PARAMETERS:
        assert spec.description and spec.group
        # every default passes its own validator
        assert validate_value(spec.name, spec.default) == spec.default
        if spec.choices:
            assert spec.default in spec.choices


def test_defaults_validate_and_feed_the_detector():
    values = validate_parameters({})
    assert values == defaults()
    config = DetectorConfig.from_parameters(values)
    assert config.lever_arm_m == (0.0, 0.0, 0.0)
    # every DetectorConfig field is a parameter (one table, no private knobs)
    for name in DetectorConfig.__dataclass_fields__:
        assert name in PARAMETERS_BY_NAME


@pytest.mark.parametrize('name, value, reason', [
    ('tile_size_px', 8, 'below the minimum'),
    ('tile_size_px', 256.5, 'integer'),
    ('tile_size_px', True, 'integer'),
    ('min_vegetation_fraction', 1.5, 'above the maximum'),
    ('min_vegetation_fraction', 'half', 'number'),
    ('max_fix_age_s', float('nan'), 'finite'),
    ('tiling', 'hex', 'not one of'),
    ('backend', 3, 'string'),
    ('lever_arm_m', [1.0, 2.0], 'expected 3 numbers'),
    ('lever_arm_m', [1.0, 'a', 2.0], 'list of numbers'),
    ('start_enabled', 1, 'true or false'),
    ('no_such_parameter', 1, 'unknown parameter'),
])
def test_invalid_values_name_the_parameter(name, value, reason):
    with pytest.raises(ConfigError, match=reason) as info:
        validate_value(name, value)
    assert info.value.parameter == name
    assert repr(name) in str(info.value)


def test_int_accepted_for_double():
    assert validate_value('max_fix_age_s', 1) == 1.0
    assert isinstance(validate_value('max_fix_age_s', 1), float)


def test_cross_check_stride():
    with pytest.raises(ConfigError, match='gaps'):
        validate_parameters({'tile_size_px': 128, 'tile_stride_px': 256})


def test_unknown_names():
    with pytest.raises(ConfigError, match='unknown parameter'):
        validate_parameters({'use_sim_time': True})
    assert 'use_sim_time' not in validate_parameters({'use_sim_time': True}, ignore_unknown=True)


def test_runtime_changes():
    # one rule for live changes: ros/params.review_changes (the node's set_parameters)
    current = validate_parameters({})
    assert review_changes([('unknown_threshold', 0.4)], current).updates == {
        'unknown_threshold': 0.4}
    for name, value, reason in (('backend', 'onnxruntime', 'read-only'),
                                ('tile_stride_px', 300, 'gaps'),
                                ('disease_score_threshold', 2.0, 'above the maximum')):
        review = review_changes([(name, value)], current)
        assert not review.successful and reason in review.reason


def test_load_ros_params_file(tmp_path):
    path = tmp_path / 'p.yaml'
    path.write_text(
        '/**:\n  ros__parameters:\n    tile_size_px: 224\n    tile_stride_px: 224\n'
        '    use_sim_time: true\n'
        'detector_node:\n  ros__parameters:\n    tile_size_px: 192\n    tile_stride_px: 192\n'
        'other_node:\n  ros__parameters:\n    tile_size_px: 64\n')
    values = load_params_file(str(path))
    # use_sim_time belongs to ROS: accepted, and not a parameter of the table
    assert values['tile_size_px'] == 192 and 'use_sim_time' not in values
    valid = validate_parameters(values, ignore_unknown=True)
    assert valid['tile_size_px'] == 192


def test_load_namespaced_and_flat_files(tmp_path):
    ns = tmp_path / 'ns.yaml'
    ns.write_text('robot1:\n  detector_node:\n    ros__parameters:\n      top_k: 2\n')
    assert load_params_file(str(ns)) == {'top_k': 2}
    flat = tmp_path / 'flat.yaml'
    flat.write_text('top_k: 4\n')
    assert load_params_file(str(flat)) == {'top_k': 4}


def test_bad_params_files(tmp_path):
    with pytest.raises(ConfigError, match='cannot read'):
        load_params_file(str(tmp_path / 'missing.yaml'))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('a: [1, 2\n')
    with pytest.raises(ConfigError, match='not valid YAML'):
        load_params_file(str(bad))
    scalar = tmp_path / 'scalar.yaml'
    scalar.write_text('42\n')
    with pytest.raises(ConfigError, match='mapping'):
        load_params_file(str(scalar))
