"""config/detector.yaml lists exactly the parameter table, each commented, with valid values."""

import os
from typing import List

from conftest import REPO_DIR
from leaf_disease_ros.perception.config import (load_params_file, PARAMETERS_BY_NAME,
                                                read_params_file, validate_parameters)
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.ros.params import ros_type_of

CONFIG = os.path.join(REPO_DIR, 'config', 'detector.yaml')


def yaml_problems(path: str) -> List[str]:
    """Return what is wrong with a params file as the detector's config (empty if fine)."""
    problems = []
    values = read_params_file(path)  # as written: the names are checked below
    missing = sorted(set(PARAMETERS_BY_NAME) - set(values))
    extra = sorted(set(values) - set(PARAMETERS_BY_NAME))
    if missing:
        problems.append('missing: ' + ', '.join(missing))
    if extra:
        problems.append('not in the table: ' + ', '.join(extra))
    try:
        validate_parameters(values, ignore_unknown=True)
    except ConfigError as exc:
        problems.append(f'invalid: {exc}')
    for name, value in values.items():
        spec = PARAMETERS_BY_NAME.get(name)
        if spec is not None and ros_type_of(value) != spec.type:
            # ROS types a parameter by its default: 1 for a double fails at start
            problems.append(f'{name}: ROS reads {value!r} as {ros_type_of(value)}, '
                            f'declared {spec.type}')
    with open(path, encoding='utf-8') as stream:
        lines = stream.read().splitlines()
    for index, line in enumerate(lines):
        key = line.strip().split(':', 1)[0]
        if key in PARAMETERS_BY_NAME and line.startswith('    '):
            above = lines[index - 1].strip()
            if not above.startswith('#') or above.startswith('# ---') or len(above) < 10:
                problems.append(f'{key}: no one-line comment above it')
    return problems


def test_the_shipped_config_is_complete_typed_valid_and_commented():
    assert yaml_problems(CONFIG) == []


def test_the_config_applies_whatever_the_node_name_and_namespace():
    assert load_params_file(CONFIG, 'detector_node') == load_params_file(CONFIG, 'left_camera')


def test_each_check_can_fail(tmp_path):
    with open(CONFIG, encoding='utf-8') as stream:
        original = stream.read()
    bad = tmp_path / 'bad.yaml'
    bad.write_text(original.replace('    top_k: 3\n', ''), encoding='utf-8')
    assert yaml_problems(str(bad)) == ['missing: top_k']
    bad.write_text(original + '    # a comment\n    tile_sise_px: 3\n', encoding='utf-8')
    assert yaml_problems(str(bad)) == ['not in the table: tile_sise_px']
    bad.write_text(original.replace('max_fix_gap_s: 1.0', 'max_fix_gap_s: 1'),
                   encoding='utf-8')
    assert yaml_problems(str(bad)) == ['max_fix_gap_s: ROS reads 1 as int, declared double']
    bad.write_text(original.replace("tiling: 'grid'", "tiling: 'hex'"), encoding='utf-8')
    assert yaml_problems(str(bad))[0].startswith("invalid: parameter 'tiling'")
    lines = original.splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if line.strip().startswith('top_k:'))
    bad.write_text(''.join(lines[:index - 1] + lines[index:]), encoding='utf-8')
    assert yaml_problems(str(bad)) == ['top_k: no one-line comment above it']
