"""ament_xmllint under `colcon test` (ROS machines); CI runs xmllint on package.xml."""

import pytest

main = pytest.importorskip('ament_xmllint.main',
                           reason='ament_xmllint is a ROS package (colcon test)').main


@pytest.mark.linter
@pytest.mark.xmllint
def test_xmllint():
    rc = main(argv=[])
    assert rc == 0, 'Found errors'
