"""
Whether this Python can run the node at all: NumPy against the ROS distribution's modules.

ROS 2 Humble's compiled Python modules (``cv_bridge``, and ``python3-opencv`` from
Ubuntu 22.04) are built against NumPy 1.x. A NumPy 2 installed with pip (``pip install
onnxruntime`` pulls one in on Jammy) makes ``import cv2`` fail inside the import of the
node module, with an import traceback and before the node could say what is wrong.
:func:`check_python_stack` runs first, in the entry point (``ros/entry_point.py``),
and imports nothing compiled against NumPy: it answers from the versions where it can
(Humble with NumPy 2) and otherwise tries ``import cv2`` inside a ``try``.

The remedy for Humble is NumPy 1.x for the Python that runs the node; the package ships
a pip constraints file for it (``config/constraints-humble.txt``, ``numpy<2``).
Pure Python, no ROS: tested without ROS.
"""

import importlib
import os
from typing import Optional

#: where the pip constraints file of Humble is, relative to the package share folder
CONSTRAINTS_HUMBLE = 'config/constraints-humble.txt'
#: ROS distributions whose compiled Python modules are built against NumPy 1.x
NUMPY1_DISTROS = ('humble',)
# what a module compiled against NumPy 1.x raises on NumPy 2 (ImportError "numpy.core.
# multiarray failed to import", AttributeError "_ARRAY_API not found", SystemError)
_BROKEN_IMPORT = (ImportError, AttributeError, SystemError)


def numpy_major(version: str) -> int:
    """Return the major version of a NumPy version string (``'1.26.4'`` -> 1; 0 if unreadable)."""
    head = str(version).strip().split('.')[0]
    return int(head) if head.isdigit() else 0


def numpy_fix(ros_distro: str) -> str:
    """Return how to get a NumPy that the ROS distribution's compiled modules accept."""
    if ros_distro in NUMPY1_DISTROS:
        return ("install NumPy 1.x for this Python: pip3 install --user 'numpy<2' (or keep "
                f'pip below it with PIP_CONSTRAINT=<package>/{CONSTRAINTS_HUMBLE}), or remove '
                'the pip NumPy so python3-numpy from apt is used: pip3 uninstall numpy')
    return ("do not replace the distribution's NumPy and OpenCV with pip ones: pip3 "
            'uninstall numpy opencv-python opencv-python-headless, then rosdep install '
            '--from-paths src --ignore-src -y')


def numpy_problem(ros_distro: str, numpy_version: str, numpy_path: str = '') -> str:
    """
    Return why NumPy ``numpy_version`` cannot run the node on ``ros_distro`` ('' if it can).

    :param ros_distro: ``$ROS_DISTRO`` (``humble``, ``jazzy``...; '' when unknown).
    :param numpy_path: where that NumPy is installed (named in the message).
    """
    if ros_distro in NUMPY1_DISTROS and numpy_major(numpy_version) >= 2:
        where = f' ({numpy_path})' if numpy_path else ''
        return (f'NumPy {numpy_version}{where} cannot run ROS 2 {ros_distro.capitalize()}: '
                'its cv_bridge and python3-opencv are compiled against NumPy 1.x (importing '
                f'them fails). Fix: {numpy_fix(ros_distro)}')
    return ''


def import_problem(module: str, ros_distro: str, numpy_version: str) -> str:
    """Return why ``import <module>`` fails ('' if it works), with the NumPy fix."""
    try:
        importlib.import_module(module)
    except _BROKEN_IMPORT as exc:
        return (f'cannot import {module} with NumPy {numpy_version}: {exc}. '
                f'Fix: {numpy_fix(ros_distro)}')
    return ''


def check_python_stack(ros_distro: Optional[str] = None) -> str:
    """
    Return why this Python cannot run the node ('' when it can).

    Checks NumPy itself, NumPy 2 on a NumPy-1 distribution (without importing anything
    compiled against NumPy), then ``import cv2``. ``cv_bridge`` is checked by the node
    (``_make_bridge``) with one conversion, once rclpy is up.

    :param ros_distro: the ROS distribution; default ``$ROS_DISTRO``.
    """
    distro = (os.environ.get('ROS_DISTRO', '') if ros_distro is None else ros_distro).lower()
    try:
        numpy = importlib.import_module('numpy')
    except _BROKEN_IMPORT as exc:
        return f'cannot import numpy: {exc}. Fix: {numpy_fix(distro)}'
    version = str(getattr(numpy, '__version__', '?'))
    where = os.path.dirname(str(getattr(numpy, '__file__', '')))
    problem = numpy_problem(distro, version, where)
    if problem:
        return problem
    return import_problem('cv2', distro, version)
