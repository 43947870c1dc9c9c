"""
Where the package's installed data lives (shipped model, demo recording, config).

In a sourced ROS workspace the ament index answers; otherwise the share folder of
the install prefix that holds this package (colcon's ``install/<pkg>/share/<pkg>``,
pip's ``<prefix>/share/<pkg>``), then pip's data scheme, then a source checkout
(the repository root), so the CLI, the replay and the node find the shipped model
with or without ROS. The environment variable ``LEAF_DISEASE_ROS_SHARE`` comes first.
"""

import os
import sysconfig
from typing import List, Optional

from leaf_disease_ros.perception.errors import ModelLoadError

PACKAGE_NAME = 'leaf_disease_ros'
SHIPPED_MODEL_NAME = 'leaf_lite0_field'
SHARE_ENV = 'LEAF_DISEASE_ROS_SHARE'


def _ament_share() -> Optional[str]:
    """Return the share folder the ament index knows (a sourced ROS workspace), or None."""
    try:
        from ament_index_python.packages import (get_package_share_directory,
                                                 PackageNotFoundError)
    except ImportError:  # no ROS: pip install or source checkout
        return None
    try:
        return get_package_share_directory(PACKAGE_NAME)
    except (PackageNotFoundError, ValueError, LookupError):
        return None


def _candidates() -> List[str]:
    found: List[str] = []
    env = os.environ.get(SHARE_ENV)
    if env:
        found.append(env)
    ament = _ament_share()
    if ament:
        found.append(ament)
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # the install prefix that holds this package: <prefix>/lib/pythonX.Y/site-packages/<pkg>
    # (colcon: install/<pkg>; pip: the venv or system prefix); data_files go to <prefix>/share
    site_packages = os.path.dirname(package_dir)
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(site_packages)))
    found.append(os.path.join(prefix, 'share', PACKAGE_NAME))
    # pip's data scheme of this interpreter (venv, system, --user installs)
    found.append(os.path.join(sysconfig.get_path('data'), 'share', PACKAGE_NAME))
    # source checkout: <repo>/src/<pkg>
    found.append(os.path.dirname(site_packages))
    return list(dict.fromkeys(found))


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
