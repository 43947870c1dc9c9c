"""ament_pep257 under `colcon test` (ROS machines); CI runs pydocstyle with the same settings."""

import pytest

main = pytest.importorskip('ament_pep257.main',
                           reason='ament_pep257 is a ROS package (colcon test)').main


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    rc = main(argv=['.', 'test'])
    assert rc == 0, 'Found code style errors / warnings'
