"""The entry point's check of NumPy against the ROS distribution (no ROS needed)."""

import sys

from leaf_disease_ros.ros.environment import (check_python_stack, import_problem,
                                              numpy_major, numpy_problem)


def test_numpy_2_on_humble_is_refused_with_the_fix():
    text = numpy_problem('humble', '2.2.6', '/home/robot/.local/lib/python3.10/numpy')
    assert text.startswith('NumPy 2.2.6 (/home/robot/.local/lib/python3.10/numpy) cannot run '
                           'ROS 2 Humble')
    assert "pip3 install --user 'numpy<2'" in text
    assert 'config/constraints-humble.txt' in text


def test_numpy_1_on_humble_and_numpy_2_elsewhere_are_fine():
    assert numpy_problem('humble', '1.21.5') == ''
    assert numpy_problem('jazzy', '2.1.0') == ''
    assert numpy_problem('', '2.1.0') == ''
    assert (numpy_major('1.26.4'), numpy_major('2.0.0rc1'), numpy_major('garbage')) == (1, 2, 0)


def test_a_broken_import_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, 'cv2', None)  # import cv2 raises ImportError
    text = import_problem('cv2', 'jazzy', '2.1.0')
    assert text.startswith('cannot import cv2 with NumPy 2.1.0') and 'pip3 uninstall' in text
    assert check_python_stack('jazzy').startswith('cannot import cv2')


def test_this_python_passes_where_no_humble_is_named():
    assert check_python_stack('') == ''
