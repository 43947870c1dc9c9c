"""
``--rows``: the vine-row layout file, read strictly, and the coverage of each row per pass.

No Ray and no bag: the layout is parsed from bytes and files, the coverage computed on
synthetic passes (:mod:`season_passes`: driving north, the camera looking west at a
canopy 2 m away) and written by the season's writers.
"""

import json
import os

import pytest

from leaf_disease_ros.replay.season_html import build_season_html
from leaf_disease_ros.replay.season_map import build_season, write_season_files
from leaf_disease_ros.replay.season_rows import (load_row_layout, MAX_ROWS, parse_row_layout,
                                                 row_coverage, RowLayoutError,
                                                 write_rows_file)
from season_passes import CANOPY_M, ll, pass_document


def line(row_id, *points_en, name=None, **extra):
    """Return a row feature through east / north points (metres from the origin)."""
    properties = {'row': row_id}
    if name is not None:
        properties['name'] = name
    coordinates = [[ll(e, n)[1], ll(e, n)[0]] for e, n in points_en]
    return dict({'type': 'Feature', 'properties': properties,
                 'geometry': {'type': 'LineString', 'coordinates': coordinates}}, **extra)


def layout_bytes(*features, **extra):
    """Return a FeatureCollection of the features as file bytes."""
    return json.dumps(dict({'type': 'FeatureCollection', 'features': list(features)},
                           **extra)).encode()


WEST = -CANOPY_M  # the canopy the camera looks at
ROWS = layout_bytes(
    line('A1', (WEST, 0.0), (WEST, 20.0), name='Merlot 1'),  # all along the pass
    line('A2', (WEST, 0.0), (WEST, 40.0)),  # the pass covers its first half
    line('A3', (1.0, 0.0), (1.0, 20.0)),  # 1 m east, behind the camera: driven, never seen
    line('Z9', (100.0, 0.0), (100.0, 20.0)))  # far away: never driven


def _coverage(passes, past_radius_m=1.5, tolerance_m=0.0):
    season = build_season(passes, 1.0, past_radius_m, tolerance_m)
    return season, row_coverage(season, parse_row_layout(ROWS, 'rows.geojson'))


def test_a_row_fully_driven_is_one_half_is_a_half_and_a_far_one_zero():
    season, rows = _coverage([pass_document('camera', 1)])
    figures = rows.per_pass['camera']
    assert figures['A1']['covered_fraction'] == pytest.approx(1.0, abs=0.01)
    assert figures['A1']['length_m'] == pytest.approx(20.0, abs=0.01)
    # the footprint reaches 2.2 m x tan(35 deg) = 1.5 m past the last frame (at 20 m)
    assert figures['A2']['covered_fraction'] == pytest.approx(21.5 / 40.0, abs=0.02)
    assert figures['A2']['covered_m'] == pytest.approx(21.5, abs=0.8)
    assert figures['A3']['covered_m'] == 0.0  # 1 m east: the camera looks west
    assert figures['A3']['driven_m'] == pytest.approx(20.0, abs=0.01)
    assert 'Z9' not in figures  # never near
    summary = {r['row']: r for r in rows.rows}
    assert summary['Z9']['never_covered'] and summary['A3']['never_covered']
    assert rows.never_covered == ['A3', 'Z9']
    assert summary['A1']['passes_covered'] == ['camera'] and summary['A1']['name'] == 'Merlot 1'
    assert summary['A1']['last_covered'] == {'pass': 'camera', 'start': '2024-06-01T08:00:00.000Z'}


def test_without_camera_geometry_the_radius_covers_both_sides():
    _, rows = _coverage([pass_document('radius', 1, geometry=False)], past_radius_m=2.5)
    figures = rows.per_pass['radius']
    assert figures['A1']['covered_fraction'] == pytest.approx(1.0, abs=0.01)
    assert figures['A3']['covered_fraction'] == pytest.approx(1.0, abs=0.01)
    assert figures['A2']['covered_m'] == pytest.approx(22.0, abs=0.6)  # 20 m + 2 m beyond the end
    _, tight = _coverage([pass_document('radius', 1, geometry=False)], past_radius_m=1.5)
    assert tight.never_covered == ['A1', 'A2', 'Z9']  # 2 m away, radius 1.5 m


