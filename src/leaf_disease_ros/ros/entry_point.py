"""
The ``detector_node`` and ``detector_lifecycle_node`` commands: check this Python, then run.

The node module (``ros/node.py``) imports rclpy, OpenCV and cv_bridge when it is
imported. On a machine where NumPy does not match the ROS distribution's compiled
modules (ROS 2 Humble with a pip NumPy 2), that import fails with a traceback before
the node could explain anything. This module imports neither: :func:`main` first runs
:func:`~leaf_disease_ros.ros.environment.check_python_stack` and, when something is
wrong, writes the one FATAL line the node writes for every start failure (``detector
cannot start: ... Fix: ...``) and returns exit code 1; otherwise it imports the node
and runs it.

``detector_node --help`` (``-h``) answers before any of that, without ROS: how to
run the node, its topics and every parameter of the one parameter table
(``perception/config.py``), then exit code 0. Arguments after ``--ros-args`` are
ROS's and never read as ``--help``.
"""

import sys
import textwrap
from typing import List, Optional, Sequence

from leaf_disease_ros.perception.config import PARAMETERS
from leaf_disease_ros.ros.environment import check_python_stack
from leaf_disease_ros.ros.messages import NODE_NAME, START_FAILURE_PREFIX

_USAGE = """\
usage: ros2 run leaf_disease_ros {executable} [--ros-args [-p NAME:=VALUE]... [--params-file FILE]]
       ros2 launch leaf_disease_ros detector.launch.py [NAME:=VALUE]...

Grapevine leaf disease detector: classifies the tiles of each camera frame, tags
the findings with the GPS position at the image stamp and publishes them.

topics (remap the inputs with -r image:=/camera/image_raw -r fix:=/gps/fix):
  in   image                sensor_msgs/Image (image/compressed with image_transport: compressed)
  in   fix                  sensor_msgs/NavSatFix
  out  ~/detections         vision_msgs/Detection2DArray (tile boxes, label + score)
  out  ~/detections/fix     sensor_msgs/NavSatFix (the position at the image stamp)
  out  ~/geo_detections     vision_msgs/Detection3DArray (confirmed findings, UTM metres)
  out  ~/label_info         vision_msgs/LabelInfo (transient local)
  out  ~/debug_image        sensor_msgs/Image (while subscribed)
  out  /diagnostics         diagnostic_msgs/DiagnosticArray
  srv  ~/enable             std_srvs/SetBool (pause / resume)

parameters (config/detector.yaml lists them all; docs/parameters.md explains them):
"""


def wants_help(argv: Sequence[str]) -> bool:
    """Return whether ``argv`` asks for help before ``--ros-args`` (ROS's own arguments)."""
    ours = list(argv)
    if '--ros-args' in ours:
        ours = ours[:ours.index('--ros-args')]
    return any(arg in ('-h', '--help') for arg in ours)


def help_text(executable: str = NODE_NAME) -> str:
    """Return the ``--help`` text: usage, topics and the parameter table (no ROS needed)."""
    lines = [_USAGE.format(executable=executable)]
    for spec in PARAMETERS:
        default = repr(spec.default) if isinstance(spec.default, str) else spec.default
        lines.append(f'  {spec.name} (default {default})')
        lines += textwrap.wrap(spec.description, width=88, initial_indent=' ' * 6,
                               subsequent_indent=' ' * 6)
    return '\n'.join(lines) + '\n'


def main(args: Optional[List[str]] = None, *, lifecycle: bool = False) -> int:
    """
    Run the detector node (``ros2 run leaf_disease_ros detector_node``); return the exit code.

    :param lifecycle: run the managed node instead (:func:`main_lifecycle`).
    :returns: 0 after ``--help``; 1 when this Python cannot run the node (the reason and
        fix are written to stderr), else what :func:`leaf_disease_ros.ros.node.main`
        returns.
    """
    if wants_help(sys.argv[1:] if args is None else args):
        sys.stdout.write(help_text('detector_lifecycle_node' if lifecycle else NODE_NAME))
        return 0
    problem = check_python_stack()
    if problem:
        sys.stderr.write(f'[FATAL] [{NODE_NAME}]: {START_FAILURE_PREFIX} {problem}\n')
        sys.stderr.flush()
        return 1
    from leaf_disease_ros.ros import node  # rclpy, OpenCV and cv_bridge from here on

    return node.main(args, lifecycle=lifecycle)


def main_lifecycle(args: Optional[List[str]] = None) -> int:
    """
    Run the managed detector node (``detector_lifecycle_node``); return the exit code.

    Same checks as :func:`main`; the node starts unconfigured and waits for a lifecycle
    manager (nav2's, launch_ros's LifecycleNode events or ``ros2 lifecycle set``).
    """
    return main(args, lifecycle=True)


if __name__ == '__main__':
    sys.exit(main())
