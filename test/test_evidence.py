"""
Track-level evidence (geo/evidence.py): one bad frame never sends the robot anywhere.

Unit tests drive :class:`EvidenceTracker` with hand-made frame results; the replay
test runs a bag through a scripted backend (the tile's colour decides its label), so
the expected confirmed and unconfirmed findings are known exactly.
"""

import json
import os
from typing import List, Optional, Sequence, Tuple

import pytest

from bag_builder import Frame, GpsFix, NS, write_bag
from leaf_disease_ros.geo.evidence import EvidenceTracker
from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.geo.mapping import FindingMerger, geojson_document, Sighting
from leaf_disease_ros.perception.config import validate_parameters
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.perception.pipeline import Detection, FrameResult
from leaf_disease_ros.perception.positions import (GeoTag, GeotagResult, REASON_INTERPOLATED,
                                                   REASON_NO_FIX_RECEIVED, STATUS_GBAS_FIX)
from leaf_disease_ros.replay.report import write_report
from leaf_disease_ros.replay.runner import ReplayOptions, run_replay
from leaf_disease_ros.replay.typestore import make_typestore
from leaf_disease_ros.ros import conversions as conv
from scripted_backend import colour_card, ColourBackend, tiles

LAT0, LON0 = 46.0, 7.0


def detection(label: str, score: float = 0.99, finding: bool = True, column: int = 0
              ) -> Detection:
    """Return one classified tile (a finding unless told otherwise)."""
    box = (256 * column, 0, 256 * (column + 1), 256)
    return Detection(box, label, 0, score, ((label, score),), label == 'unknown',
                     finding, finding, 1.0)


def frame(t_s: float, labels: Sequence[str] = (), east_m: Optional[float] = None,
          findings: bool = True) -> FrameResult:
    """Return a frame at ``t_s`` with one tile per label, at ``east_m`` (None: no fix)."""
    if east_m is None:
        geotag = GeotagResult(None, REASON_NO_FIX_RECEIVED)
    else:
        lat, lon = offset_latlon(LAT0, LON0, east_m, 0.0)
        tag = GeoTag(int(t_s * NS), lat, lon, 30.0, STATUS_GBAS_FIX, 1, (0.0,) * 9, 0,
                     REASON_INTERPOLATED, 0.0)
        geotag = GeotagResult(tag, REASON_INTERPOLATED)
    detections = tuple(detection(label, finding=findings and label not in ('healthy',
                                                                           'unknown'),
                                 column=i) for i, label in enumerate(labels))
    return FrameResult(int(t_s * NS), 256, 256 * max(1, len(labels)), detections,
                       len(detections), 0, geotag, {})


def run(tracker: EvidenceTracker, frames: Sequence[FrameResult]) -> List[List[int]]:
    """Return, frame by frame, the sorted confirmed detection indices."""
    return [sorted(tracker.update(f)) for f in frames]


def test_a_single_bad_frame_never_confirms():
    # one frame full of confident disease tiles amid healthy frames, with and without GPS
    for east in (None, 0.0):
        tracker = EvidenceTracker(2, 3, 1.0)
        frames = [frame(0.25 * i, ['healthy'] * 3, east) for i in range(10)]
        frames[5] = frame(1.25, ['esca'] * 6, east)
        assert run(tracker, frames) == [[]] * 10
        assert tracker.findings == 6 and tracker.confirmed_findings == 0


def test_a_single_bad_frame_never_confirms_whatever_the_parameters():
    for k in (2, 3, 5):
        for n in (k, 2 * k, 10):
            for radius in (0.0, 1.0, 50.0):
                tracker = EvidenceTracker(k, n, radius)
                frames = [frame(0.1 * i, ['healthy'], 0.01 * i) for i in range(20)]
                frames[7] = frame(0.7, ['black_rot'] * 8 + ['esca'] * 8, 0.07)
                assert not any(run(tracker, frames)), (k, n, radius)


def test_two_of_three_frames_confirm_from_the_second_sighting():
    tracker = EvidenceTracker(2, 3, 0.0)  # frames rule only
    frames = [frame(0.0, ['esca', 'healthy']), frame(0.25, ['healthy', 'healthy']),
              frame(0.5, ['healthy', 'esca']), frame(0.75, ['esca', 'esca']),
              frame(1.0, ['healthy'])]
    # 1st sighting: alone; 2nd (2 of the last 3 frames): confirmed; 3rd: confirmed
    assert run(tracker, frames) == [[], [], [1], [0, 1], []]


