"""
"Drove past" by the camera footprint (issue 21): geometry, pose recording, the season rule.

No Ray and no bag: the footprint is checked against the locator that places findings,
the pose recorder against synthetic frame positions, and the season map
(:func:`build_season`) on synthetic ``pass.json`` documents: a pass whose camera looks
left (west, driving north) across to a canopy 2 m away, and a pass of the same path
without camera geometry.
"""

import json
import math
import os

import numpy as np
import pytest

from bag_builder import NS
from leaf_disease_ros.geo import footprint as footprint_module
from leaf_disease_ros.geo.camera_geometry import camera_model_from_hfov, mount_from_angles
from leaf_disease_ros.geo.footprint import (footprint_polygon_m, near_track,
                                            SweptFootprints)
from leaf_disease_ros.geo.leaf_position import LeafLocator, LocatorSettings
from leaf_disease_ros.replay.season import plan
from leaf_disease_ros.replay.season_footprint import (footprint_document, MAX_POSES,
                                                      NOTE_OLD_RESULT, PoseRecorder)
from leaf_disease_ros.replay.season_html import build_season_html
from leaf_disease_ros.replay.season_map import build_season, write_season_files
from leaf_disease_ros.replay.season_store import (bag_content_key, run_key, SeasonBag)
from leaf_disease_ros.replay.season_task import BagJob, PASS_FILE, STATUS_DONE
from season_passes import CANOPY_M, en, ll, pass_document

PAST_RADIUS_M = 1.5


# --- geometry ------------------------------------------------------------------------------


def test_the_footprint_holds_every_leaf_the_locator_places_and_lies_on_its_side():
    from test_leaf_position import Course, demo_locator, frame, tile
    locator = demo_locator()
    course = Course(heading_rad=0.0)  # driving east: the camera (yaw +90) looks north
    result = frame(locator, 1.0, 0.0, [tile(0), tile(1), tile(2)], course)
    model, why = locator.camera_model((256, 768))
    assert why == '' and model is not None
    polygon = footprint_polygon_m(model, locator.mount, 0.75, 0.2)
    origin = en(result.geotag.geotag.latitude_deg, result.geotag.geotag.longitude_deg)
    swept = SweptFootprints(polygon, np.array([[origin[0], origin[1], 0.0]]))
    leaves = np.array([en(p.latitude_deg, p.longitude_deg) for p in result.positions])
    assert np.all(swept.covers(leaves, 0.0))  # every placed leaf is in its frame's footprint
    mirrored = leaves.copy()
    mirrored[:, 1] = 2 * origin[1] - mirrored[:, 1]  # the same leaves on the other side
    assert not np.any(swept.covers(mirrored, 0.0))
    assert not np.any(swept.covers(leaves + [0.0, 1.0], 0.0))  # beyond the canopy band


def test_a_camera_that_never_meets_the_canopy_has_no_footprint():
    model = camera_model_from_hfov(640, 480, 15.0)
    along_the_row = mount_from_angles(0.0, 0.0, 1.0)  # every border ray grazes the canopy
    assert footprint_polygon_m(model, along_the_row, 0.75, 0.2) is None
    assert footprint_polygon_m(model, mount_from_angles(90.0, 0.0, 1.0), 0.75, 0.2) is not None


def _naive_covers(polygon, poses, points, tolerance):
    out = []
    edges = list(zip(polygon, np.roll(polygon, -1, axis=0)))
    for px, py in points:
        hit = False
        for east, north, heading in poses:
            dx, dy = px - east, py - north
            x = math.cos(heading) * dx + math.sin(heading) * dy
            y = -math.sin(heading) * dx + math.cos(heading) * dy
            inside = all((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]) >= 0
                         for a, b in edges)
            nearest = min(_segment_distance(x, y, a, b) for a, b in edges)
            hit = hit or inside or nearest <= tolerance
        out.append(hit)
    return np.array(out)


def _segment_distance(x, y, a, b):
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = max(0.0, min(1.0, ((x - a[0]) * dx + (y - a[1]) * dy) / (dx * dx + dy * dy)))
    return math.hypot(x - a[0] - t * dx, y - a[1] - t * dy)


@pytest.mark.parametrize('tolerance', [0.0, 0.4])
def test_chunked_covers_agrees_with_the_plain_definition(monkeypatch, tolerance):
    monkeypatch.setattr(footprint_module, 'POSE_CHUNK', 3)  # many chunks, many prefilters
    monkeypatch.setattr(footprint_module, 'POINT_CHUNK', 7)
    rng = np.random.default_rng(4)
    polygon = footprint_polygon_m(camera_model_from_hfov(640, 480, 70.0),
                                  mount_from_angles(-90.0, -10.0, 1.2), 1.0, 0.2)
    poses = np.column_stack([rng.uniform(-5, 5, 20), rng.uniform(-5, 5, 20),
                             rng.uniform(-math.pi, math.pi, 20)])
    points = rng.uniform(-7, 7, (300, 2))
    got = SweptFootprints(polygon, poses).covers(points, tolerance)
    assert got.any() and not got.all()
    assert np.array_equal(got, _naive_covers(polygon, poses, points, tolerance))