def test_out_of_domain_and_driven_lengths_and_results_of_the_previous_version():
    _, rows = _coverage([pass_document('held', 1, held_from_m=10.0),
                         pass_document('old', 2, old=True, geometry=False)], past_radius_m=2.5)
    held = rows.per_pass['held']['A1']
    assert held['covered_m'] == pytest.approx(11.5, abs=0.6)  # to 10 m + the wedge
    assert held['out_of_domain_m'] == pytest.approx(20.0 - held['covered_m'], abs=0.01)
    assert held['driven_m'] == pytest.approx(20.0, abs=0.01)
    assert rows.per_pass['old']['A1']['out_of_domain_m'] is None  # not recorded then
    assert rows.per_pass['old']['A1']['covered_fraction'] == pytest.approx(1.0, abs=0.01)
    best = {r['row']: r['covered_fraction_best'] for r in rows.rows}
    assert best['A1'] == pytest.approx(1.0, abs=0.01)
    assert {r['row']: r['passes_covered'] for r in rows.rows}['A1'] == ['held', 'old']


def test_rows_go_to_coverage_json_rows_json_and_the_page(tmp_path):
    season, rows = _coverage([pass_document('camera', 1), pass_document('second', 2)])
    files = write_season_files(season, str(tmp_path), rows.per_pass)
    files.append(write_rows_file(rows, str(tmp_path)))
    assert 'rows.json' in files
    coverage = json.loads((tmp_path / 'coverage.json').read_text())
    assert set(coverage['camera']['rows']) == {'A1', 'A2', 'A3'}
    document = json.loads((tmp_path / 'rows.json').read_text())
    assert document['never_covered'] == ['A3', 'Z9'] and document['sample_step_m'] == 0.5
    assert [r['row'] for r in document['rows']] == ['A1', 'A2', 'A3', 'Z9']
    page = build_season_html(season, {'counts': {}, 'failed': []}, rows)
    assert '<b>2 of 4 rows were never covered</b> by any pass: A3, Z9.' in page
    assert page.count('class="row-entry never"') == 2 and page.count('class="row never"') == 2
    first_rows = page.index('<td style="text-align:left">A3</td>') < page.index(
        '<td style="text-align:left">A1</td>')
    assert first_rows  # never-covered rows first
    assert 'id="rows"' not in build_season_html(season, {'counts': {}, 'failed': []})


# --- the layout file, strictly -------------------------------------------------------------

GOOD = line('R1', (0.0, 0.0), (0.0, 10.0))
BAD_LAYOUTS = [
    ('not_json', b'{"type": "FeatureCollection", "features": [', 'is not JSON'),
    ('nan', layout_bytes(GOOD).replace(b'0.0', b'NaN', 1).replace(b'-0.15', b'NaN', 1),
     'is not JSON'),
    ('duplicate_key', b'{"type": "FeatureCollection", "type": "Feature", "features": []}',
     "the key 'type' appears twice"),
    ('not_a_collection', json.dumps(GOOD).encode(),
     "is a 'Feature', not a GeoJSON FeatureCollection"),
    ('a_list', b'[1, 2]', "is a 'list', not a GeoJSON FeatureCollection"),
    ('empty', layout_bytes(), 'has no features (an empty FeatureCollection)'),
    ('point', layout_bytes(dict(GOOD, geometry={'type': 'Point', 'coordinates': [-0.15, 44.9]})),
     "feature 0 (row 'R1') is a 'Point' geometry, not a LineString"),
    ('multi', layout_bytes(dict(GOOD, geometry={'type': 'MultiLineString', 'coordinates': []})),
     'split a MultiLineString'),
    ('one_position', layout_bytes(dict(GOOD, geometry={
        'type': 'LineString', 'coordinates': [[-0.15, 44.9]]})),
     'not a list of 2 or more positions'),
    ('lat_lon_swapped', layout_bytes(GOOD, dict(line('R2', (0, 0), (0, 1)), geometry={
        'type': 'LineString', 'coordinates': [[44.9, 200.0], [44.9, 201.0]]})),
     "feature 1 (row 'R2'): position 0 [44.9, 200] is outside longitude [-180, 180]"),
    ('projected', layout_bytes(dict(GOOD, geometry={'type': 'LineString', 'coordinates': [
        [500000.0, 4970000.0], [500000.0, 4970010.0]]})), 'not projected metres'),
    ('text_position', layout_bytes(dict(GOOD, geometry={'type': 'LineString', 'coordinates': [
        ['-0.15', '44.9'], [-0.15, 44.91]]})), "position 0 is ['-0.15', '44.9'], not [lon, lat]"),
    ('no_row', layout_bytes(GOOD, dict(GOOD, properties={'name': 'x'})),
     'feature 1 has no "row" property'),
    ('numeric_row', layout_bytes(dict(GOOD, properties={'row': 12})),
     'write the id as a string, e.g. "row": "12"'),
    ('duplicate_row', layout_bytes(GOOD, line('R2', (1, 0), (1, 5)), GOOD),
     "feature 2 (row 'R1') repeats the row id of feature 0"),
    ('zero_length', layout_bytes(line('R1', (0, 0), (0, 0))), 'has zero length'),
    ('too_long', layout_bytes(line('R1', (0, 0), (0, 6000))), 'is 6.0 km long'),
    ('too_many', layout_bytes(*[line(f'R{k}', (k, 0), (k, 1)) for k in range(MAX_ROWS + 1)]),
     f'more than {MAX_ROWS} rows'),
    ('utm_crs', layout_bytes(GOOD, crs={'type': 'name', 'properties': {
        'name': 'urn:ogc:def:crs:EPSG::32631'}}), 'export the layer as GeoJSON in EPSG:4326'),
    ('name_not_text', layout_bytes(dict(GOOD, properties={'row': 'R1', 'name': ['x']})),
     "feature 0 (row 'R1') has \"name\": ['x'], not a string"),
]


