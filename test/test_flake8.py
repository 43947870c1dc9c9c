"""ament_flake8 under `colcon test` (ROS machines); CI runs plain flake8 with the same settings."""

import pytest

main_with_errors = pytest.importorskip(
    'ament_flake8.main', reason='ament_flake8 is a ROS package (colcon test)').main_with_errors


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    rc, errors = main_with_errors(argv=[])
    assert rc == 0, f'Found {len(errors)} code style errors / warnings:\n' + '\n'.join(errors)