def test_near_track_is_the_distance_to_the_polyline(monkeypatch):
    monkeypatch.setattr(footprint_module, 'POSE_CHUNK', 2)
    track = [np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 10.0]]), np.array([[30.0, 30.0]])]
    points = np.array([[1.4, 5.0], [1.6, 5.0], [5.0, 11.4], [5.0, 11.6], [31.0, 31.0],
                       [32.0, 30.0], [-1.0, -1.0]])
    assert near_track(points, track, 1.5).tolist() == [True, False, True, False, True, False,
                                                       True]


# --- recording the poses -------------------------------------------------------------------


def _drive(recorder, seconds, speed_mps=0.5, fps=5, north0_m=0.0, t0_s=0.0, judged=True):
    for k in range(int(seconds * fps)):
        t = k / fps
        lat, lon = ll(0.0, north0_m + speed_mps * t)
        recorder.add(int((t0_s + t) * NS) + 1, lat, lon, judged)


def test_poses_take_the_course_of_the_frame_positions_and_hold_it_when_stopped():
    recorder = PoseRecorder(heading_window_s=2.0, min_speed_mps=0.3, heading_hold_s=3.0)
    _drive(recorder, 10.0)  # 5 m north
    _drive(recorder, 10.0, speed_mps=0.0, north0_m=5.0, t0_s=10.0)  # stopped 10 s
    recorder.finish()
    headings = [math.degrees(h) for _, _, h in recorder.judged.poses]
    assert headings and all(abs(h - 90.0) < 1e-6 for h in headings)
    # thinned: frames 0.1 m apart, one pose per 0.3 m; the stop holds the course 3 s, then none
    assert 16 <= len(recorder.judged.poses) <= 18
    assert 5 * 6 <= recorder.frames_without_heading <= 5 * 8


def test_sparse_frames_take_their_neighbours_and_poses_stay_bounded():
    recorder = PoseRecorder(heading_window_s=2.0, min_speed_mps=0.3, heading_hold_s=0.0)
    _drive(recorder, 30.0, speed_mps=1.0, fps=0.25)  # a frame every 4 s
    recorder.finish()
    assert len(recorder.judged.poses) == 7 and recorder.frames_without_heading == 0
    many = PoseRecorder(heading_window_s=2.0, min_speed_mps=0.3, heading_hold_s=0.0)
    _drive(many, MAX_POSES * 0.3, speed_mps=1.0, fps=4)
    many.finish()
    assert MAX_POSES // 2 <= len(many.judged.poses) <= MAX_POSES


def test_footprint_document_says_why_a_pass_has_no_geometry():
    from test_leaf_position import demo_locator
    recorder = PoseRecorder(2.0, 0.3, 10.0)
    _drive(recorder, 4.0)
    recorder.finish()
    document, why = footprint_document(demo_locator(), (256, 768), recorder)
    assert why == '' and document['camera'] == 'camera_info'
    assert len(document['polygon_robot_m']) >= 3 and document['judged_poses']
    assert footprint_document(None, (256, 768), recorder) == (
        None, 'ground_positions is false: no camera geometry')
    none, why = footprint_document(demo_locator(), (480, 640), recorder)
    assert none is None and 'camera_info describes a 768x256 image' in why
    waiting = LeafLocator(LocatorSettings(mount_from_tf=True))
    assert footprint_document(waiting, (256, 768), recorder)[0] is None
    fallback, why = footprint_document(LeafLocator(LocatorSettings()), (480, 640), recorder)
    assert why == '' and fallback['camera'].startswith('hfov')


# --- the season rule -----------------------------------------------------------------------


ACROSS = ll(-CANOPY_M, 10.0)  # on the canopy the camera looks at, 2 m west of the path
BEHIND = ll(1.0, 12.0)  # 1 m east: within the radius, on the side the camera never sees


class _States(dict):
    """Per-pass states of the season's features, looked up by the nearest feature."""

    def __init__(self, season):
        super().__init__()
        self.season = season

    def __getitem__(self, position):
        feature = min(self.season.features, key=lambda f: math.dist(
            en(f.latitude_deg, f.longitude_deg), en(*position)))
        assert math.dist(en(feature.latitude_deg, feature.longitude_deg), en(*position)) < 0.01
        return {p['bag_id']: ('seen' if p['bag_id'] in feature.seen else 'missed'
                              if p['bag_id'] in feature.missed else 'not_covered')
                for p in self.season.passes}


