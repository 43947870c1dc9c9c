"""
Where the shipped demo recording lives (installed share folder or source checkout).

The demo is a rosbag2 folder, ``demo/vineyard_demo``, made by the source tree's
demo-bag maker (a developer script, not installed) and installed by ``setup.py`` to
``share/leaf_disease_ros/demo/vineyard_demo``; ``demo/README.md`` says what it is
made of.
"""

import os
from typing import List

from leaf_disease_ros.perception.errors import BagError, ModelLoadError
from leaf_disease_ros.perception.resources import share_dir

DEMO_BAG_NAME = 'vineyard_demo'


def demo_bag_candidates() -> List[str]:
    """Return the folders searched for the demo recording, in order."""
    found = []
    try:
        found.append(os.path.join(share_dir(), 'demo', DEMO_BAG_NAME))
    except ModelLoadError:
        pass  # no share folder (no shipped model yet): try the source checkout
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(here)))
    found.append(os.path.join(repo, 'demo', DEMO_BAG_NAME))
    return found


def demo_bag_path() -> str:
    """
    Return the installed demo recording.

    :raises BagError: it is not installed (the message lists where it was looked for).
    """
    candidates = demo_bag_candidates()
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, 'metadata.yaml')):
            return folder
    raise BagError('the demo recording is not installed (looked in '
                   + ', '.join(candidates) + '); give a bag, or reinstall the package '
                   "(pip install '.[replay]', or colcon build) from a complete source tree")