@pytest.mark.parametrize('data,expected', [case[1:] for case in BAD_LAYOUTS],
                         ids=[case[0] for case in BAD_LAYOUTS])
def test_each_bad_layout_is_refused_with_the_file_the_feature_and_the_fix(data, expected):
    with pytest.raises(RowLayoutError) as caught:
        parse_row_layout(data, 'block7/rows.geojson')
    message = str(caught.value)
    assert message.startswith("parameter '--rows': block7/rows.geojson: ")
    assert expected in message
    assert '; ' in message.split('block7/rows.geojson: ', 1)[1]  # and what to do


def test_a_good_layout_keeps_ids_names_and_order_and_a_wgs84_crs_is_fine():
    layout = parse_row_layout(layout_bytes(
        line('B', (0, 0), (0, 5), (0.5, 10), name='Syrah'), line('A', (3, 0), (3, 10)),
        crs={'type': 'name', 'properties': {'name': 'urn:ogc:def:crs:OGC:1.3:CRS84'}}), 'f')
    assert [(r.row_id, r.name, len(r.latitudes_deg)) for r in layout.rows] == [
        ('B', 'Syrah', 3), ('A', '', 2)]
    assert len(layout.sha256) == 64


def test_the_file_must_be_a_readable_regular_file(tmp_path):
    with pytest.raises(RowLayoutError, match='does not exist'):
        load_row_layout(str(tmp_path / 'missing.geojson'))
    with pytest.raises(RowLayoutError, match='is a folder, not a file'):
        load_row_layout(str(tmp_path))
    fifo = tmp_path / 'rows.fifo'
    os.mkfifo(fifo)
    with pytest.raises(RowLayoutError, match=r'is a FIFO \(named pipe\), not a file'):
        load_row_layout(str(fifo))  # refused before open: a FIFO would block
    big = tmp_path / 'big.geojson'
    big.write_bytes(b' ' * (16 * 1024 * 1024 + 1))
    with pytest.raises(RowLayoutError, match='larger than 16 MiB'):
        load_row_layout(str(big))
    good = tmp_path / 'rows.geojson'
    good.write_bytes(ROWS)
    link = tmp_path / 'link.geojson'
    link.symlink_to(good)
    assert [r.row_id for r in load_row_layout(str(link)).rows] == ['A1', 'A2', 'A3', 'Z9']


def test_the_example_of_docs_season_md_is_a_layout_this_parser_reads():
    from conftest import REPO_DIR
    with open(os.path.join(REPO_DIR, 'docs', 'season.md'), encoding='utf-8') as stream:
        text = stream.read()
    block = text.split('```json\n', 1)[1].split('```', 1)[0]
    layout = parse_row_layout('\n'.join(t.strip() for t in block.splitlines()).encode(),
                              'docs/season.md')
    assert [(r.row_id, r.name) for r in layout.rows] == [('B7-01', 'Merlot, row 1'),
                                                         ('B7-02', '')]


def test_the_page_with_rows_opens_offline_in_headless_chromium(tmp_path):
    from test_report_html import _browser_tool, ARTIFACTS
    tool = _browser_tool()
    reason = tool.browser_missing()
    if reason:
        if os.environ.get('LEAF_DISEASE_REQUIRE_BROWSER') == '1':
            pytest.fail(f'LEAF_DISEASE_REQUIRE_BROWSER=1 but {reason}')
        pytest.skip(reason)
    season, rows = _coverage([pass_document('camera', 1), pass_document('second', 2)])
    page = tmp_path / 'report.html'
    page.write_text(build_season_html(season, {'counts': {}, 'failed': []}, rows))
    result = tool.check_report(str(page), os.path.join(ARTIFACTS, 'season_rows_screenshot.png'))
    assert result['ready_state'] == 'complete'
    assert result['console_errors'] == [] and result['external_resources'] == []