def _states(season):
    return _States(season)


def test_a_spot_in_the_footprint_beyond_the_radius_is_missed_and_one_behind_is_not():
    first = pass_document('first', 1, features=[ACROSS, BEHIND])
    with_camera = pass_document('camera', 2)
    without = pass_document('radius', 3, geometry=False)
    season = build_season([first, with_camera, without], 1.0, PAST_RADIUS_M)
    states = _states(season)
    assert states[ACROSS] == {'first': 'seen', 'camera': 'missed', 'radius': 'not_covered'}
    assert states[BEHIND] == {'first': 'seen', 'camera': 'not_covered', 'radius': 'missed'}
    assert season.drove_past('camera') == {'rule': 'footprint', 'tolerance_m': 0.5,
                                           'camera': 'hfov (no camera_info)',
                                           'frames_without_heading': 0}
    assert season.drove_past('radius') == {
        'rule': 'radius', 'radius_m': PAST_RADIUS_M,
        'why': 'ground_positions is false: no camera geometry'}


def test_the_tolerance_widens_the_footprint_and_held_frames_do_not_count():
    near = ll(-CANOPY_M - 0.6, 10.0)  # 0.4 m beyond the canopy band
    first = pass_document('first', 1, features=[near, ll(-CANOPY_M, 18.0)])
    held_late = pass_document('held', 2, held_from_m=15.0)  # out of domain from 15 m
    tight = _states(build_season([first, held_late], 1.0, PAST_RADIUS_M, 0.2))
    loose = _states(build_season([first, held_late], 1.0, PAST_RADIUS_M, 0.5))
    assert tight[near]['held'] == 'not_covered' and loose[near]['held'] == 'missed'
    assert loose[ll(-CANOPY_M, 18.0)]['held'] == 'not_covered'


def test_results_of_the_previous_version_are_kept_and_read_with_the_radius(tmp_path):
    old = pass_document('old', 2, old=True)
    season = build_season([pass_document('first', 1, features=[ACROSS, BEHIND]), old], 1.0,
                          PAST_RADIUS_M)
    assert _states(season)[BEHIND]['old'] == 'missed'
    assert _states(season)[ACROSS]['old'] == 'not_covered'
    assert season.drove_past('old') == {'rule': 'radius', 'radius_m': PAST_RADIUS_M,
                                        'why': NOTE_OLD_RESULT}
    # the rerun keeps the old result (same run key): it is not replayed
    bag_file = tmp_path / 'row.mcap'
    bag_file.write_bytes(b'\x89MCAP0\r\n' + bytes(range(256)) * 8)
    bag = SeasonBag(str(bag_file), 'row-1', 'robotA', 'in')
    key = run_key(bag_content_key(bag.path), {'model': 'm'}, {'p': 1}, '1.0', 'robotA')
    os.makedirs(tmp_path / 'bags' / 'row-1')
    old.update(bag_id='row-1', key=key, status=STATUS_DONE)
    (tmp_path / 'bags' / 'row-1' / PASS_FILE).write_text(json.dumps(old))
    jobs, current = plan([bag], str(tmp_path / 'bags'), {'model': 'm'}, {'p': 1}, '1.0',
                         lambda b, k: BagJob(b, str(tmp_path / 'bags'), k, {}))
    assert jobs == [] and list(current) == ['row-1']


def test_the_rule_of_each_pass_is_in_the_files_and_the_page(tmp_path):
    passes = [pass_document('first', 1, features=[ACROSS]), pass_document('camera', 2),
              pass_document('radius', 3, geometry=False)]
    season = build_season(passes, 1.0, PAST_RADIUS_M)
    write_season_files(season, str(tmp_path))
    coverage = json.loads((tmp_path / 'coverage.json').read_text())
    assert coverage['camera']['drove_past']['rule'] == 'footprint'
    assert coverage['radius']['drove_past']['rule'] == 'radius'
    assert not {'footprint', 'judged_track', 'held_track'} & set(coverage['camera'])
    geo = json.loads((tmp_path / 'season.geojson').read_text())
    rules = {p['pass']: p['drove_past']['rule'] for p in geo['leaf_disease_ros']['passes']}
    assert rules == {'first': 'footprint', 'camera': 'footprint', 'radius': 'radius'}
    (feature,) = geo['features']
    assert feature['properties']['passes_missed'] == ['camera']
    page = build_season_html(season, {'counts': {}, 'failed': []})
    assert page.count('data-rule="footprint"') == 2 and page.count('data-rule="radius"') == 1
    assert '2 by the footprint, 1 by the radius' in page
