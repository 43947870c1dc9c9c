"""
Per-finding ground positions (geo/leaf_position.py), and what evidence and the map make of them.

The camera is the demo's: 768x256 px, looking left (yaw +90), 0.75 m from the canopy,
fx 576 px: the three 256 px tiles of a frame see the canopy 1/3 m apart along the row.
"""

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import pytest

from bag_builder import NS
from leaf_disease_ros.geo.evidence import EvidenceTracker
from leaf_disease_ros.geo.geodesy import local_east_north_m, offset_latlon
from leaf_disease_ros.geo.leaf_position import (LeafLocator, LocatorSettings, NOTE_NO_HEADING)
from leaf_disease_ros.geo.mapping import FindingMerger, sighting_at
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.perception.pipeline import Detection, FrameResult
from leaf_disease_ros.perception.positions import (GeoTag, GeotagResult, PLACED_CAMERA,
                                                   PLACED_CANOPY, PLACED_DEPTH,
                                                   REASON_INTERPOLATED, STATUS_GBAS_FIX)
from leaf_disease_ros.ros.camera_inputs import camera_info_topic

LAT0, LON0 = 44.9, -0.15
RTK = (0.02 ** 2, 0.0, 0.0, 0.0, 0.02 ** 2, 0.0, 0.0, 0.0, 0.04 ** 2)
DEMO_K = [576.0, 0.0, 383.5, 0.0, 576.0, 127.5, 0.0, 0.0, 1.0]


class Course:
    """A fix buffer's course over ground: east at 1 m/s until ``stops_at_ns``."""

    def __init__(self, heading_rad: float = 0.0, stops_at_ns: int = 10 ** 18) -> None:
        self.heading_rad = heading_rad
        self.stops_at_ns = stops_at_ns

    def course_at(self, stamp_ns: int, window_s: float) -> Tuple[Optional[float], float, str]:
        if stamp_ns >= self.stops_at_ns:
            return self.heading_rad, 0.0, ''  # standing still: the course is noise
        return self.heading_rad, 1.0, ''


def tile(column: int, label: str = 'esca', finding: bool = True) -> Detection:
    return Detection((256 * column, 0, 256 * (column + 1), 256), label, 0, 0.99,
                     ((label, 0.99),), False, finding, finding, 1.0)


def geotag(t_s: float, east_m: float) -> GeotagResult:
    lat, lon = offset_latlon(LAT0, LON0, east_m, 0.0)
    return GeotagResult(GeoTag(int(t_s * NS), lat, lon, 30.0, STATUS_GBAS_FIX, 2, RTK, 2,
                               REASON_INTERPOLATED, 0.0), REASON_INTERPOLATED)


def demo_locator(**settings) -> LeafLocator:
    locator = LeafLocator(LocatorSettings(**settings))
    locator.set_camera_info(DEMO_K, [0.0] * 5, 'plumb_bob', [1, 0, 0, 0, 1, 0, 0, 0, 1],
                            [0.0] * 12, 768, 256)
    return locator


def frame(locator: LeafLocator, t_s: float, east_m: float, detections: Sequence[Detection],
          course: Course) -> FrameResult:
    tag = geotag(t_s, east_m)
    positions = locator.locate(int(t_s * NS), tag, detections, (256, 768), course)
    return FrameResult(int(t_s * NS), 256, 768, tuple(detections), len(detections), 0, tag,
                       {}, positions)


def local(position) -> np.ndarray:
    return np.array(local_east_north_m(position.latitude_deg, position.longitude_deg,
                                       LAT0, LON0))


def test_each_tile_of_a_frame_lands_on_the_canopy_at_its_own_place():
    locator = demo_locator()
    result = frame(locator, 1.0, 5.0, [tile(0), tile(1), tile(2)], Course(0.0))
    # heading east, camera looking left (north): the canopy is 0.75 m north; the image's
    # left tile looks back (west) 1/3 m, the right tile ahead.
    for column, expected_east in ((0, 5.0 - 1 / 3), (1, 5.0), (2, 5.0 + 1 / 3)):
        position = result.position_of(column)
        assert position.method == PLACED_CANOPY and position.heading_source == 'course'
        np.testing.assert_allclose(local(position), [expected_east, 0.75], atol=0.02)
        expected_range = math.hypot(0.75, expected_east - 5.0)
        assert position.range_m == pytest.approx(expected_range, abs=0.02)
    assert locator.camera_source == 'camera_info'
    # the leaf's covariance: RTK + heading + canopy distance + the 1/3 m tile
    var_east, _, var_north = result.position_of(1).horizontal_covariance_m2()
    assert var_east == pytest.approx(0.02 ** 2 + (0.75 * math.radians(2.0)) ** 2
                                     + (1 / 3) ** 2 / 12, rel=0.02)
    assert var_north == pytest.approx(0.02 ** 2 + 0.1 ** 2, rel=0.02)


def test_a_stopped_robot_holds_its_last_course_then_gives_the_camera_position_flagged():
    locator = demo_locator(heading_hold_s=10.0)
    course = Course(math.pi / 2, stops_at_ns=2 * NS)  # heading north, stops at 2 s
    moving = frame(locator, 1.0, 0.0, [tile(1)], course).position_of(0)
    held = frame(locator, 6.0, 0.0, [tile(1)], course).position_of(0)
    assert held.heading_source == 'held' and held.method == PLACED_CANOPY
    np.testing.assert_allclose(local(held), [-0.75, 0.0], atol=0.02)  # left of north: west
    assert held.covariance_m2[4] > moving.covariance_m2[4]  # wider across the ray
    late = frame(locator, 12.0, 0.0, [tile(1)], course).position_of(0)
    assert late.method == PLACED_CAMERA and late.note == NOTE_NO_HEADING
    np.testing.assert_allclose(local(late), [0.0, 0.0], atol=1e-6)
    assert locator.report()['not_placed_because'] == {NOTE_NO_HEADING: 1}