def test_sightings_further_apart_than_the_window_do_not_confirm_without_a_place():
    tracker = EvidenceTracker(2, 3, 1.0)
    frames = [frame(0.0, ['esca']), frame(0.25, []), frame(0.5, []), frame(0.75, ['esca'])]
    assert run(tracker, frames) == [[], [], [], []]


def test_a_spot_seen_again_on_a_later_pass_is_confirmed_by_place():
    tracker = EvidenceTracker(2, 3, 1.0)
    first = [frame(0.0, ['esca'], 10.0)]
    first += [frame(0.25 * i, [], 10.0 + 0.25 * i) for i in range(1, 8)]
    back = [frame(30.0, ['esca'], 10.6)]  # 0.6 m from the first sighting, 30 s later
    between = [frame(30.0 + 0.25 * i, [], 10.6 + 0.25 * i) for i in range(1, 4)]
    elsewhere = [frame(40.0, ['esca'], 25.0), frame(40.25, [], 25.25),
                 frame(40.5, [], 25.5), frame(40.75, ['esca'], 28.0)]
    result = run(tracker, first + back + between + elsewhere)
    assert result[0] == [] and result[8] == [0]  # the return pass confirms the spot
    assert result[12:] == [[], [], [], []]  # a new spot 14 m away, then one 3 m further


def test_labels_are_counted_apart():
    tracker = EvidenceTracker(2, 3, 1.0)
    frames = [frame(0.0, ['esca'], 0.0), frame(0.25, ['black_rot'], 0.25),
              frame(0.5, ['leaf_blight'], 0.5)]
    assert run(tracker, frames) == [[], [], []]


def test_non_findings_are_never_confirmed():
    tracker = EvidenceTracker(1, 1, 1.0)
    frames = [frame(0.0, ['healthy', 'unknown', 'esca']),
              frame(0.25, ['esca'], findings=False)]  # a disease below the threshold
    assert run(tracker, frames) == [[2], []]


def test_one_sighting_lets_every_finding_through():
    tracker = EvidenceTracker(1, 1, 0.0)
    assert run(tracker, [frame(0.0, ['esca', 'black_rot'])]) == [[0, 1]]


def test_stamps_going_back_reset_the_evidence():
    tracker = EvidenceTracker(2, 3, 1.0)
    frames = [frame(100.0, ['esca'], 0.0), frame(0.0, ['esca'], 0.0),
              frame(0.25, ['esca'], 0.1)]
    assert run(tracker, frames) == [[], [], [0]]
    assert tracker.resets == 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        EvidenceTracker(0, 3, 1.0)
    with pytest.raises(ValueError):
        EvidenceTracker(4, 3, 1.0)
    with pytest.raises(ValueError):
        EvidenceTracker(2, 3, -1.0)
    with pytest.raises(ConfigError) as info:
        validate_parameters({'evidence_min_sightings': 5, 'evidence_window_frames': 4})
    assert info.value.parameter == 'evidence_min_sightings'
    assert validate_parameters({})['evidence_min_sightings'] == 2


def test_the_merger_says_which_feature_a_sighting_joined_and_counts_confirmed():
    merger = FindingMerger(1.5)
    lat, lon = offset_latlon(LAT0, LON0, 0.5, 0.0)
    far_lat, far_lon = offset_latlon(LAT0, LON0, 10.0, 0.0)
    assert merger.add(Sighting('esca', 0.9, LAT0, LON0, 0)) == 0
    assert merger.add(Sighting('esca', 0.9, far_lat, far_lon, 1)) == 1
    assert merger.add(Sighting('esca', 0.9, lat, lon, 2, confirmed=True)) == 0
    assert merger.add(Sighting('black_rot', 0.9, lat, lon, 3)) == 2
    features = merger.features()
    assert [f.confirmed_sightings for f in features] == [1, 0, 0]
    assert [f.confirmed for f in features] == [True, False, False]
    props = [f['properties'] for f in geojson_document(features)['features']]
    assert [p['confirmed'] for p in props] == [True, False, False]


