"""The node's live map: the replay's merge rule, written atomically when it changed."""

import json
import os

import pytest

from leaf_disease_ros.geo.mapping import merge_sightings
from leaf_disease_ros.perception.errors import ConfigError
from leaf_disease_ros.perception.pipeline import Detection, FrameResult
from leaf_disease_ros.perception.positions import GeoTag, GeotagResult
from leaf_disease_ros.ros.live_map import LiveMap, sightings_of

NS = 1_000_000_000


def detection(label, score, finding=True):
    """Return a Detection (only the fields the map reads matter)."""
    return Detection(box_xyxy_px=(0, 0, 10, 10), label=label, label_index=0, score=score,
                     top_k=((label, score),), is_unknown=False, is_disease=finding,
                     is_finding=finding, vegetation_fraction=1.0)


def frame(stamp_s, lat, lon, *detections):
    """Return a FrameResult at (lat, lon), or without a position when lat is None."""
    stamp_ns = int(stamp_s * NS)
    tag = None if lat is None else GeoTag(
        stamp_ns=stamp_ns, latitude_deg=lat, longitude_deg=lon, altitude_m=0.0, status=0,
        service=1, covariance_m2=(0.0,) * 9, covariance_type=0, method='test', fix_age_s=0.0)
    return FrameResult(stamp_ns=stamp_ns, frame_height_px=10, frame_width_px=10,
                       detections=tuple(detections), tiles_total=1, tiles_gated=0,
                       geotag=GeotagResult(geotag=tag, reason='test'),
                       timings_ms={'total': 1.0})


def test_sightings_are_the_findings_of_positioned_frames():
    result = frame(1, 46.0, 7.0, detection('esca', 0.9), detection('healthy', 0.8, False))
    (sighting,) = sightings_of(result)
    assert (sighting.label, sighting.score, sighting.stamp_ns) == ('esca', 0.9, NS)
    assert sightings_of(frame(2, None, None, detection('esca', 0.9))) == []


def test_merged_like_the_replay_and_written_only_when_changed(tmp_path):
    live = LiveMap(str(tmp_path / 'out'), merge_radius_m=1.5, properties={'model': 'tiny'})
    path = tmp_path / 'out' / 'findings.geojson'
    assert json.loads(path.read_text())['features'] == []
    results = [frame(1, 46.0, 7.0, detection('esca', 0.9)),
               frame(2, 46.000005, 7.0, detection('esca', 0.7)),  # 0.56 m north: merged
               frame(3, 46.0001, 7.0, detection('black_rot', 0.6)),
               frame(4, None, None, detection('esca', 0.9))]
    assert [live.add(r) for r in results] == [1, 1, 1, 0]
    assert live.write() and not live.write()  # nothing new: not rewritten
    doc = json.loads(path.read_text())
    expected = merge_sightings([s for r in results for s in sightings_of(r)], 1.5)
    assert [(f['properties']['label'], f['properties']['count']) for f in doc['features']] \
        == [(f.label, f.count) for f in expected] == [('esca', 2), ('black_rot', 1)]
    assert doc['leaf_disease_ros'] == {'model': 'tiny', 'merge_radius_m': 1.5,
                                       'sightings': 3, 'findings_without_position': 1}
    assert live.writes == 2 and live.write(force=True)
    assert [f.label for f in live.features()] == ['esca', 'black_rot']
    assert not [n for n in os.listdir(tmp_path / 'out') if n != 'findings.geojson']


def test_a_folder_that_cannot_be_made_is_a_config_error(tmp_path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ConfigError, match="'live_map_dir': cannot create"):
        LiveMap(str(tmp_path / 'file' / 'sub'), 1.5)