def test_odometry_yaw_wins_over_the_course_and_a_reversing_robot_keeps_its_side():
    locator = demo_locator(heading_source='odometry')
    # reversing west along the row: the course says west, the robot still faces east
    locator.add_heading(int(1.0 * NS), 0.0, math.radians(0.5), 'odometry')
    position = frame(locator, 1.0, 0.0, [tile(1)], Course(math.pi)).position_of(0)
    assert position.heading_source == 'odometry'
    np.testing.assert_allclose(local(position), [0.0, 0.75], atol=0.02)


def test_without_camera_info_or_uncalibrated_the_field_of_view_stands_in():
    locator = LeafLocator(LocatorSettings(camera_hfov_deg=67.38))
    assert locator.camera_source == 'hfov (no camera_info)'
    position = frame(locator, 1.0, 0.0, [tile(2)], Course()).position_of(0)
    np.testing.assert_allclose(local(position), [1 / 3, 0.75], atol=0.02)
    locator.set_camera_info([0.0] * 9, [], '', [0.0] * 9, [0.0] * 12, 768, 256)
    assert locator.camera_source.startswith('hfov (camera_info uncalibrated')
    # a camera_info of another image size places nothing: the camera position, flagged
    locator.set_camera_info(DEMO_K, [0.0] * 5, 'plumb_bob', [0.0] * 9, [0.0] * 12, 1280, 720)
    flagged = frame(locator, 2.0, 0.0, [tile(2)], Course()).position_of(0)
    assert flagged.method == PLACED_CAMERA and '1280x720' in flagged.note


def test_an_aligned_depth_image_gives_the_distance_per_tile():
    locator = demo_locator(depth_enabled=True)
    depth = np.zeros((256, 768), dtype=np.float32)
    depth[:, 256:512] = 1.5  # the middle tile's leaf is 1.5 m away; the others: no depth
    locator.add_depth(int(1.0 * NS), depth)
    result = frame(locator, 1.0, 0.0, [tile(0), tile(1)], Course())
    assert result.position_of(0).method == PLACED_CANOPY  # zero depth ignored: the plane
    middle = result.position_of(1)
    assert middle.method == PLACED_DEPTH
    np.testing.assert_allclose(local(middle), [0.0, 1.5], atol=0.02)


def test_a_camera_looking_along_the_row_needs_a_depth_image():
    with pytest.raises(ConfigError, match='mount_yaw_deg'):
        LeafLocator(LocatorSettings(mount_yaw_deg=0.0))
    LeafLocator(LocatorSettings(mount_yaw_deg=0.0, depth_enabled=True))


def test_the_same_leaf_seen_from_two_frames_is_one_spot_and_two_leaves_of_one_frame_are_two():
    locator = demo_locator()
    tracker = EvidenceTracker(2, 3, 1.0, 2.45)
    merger = FindingMerger(1.5, 2.45)
    course = Course(0.0)
    # frame 1 at 0 m: leaves at 0 m (tile 1) and +1/3 m (tile 2) are esca
    first = frame(locator, 0.0, 0.0, [tile(0, 'healthy', False), tile(1), tile(2)], course)
    # frame 2, 1/3 m later: the leaf at +1/3 m is now in tile 1
    second = frame(locator, 1 / 3, 1 / 3, [tile(0, 'healthy', False), tile(1),
                                           tile(2, 'healthy', False)], course)
    assert tracker.update(first) == frozenset()  # two leaves of one frame: no evidence
    assert tracker.update(second) == frozenset({1})  # the +1/3 m leaf, second frame
    for result in (first, second):
        for index, detection in enumerate(result.detections):
            if detection.is_finding:
                merger.add(sighting_at(detection.label, detection.score,
                                       result.position_of(index), result.stamp_ns))
    features = merger.features()
    assert sorted(f.count for f in features) == [1, 2]  # two leaves, one seen twice


def test_two_different_leaves_on_consecutive_frames_do_not_confirm_each_other():
    locator = demo_locator()
    tracker = EvidenceTracker(2, 3, 1.0, 2.45)
    course = Course(0.0)
    first = frame(locator, 0.0, 0.0, [tile(0)], course)  # the leaf at -1/3 m
    second = frame(locator, 0.25, 0.25, [tile(2)], course)  # the leaf at +0.58 m
    tracker.update(first)
    assert tracker.update(second) == frozenset()  # the frames rule alone would confirm it
    legacy = EvidenceTracker(2, 3, 1.0)
    legacy.update(FrameResult(0, 256, 768, first.detections, 1, 0, first.geotag, {}))
    assert legacy.update(FrameResult(int(0.25 * NS), 256, 768, second.detections, 1, 0,
                                     second.geotag, {})) == frozenset({0})


def test_camera_info_pairs_with_the_image_topic_as_image_transport_does():
    assert camera_info_topic('/camera/color/image_raw') == '/camera/color/camera_info'
    assert camera_info_topic('/camera/image_raw/compressed') == '/camera/camera_info'
    assert camera_info_topic('/image') == '/camera_info'