def test_geo_detections_carry_only_the_confirmed_findings():
    store = make_typestore()
    types = conv.MessageTypes.from_typestore(store)
    result = frame(1.0, ['esca', 'healthy', 'black_rot'], 0.0)
    header = conv.make_header(result.stamp_ns, 'camera', types)
    every = conv.to_detection3d_array(result, header, 'utm', types)
    assert len(every.detections) == 2
    only = conv.to_detection3d_array(result, header, 'utm', types, frozenset({2}))
    assert [d.results[0].hypothesis.class_id for d in only.detections] == ['black_rot']
    none = conv.to_detection3d_array(result, header, 'utm', types, frozenset())
    assert none.detections == []


# --- the replay -------------------------------------------------------------------

def colour_bag(path: str, frames: Sequence[Tuple[float, Sequence[str]]],
               speed_mps: float = 1.0) -> str:
    """Write a PNG bag of the frames, with RTK fixes every 0.2 s along a line east."""
    end_s = max(t for t, _ in frames) + 1.0
    fixes = []
    for k in range(int(end_s / 0.2) + 1):
        lat, lon = offset_latlon(LAT0, LON0, 0.2 * k * speed_mps, 0.0)
        fixes.append(GpsFix(int(round(0.2 * k * NS)), lat, lon, STATUS_GBAS_FIX))
    return write_bag(path, 'mcap', [Frame(int(t * NS), tiles(labels)) for t, labels in frames],
                     fixes)


def test_the_replay_marks_confirmed_and_unconfirmed_findings(tmp_path):
    # 0.25 s per frame at 1 m/s: a black rot leaf seen on one frame only (a bad frame),
    # an esca leaf on three frames in a row, 5 m further
    frames = [(0.25 * i, ['healthy', 'healthy']) for i in range(40)]
    frames[4] = (1.0, ['black_rot', 'healthy'])
    for i in (24, 25, 26):
        frames[i] = (0.25 * i, ['healthy', 'esca'])
    bag = colour_bag(str(tmp_path / 'bag'), frames)
    out = str(tmp_path / 'report')
    params = {'min_vegetation_fraction': 0.0, 'unknown_threshold': 0.0, 'domain_min_tiles': 1}
    state = run_replay(ReplayOptions(bag_path=bag, out_dir=out, parameters=params),
                       backend=ColourBackend(colour_card(str(tmp_path))))
    metrics = write_report(state, out)
    findings = metrics['findings']
    assert findings['sightings'] == 4
    assert findings['confirmed'] == 2  # esca from its second frame on
    assert findings['unconfirmed'] == 2  # the black rot frame, the first esca frame
    assert findings['features'] == 2
    assert findings['features_confirmed_by_label'] == {'esca': 1}
    assert findings['features_unconfirmed'] == 1
    with open(os.path.join(out, 'findings.geojson'), encoding='utf-8') as stream:
        document = json.load(stream)
    confirmed = {f['properties']['label']: f['properties']['confirmed']
                 for f in document['features']}
    assert confirmed == {'black_rot': False, 'esca': True}
    assert document['leaf_disease_ros']['evidence'] == {'min_sightings': 2,
                                                        'window_frames': 3,
                                                        'radius_m': 1.0}
    with open(os.path.join(out, 'report.md'), encoding='utf-8') as stream:
        assert 'Confirmed: 2 of 4 diseased tiles' in stream.read()
    # the output bag's geo_detections hold what the node would send: confirmed only
    from rosbags.rosbag2 import Reader
    store = make_typestore()
    sent = []
    with Reader(os.path.join(out, 'detections')) as reader:
        connections = [c for c in reader.connections if c.topic.endswith('geo_detections')]
        for connection, _, data in reader.messages(connections=connections):
            msg = store.deserialize_cdr(data, connection.msgtype)
            sent += [d.results[0].hypothesis.class_id for d in msg.detections]
    assert sent == ['esca', 'esca']

    # no evidence required: every finding goes to navigation
    state = run_replay(ReplayOptions(bag_path=bag, out_dir=out, write_bag=False,
                                     parameters=dict(params, evidence_min_sightings=1)),
                       backend=ColourBackend(colour_card(str(tmp_path))))
    assert write_report(state, out)['findings']['unconfirmed'] == 0
