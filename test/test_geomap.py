"""The map: the merge rule of repeated sightings, the track, the GeoJSON/KML/PNG writers."""

import json
import math
import xml.etree.ElementTree as ElementTree

import cv2
import numpy as np
import pytest

from leaf_disease_ros.geo import mapping as geomap
from leaf_disease_ros.geo.geodesy import distance_m, offset_latlon
from leaf_disease_ros.geo.mapping import FindingMerger, merge_sightings, Sighting, TrackRecorder

LAT0, LON0 = 44.8931, -0.1542
NS = 1_000_000_000
KML = '{http://www.opengis.net/kml/2.2}'


def at(east_m, north_m, label='black_rot', t_s=0.0, score=0.9):
    """Return a sighting ``east_m``/``north_m`` from the reference point."""
    lat, lon = offset_latlon(LAT0, LON0, east_m, north_m)
    return Sighting(label, score, lat, lon, int(t_s * NS))


def test_sightings_closer_than_the_radius_merge():
    features = merge_sightings([at(0, 0, t_s=1, score=0.6), at(1.0, 0, t_s=2, score=0.9)],
                               1.5)
    assert len(features) == 1
    feature = features[0]
    assert feature.count == 2
    assert feature.score_max == pytest.approx(0.9)
    assert feature.score_mean == pytest.approx(0.75)
    assert (feature.first_stamp_ns, feature.last_stamp_ns) == (NS, 2 * NS)
    middle = offset_latlon(LAT0, LON0, 0.5, 0.0)
    assert distance_m(feature.latitude_deg, feature.longitude_deg, *middle) < 1e-3


def test_sightings_at_or_beyond_the_radius_do_not_merge():
    assert len(merge_sightings([at(0, 0), at(1.4999, 0)], 1.5)) == 1
    assert len(merge_sightings([at(0, 0), at(1.5001, 0)], 1.5)) == 2
    assert len(merge_sightings([at(0, 0), at(0, -2.0)], 1.5)) == 2


def test_labels_never_merge_and_zero_radius_merges_nothing():
    features = merge_sightings([at(0, 0, 'black_rot'), at(0.1, 0, 'esca')], 1.5)
    assert sorted(f.label for f in features) == ['black_rot', 'esca']
    assert len(merge_sightings([at(0, 0), at(0.01, 0)], 0.0)) == 2


def test_a_sighting_joins_the_nearest_feature():
    merger = FindingMerger(1.5)
    merger.add(at(0, 0, t_s=0))
    merger.add(at(2.0, 0, t_s=1))  # a second feature
    merger.add(at(1.2, 0, t_s=2))  # 1.2 m from the first, 0.8 m from the second
    counts = [f.count for f in merger.features()]
    assert counts == [1, 2]


def test_greedy_merging_in_time_order():
    # 0.9 m steps: centres 0 -> 0.45 -> 0.9 take three sightings; 2.7 m is 1.8 m away
    # from 0.9, so it starts a second spot that takes the next three.
    merger = FindingMerger(1.5)
    for step in range(6):
        merger.add(at(step * 0.9, 0, t_s=step))
    assert [f.count for f in merger.features()] == [3, 3]


def test_merging_follows_the_moving_centre_across_grid_cells():
    # The centre moves from cell 0 (1.4 m) to cell 1 (2.67 m, cells are 1.5 m); a
    # sighting at 4.0 m (cell 2) is 1.33 m from it and must still find it.
    merger = FindingMerger(1.5)
    merger.add(at(1.4, 0, t_s=0))
    for k in range(10):
        merger.add(at(2.8, 0, t_s=1 + k))
    merger.add(at(4.0, 0, t_s=20))
    features = merger.features()
    assert [f.count for f in features] == [12]


def test_repeated_sightings_of_one_spot_stay_one_feature():
    merger = FindingMerger(1.5)
    rng = np.random.default_rng(0)
    for k in range(2000):
        east, north = rng.normal(0.0, 0.2, 2)
        merger.add(at(east, north, t_s=k))
    features = merger.features()
    assert len(features) == 1 and features[0].count == 2000
    assert merger.sightings == 2000


def test_track_is_bounded_and_split_at_outages():
    track = TrackRecorder(min_step_m=0.1, max_points=50)
    for k in range(1000):
        track.add(*offset_latlon(LAT0, LON0, 0.2 * k, 0.0))
    assert len(track) <= 50
    track.break_segment()
    track.add(*offset_latlon(LAT0, LON0, 300.0, 0.0))  # 100 m on: no line across the gap
    segments = track.segments()
    assert len(segments) == 2 and len(segments[1]) == 1
    fresh = TrackRecorder(min_step_m=0.5)
    for k in range(10):
        fresh.add(*offset_latlon(LAT0, LON0, 0.3 * k, 0.0))
    assert len(fresh) == 5  # every second 0.3 m step reaches 0.5 m
    still = TrackRecorder(min_step_m=0.5)
    for _ in range(100):
        still.add(LAT0, LON0)
    assert len(still) == 1


def test_track_splits_at_a_gps_silence():
    # Case 7 of issue 11: 60 s without any fix drew one line across the silence.
    track = TrackRecorder(max_gap_s=1.0)
    for k in range(5):
        track.add(*offset_latlon(LAT0, LON0, 1.0 * k, 0.0), stamp_ns=k * NS)
    for k in range(5):  # 60 s later, 60 m on
        track.add(*offset_latlon(LAT0, LON0, 64.0 + k, 0.0), stamp_ns=(64 + k) * NS)
    assert [len(segment) for segment in track.segments()] == [5, 5]
    steady = TrackRecorder(max_gap_s=1.0)
    for k in range(10):  # exactly max_gap_s apart: one line
        steady.add(*offset_latlon(LAT0, LON0, 1.0 * k, 0.0), stamp_ns=k * NS)
    assert len(steady.segments()) == 1


