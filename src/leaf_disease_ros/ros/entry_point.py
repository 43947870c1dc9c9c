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
"""

import sys
from typing import List, Optional

from leaf_disease_ros.ros.environment import check_python_stack
from leaf_disease_ros.ros.messages import NODE_NAME, START_FAILURE_PREFIX


def main(args: Optional[List[str]] = None, *, lifecycle: bool = False) -> int:
    """
    Run the detector node (``ros2 run leaf_disease_ros detector_node``); return the exit code.

    :param lifecycle: run the managed node instead (:func:`main_lifecycle`).
    :returns: 1 when this Python cannot run the node (the reason and fix are written to
        stderr), else what :func:`leaf_disease_ros.ros.node.main` returns.
    """
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
