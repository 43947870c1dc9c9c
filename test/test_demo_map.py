"""The demo recording's map: findings at their leaves, beside the track, one per leaf."""

import math
import os

import pytest

from leaf_disease_ros.geo.geodesy import local_east_north_m
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_BAG = os.path.join(REPO, 'demo', 'vineyard_demo')
SHIPPED_MODEL = os.path.join(REPO, 'engines', 'leaf_lite0_field.onnx')
# tools/make_demo_bag.py: origin, rows at 70 deg from north, leaves 1/3 m apart, the
# camera looking left at a canopy 0.75 m away; row 0 is driven first, all RTK
ORIGIN = (44.89310, -0.15420)
ROW_AZIMUTH_DEG = 70.0
LEAF_SPACING_M = 1.0 / 3.0
CANOPY_M = 0.75
ROW_0_FRAMES = 44

pytest.importorskip('rosbags', reason='the replay reads bags with rosbags')
pytestmark = pytest.mark.skipif(not (os.path.isdir(DEMO_BAG) and os.path.isfile(SHIPPED_MODEL)),
                                reason='the demo bag or the shipped model is not built')


@pytest.fixture(scope='module')
def row_0(tmp_path_factory):
    """Replay the demo's first row; return its map features as (label, along, across, count)."""
    out = str(tmp_path_factory.mktemp('demo_map'))
    parameters = {'model_path': SHIPPED_MODEL, 'backend': 'onnxruntime',
                  'hold_findings_out_of_domain': False}  # the first leaves count too
    state = run_replay(ReplayOptions(bag_path=DEMO_BAG, out_dir=out, max_frames=ROW_0_FRAMES,
                                     write_bag=False, gallery_size=0, parameters=parameters))
    assert state.locator is not None and state.locator.camera_source.startswith('camera_info')
    azimuth = math.radians(ROW_AZIMUTH_DEG)
    along_unit = (math.sin(azimuth), math.cos(azimuth))
    right_unit = (math.cos(azimuth), -math.sin(azimuth))
    out_features = []
    for feature in state.merger.features():
        east, north = local_east_north_m(feature.latitude_deg, feature.longitude_deg, *ORIGIN)
        out_features.append((feature.label, east * along_unit[0] + north * along_unit[1],
                             east * right_unit[0] + north * right_unit[1], feature.count))
    return out_features


def test_features_lie_beside_the_track_at_the_canopy_distance(row_0):
    assert len(row_0) >= 10
    for label, along_m, across_m, _ in row_0:
        # the robot drives along the row line (across 0); the canopy is 0.75 m to its left
        assert across_m == pytest.approx(-CANOPY_M, abs=0.03), (label, along_m)
        # and each feature is at a leaf of the row (leaf j at (j + 0.5) / 3 m)
        leaf = along_m / LEAF_SPACING_M - 0.5
        assert abs(leaf - round(leaf)) * LEAF_SPACING_M < 0.03, (label, along_m)


def test_one_feature_per_leaf(row_0):
    leaves = [round(along_m / LEAF_SPACING_M - 0.5) for _, along_m, _, _ in row_0]
    # two leaves of one frame (1/3 m apart) land in two features; never two for one leaf
    assert len(leaves) == len(set(leaves))
    adjacent = sum(1 for leaf in leaves if leaf + 1 in leaves)
    assert adjacent >= 5
    # a leaf is in three consecutive frames: its three findings land in its one feature
    counts = sorted(count for *_, count in row_0)
    assert counts == [3] * len(row_0)