def _features():
    return merge_sightings([at(0, 0, 'black_rot', 1), at(0.5, 0, 'black_rot', 3),
                            at(10, 5, 'esca', 5, 0.7)], 1.5)


def test_geojson_is_rfc7946_with_lon_lat_order(tmp_path):
    path = tmp_path / 'findings.geojson'
    geomap.write_geojson(str(path), _features(), {'model': 'tiny'})
    document = json.loads(path.read_text())
    assert document['type'] == 'FeatureCollection'
    assert 'crs' not in document  # RFC 7946: WGS84 only, no crs member
    first = document['features'][0]
    assert first['type'] == 'Feature' and first['geometry']['type'] == 'Point'
    lon, lat = first['geometry']['coordinates']
    assert lon == pytest.approx(LON0, abs=1e-4) and lat == pytest.approx(LAT0, abs=1e-4)
    props = first['properties']
    assert props['label'] == 'black_rot' and props['count'] == 2
    assert props['first_seen'] == '1970-01-01T00:00:01.000Z'
    assert props['last_seen'] == '1970-01-01T00:00:03.000Z'
    assert document['features'][1]['properties']['label'] == 'esca'


def test_kml_is_kml22_with_placemarks_and_track(tmp_path):
    path = tmp_path / 'findings.kml'
    track = [[offset_latlon(LAT0, LON0, e, 0.0) for e in range(5)]]
    geomap.write_kml(str(path), _features(), track)
    root = ElementTree.parse(str(path)).getroot()
    assert root.tag == f'{KML}kml'
    placemarks = root.findall(f'.//{KML}Folder/{KML}Placemark')
    points = [p for p in placemarks if p.find(f'{KML}Point') is not None]
    assert len(points) == 2
    lon, lat, alt = points[0].find(f'{KML}Point/{KML}coordinates').text.split(',')
    assert float(lon) == pytest.approx(LON0, abs=1e-4)
    assert float(lat) == pytest.approx(LAT0, abs=1e-4)
    span = points[0].find(f'{KML}TimeSpan')
    assert span.find(f'{KML}begin').text <= span.find(f'{KML}end').text
    assert points[0].find(f'{KML}styleUrl').text == '#finding_black_rot'
    lines = root.findall(f'.//{KML}LineString')
    assert len(lines) == 1 and len(lines[0].find(f'{KML}coordinates').text.split()) == 5


def test_kml_escapes_text():
    feature = geomap.MapFeature('a<b&c', LAT0, LON0, 1, 0.5, 0.5, 0, 0)
    root = ElementTree.fromstring(geomap.kml_document([feature]))
    assert root.find(f'.//{KML}Placemark/{KML}name').text == 'A<b&c x1'


def test_people_read_display_names_and_machines_the_label(tmp_path):
    names = {'black_rot': 'Black rot (Guignardia)'}
    document = geomap.geojson_document(_features(), display_names=names)
    shown = [(f['properties']['label'], f['properties']['display_name'])
             for f in document['features']]
    assert shown == [('black_rot', 'Black rot (Guignardia)'), ('esca', 'Esca')]
    root = ElementTree.fromstring(geomap.kml_document(_features(), display_names=names))
    assert [f.find(f'{KML}name').text for f in root.findall(f'.//{KML}Folder')] == [
        'Black rot (Guignardia)', 'Esca']
    assert root.find(f'.//{KML}Placemark/{KML}name').text == 'Black rot (Guignardia) x2'
    assert root.find(f'.//{KML}Placemark/{KML}styleUrl').text == '#finding_black_rot'


def test_map_png_says_names_origin_north_and_scale(monkeypatch):
    texts = []
    draw = geomap.cv2.putText

    def recording(image, text, *args, **kwargs):
        texts.append(text)
        return draw(image, text, *args, **kwargs)
    monkeypatch.setattr(geomap.cv2, 'putText', recording)
    geomap.render_map(_features(), [], ('black_rot', 'esca'),
                      display_names={'black_rot': 'Black rot'})
    assert 'Black rot' in texts and 'Esca' in texts and 'black_rot' not in ' '.join(texts)
    # the origin is named as latitude / longitude, north and the grid step are given
    assert texts.count('origin (0, 0 m):') == 1
    origin = texts[texts.index('origin (0, 0 m):') + 1:][:2]
    assert [t.split()[0] for t in origin] == ['latitude', 'longitude']
    assert float(origin[0].split()[1]) == pytest.approx(LAT0, abs=1e-5)
    assert float(origin[1].split()[1]) == pytest.approx(LON0, abs=1e-5)
    assert 'N' in texts and any(t.startswith('grid: ') and t.endswith(' m') for t in texts)


def test_map_png_draws_findings_in_their_colour(tmp_path):
    features = _features()
    track = [[offset_latlon(LAT0, LON0, e, 0.0) for e in range(12)]]
    image = geomap.render_map(features, track, ('black_rot', 'esca', 'healthy'))
    assert image.dtype == np.uint8 and image.ndim == 3
    for label in ('black_rot', 'esca'):
        colour = np.array(geomap.label_colour_bgr(label))
        assert np.any(np.all(image == colour, axis=2)), label
    path = tmp_path / 'map.png'
    geomap.write_map_png(str(path), features, track)
    assert cv2.imread(str(path)) is not None
    empty = geomap.render_map([], [])
    assert empty.shape[0] > 0 and not math.isnan(float(empty.mean()))
