"""
Where the package's installed data lives (shipped model, demo recording, config).

The same lookup works for a colcon install (``install/<pkg>/share/<pkg>``), a pip
install (``<prefix>/share/<pkg>``) and a source checkout (the repository root), so
the CLI, the replay and the node find the shipped model without ROS. The
environment variable ``LEAF_DISEASE_ROS_SHARE`` overrides the search.
"""

import os
import sys
from typing import List, Optional

from leaf_disease_ros.perception.errors import ModelLoadError

PACKAGE_NAME = 'leaf_disease_ros'
SHIPPED_MODEL_NAME = 'leaf_resnet18'
SHARE_ENV = 'LEAF_DISEASE_ROS_SHARE'


def _candidates() -> List[str]:
    found: List[str] = []
    env = os.environ.get(SHARE_ENV)
    if env:
        found.append(env)
    here = os.path.dirname(os.path.abspath(__file__))
    # colcon: .../install/<pkg>/lib/pythonX.Y/site-packages/<pkg>/core -> share/<pkg>
    # pip:    <prefix>/lib/pythonX.Y/site-packages/<pkg>/core -> <prefix>/share/<pkg>
    folder = here
    for _ in range(7):
        folder = os.path.dirname(folder)
        found.append(os.path.join(folder, 'share', PACKAGE_NAME))
    found.append(os.path.join(sys.prefix, 'share', PACKAGE_NAME))
    # source checkout: <repo>/src/<pkg>/core -> <repo>
    found.append(os.path.dirname(os.path.dirname(os.path.dirname(here))))
    return found


def share_dir() -> str:
    """
    Return the folder holding engines/, config/ and launch/ of this package.

    :raises ModelLoadError: when no candidate holds an ``engines`` folder.
    """
    candidates = _candidates()
    for folder in candidates:
        if os.path.isdir(os.path.join(folder, 'engines')):
            return folder
    raise ModelLoadError(
        'cannot find the share folder of leaf_disease_ros (looked in '
        + ', '.join(candidates) + f'); reinstall the package or set {SHARE_ENV}')


def shipped_model_path() -> str:
    """Return the path of the shipped ONNX model (which may not exist yet)."""
    return os.path.join(share_dir(), 'engines', SHIPPED_MODEL_NAME + '.onnx')


def resolve_model_path(model_path: Optional[str]) -> str:
    """Return ``model_path`` made absolute, or the shipped model when it is empty."""
    if not model_path:
        return shipped_model_path()
    return os.path.abspath(os.path.expanduser(model_path))
