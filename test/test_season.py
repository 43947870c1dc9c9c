"""leaf-disease-season on a real local Ray cluster (one per module): bags, reruns, kills.

Tier 1: Ray's local cluster needs no network. The bags are tiny recordings of two
robots over two dates along two rows; the tiny model's label of a frame is chosen by
its colour (a colour it calls healthy, one it calls a disease, found at start), so the
test knows where the findings are.
"""

import datetime
import json
import os
import signal
import threading
import time
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from bag_builder import Frame, GpsFix, NS, write_bag
from leaf_disease_ros.geo.geodesy import offset_latlon

ray = pytest.importorskip('ray', reason="the season extra: pip install '.[season]'")

LAT0, LON0 = 44.9, -0.15
ROW2_EAST_M = 100.0  # a second row, far from the first
PARAMS = ['--param', 'unknown_threshold=0.0', '--param', 'disease_score_threshold=0.0',
          '--param', 'min_vegetation_fraction=0.0', '--param', 'min_leaf_area_fraction=0.0',
          '--param', 'hold_findings_out_of_domain=false', '--param', 'tiling=none',
          '--param', 'evidence_min_sightings=1']
pytestmark = pytest.mark.slow


def _stamp_ns(day: int, seconds: float = 0.0) -> int:
    moment = datetime.datetime(2024, 6, day, 8, 0, tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) * NS + int(seconds * NS)


@pytest.fixture(scope='module')
def cluster():
    """One local Ray cluster for the module (2 CPUs, no dashboard)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope='module')
def colours(tiny_model_path):
    """Return (a colour the tiny model calls healthy, one it calls a disease), 64x64 BGR."""
    from leaf_disease_ros.inference.factory import load_backend
    from leaf_disease_ros.perception.config import DetectorConfig, validate_parameters
    from leaf_disease_ros.perception.pipeline import Detector

    params = validate_parameters({'unknown_threshold': 0.0, 'disease_score_threshold': 0.0,
                                  'min_vegetation_fraction': 0.0, 'tiling': 'none',
                                  'min_leaf_area_fraction': 0.0})
    backend = load_backend(tiny_model_path, 'onnxruntime')
    detector = Detector(backend, backend.card, DetectorConfig.from_parameters(params))
    found = {}
    rng = np.random.default_rng(0)
    for _ in range(400):
        image = np.empty((64, 64, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        labels = [d.label for d in detector.process(image, 1, None).detections]
        kind = 'healthy' if labels == ['healthy'] else 'disease' if labels else ''
        if kind and kind not in found:
            found[kind] = (image, labels[0])
        if len(found) == 2:
            break
    backend.close()
    assert len(found) == 2, 'no colour gives both a healthy and a diseased frame'
    return found['healthy'], found['disease']


def _row_bag(path, day, east0_m, diseased_at_m, colours, frames=13, step_m=0.5):
    """Write a pass along a row (north-going): a frame every ``step_m``, sick near a spot."""
    (healthy, _), (disease, _) = colours
    images, fixes = [], []
    for k in range(frames):
        north = step_m * k
        sick = diseased_at_m is not None and abs(north - diseased_at_m) <= 0.6
        images.append(Frame(_stamp_ns(day, k), disease if sick else healthy))
    for k in range(10 * frames + 20):
        lat, lon = offset_latlon(LAT0, LON0, east0_m, step_m * (k / 10.0 - 1.0))
        fixes.append(GpsFix(_stamp_ns(day, k / 10.0 - 1.0), lat, lon))
    return write_bag(str(path), 'mcap', images, fixes)


@pytest.fixture(scope='module')
def season_bags(tmp_path_factory, colours):
    """
    Return the season's folder of bags: two robots, two dates, two rows, a corrupt bag.

    robotA row 1 on June 1 (a sick spot at 3 m), robotB row 1 on June 15 (healthy),
    robotA row 2 on June 15 (a sick spot), and a corrupt bag of robotB.
    """
    root = tmp_path_factory.mktemp('season_in')
    (root / 'robotA').mkdir()
    (root / 'robotB').mkdir()
    _row_bag(root / 'robotA' / 'row1_0601', 1, 0.0, 3.0, colours)
    _row_bag(root / 'robotB' / 'row1_0615', 15, 0.0, None, colours)
    _row_bag(root / 'robotA' / 'row2_0615', 15, ROW2_EAST_M, 2.0, colours)
    (root / 'robotB' / 'broken.mcap').write_bytes(b'\x89MCAP0\r\n' + os.urandom(2000))
    return root


def _season(args, capsys):
    from leaf_disease_ros.cli import season
    code = season.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope='module')
def first_run(cluster, season_bags, tiny_model_path, tmp_path_factory):
    from leaf_disease_ros.cli import season
    out = tmp_path_factory.mktemp('season_out') / 'season'
    args = [str(season_bags), '--out', str(out), '--model', tiny_model_path, '--backend',
            'onnxruntime', '--workers', '2'] + PARAMS
    code = season.main(args)
    return code, out, args


def _json(path):
    with open(path, encoding='utf-8') as stream:
        return json.load(stream)


def test_season_end_to_end_with_a_corrupt_bag(first_run, colours):
    code, out, _ = first_run
    assert code == 1  # written, one bag failed
    summary = _json(out / 'season.json')
    assert summary['counts'] == {'bags': 4, 'replayed': 4, 'skipped_current': 0, 'passes': 3,
                                 'failed': 1, 'features': summary['counts']['features']}
    (failure,) = summary['failed']
    assert failure['bag'].endswith('broken.mcap') and failure['attempts'] == 2
    assert failure['error']
    robots = {p['bag'].split(os.sep)[-1]: p['robot'] for p in summary['passes']}
    assert robots == {'row1_0601': 'robotA', 'row1_0615': 'robotB', 'row2_0615': 'robotA'}
    for entry in summary['passes']:  # each bag: an ordinary replay report, placed whole
        folder = out / 'bags' / entry['bag_id']
        for name in ('metrics.json', 'report.html', 'findings.geojson', 'pass.json',
                     'detections', '.leaf-disease-output.json'):
            assert (folder / name).exists(), name
    assert not [n for n in os.listdir(out / 'bags') if n.startswith('.')]
    for name in ('season.geojson', 'season.kml', 'coverage.json', 'report.html',
                 'maps/new_since_last_pass.png'):
        assert (out / name).exists(), name
    assert len(os.listdir(out / 'maps')) == 4  # 3 passes + new since last pass
    # dates in files are UTC
    geo = _json(out / 'season.geojson')
    starts = sorted(p['start'] for p in geo['leaf_disease_ros']['passes'])
    assert starts[0] == '2024-06-01T07:59:59.000Z'  # the first fix
    coverage = _json(out / 'coverage.json')
    for value in coverage.values():
        assert value['driven_m'] > 5.0 and value['judged_m'] > 5.0
        assert value['frames_judged'] == 13 and value['frames_without_image'] == 0
        # the replay placed findings with the camera (no camera_info: the field of view)
        assert value['drove_past'] == {'rule': 'footprint', 'tolerance_m': 0.5,
                                       'camera': 'hfov (no camera_info)',
                                       'frames_without_heading': 0}
    for entry in summary['passes']:
        footprint = _json(out / 'bags' / entry['bag_id'] / 'pass.json')['coverage']['footprint']
        assert len(footprint['judged_poses']) == 13  # a frame every 0.5 m, heading north
        assert {round(pose[2]) for pose in footprint['judged_poses']} == {90}


def test_a_spot_seen_in_pass_one_is_missed_in_pass_two(first_run, colours):
    _, out, _ = first_run
    (_, _), (_, disease_label) = colours
    geo = _json(out / 'season.geojson')
    assert geo['type'] == 'FeatureCollection' and 'crs' not in geo
    row1 = [f for f in geo['features']
            if f['properties']['passes_seen'][0].startswith('robotA_row1')]
    row2 = [f for f in geo['features']
            if f['properties']['passes_seen'][0].startswith('robotA_row2')]
    assert row1 and row2
    for feature in row1:
        props = feature['properties']
        assert props['label'] == disease_label
        assert len(props['passes_seen']) == 1
        assert [p.split('-')[0] for p in props['passes_missed']] == ['robotB_row1_0615']
        assert props['trend'] == 'gone'
        states = {p['pass'].split('-')[0]: p['state'] for p in props['per_pass']}
        assert states == {'robotA_row1_0601': 'seen', 'robotB_row1_0615': 'missed',
                          'robotA_row2_0615': 'not_covered'}
        assert props['first_seen'].startswith('2024-06-01T08:00:0')  # the first sick frame
        # the spot is near 3 m north of the row's start
        lon, lat = feature['geometry']['coordinates']
        assert abs(lat - offset_latlon(LAT0, LON0, 0.0, 3.0)[0]) < 1.5 / 111_000
    for feature in row2:
        assert feature['properties']['trend'] == 'once'
        assert feature['properties']['passes_missed'] == []
    kml = ElementTree.parse(out / 'season.kml').getroot()
    ns = {'k': 'http://www.opengis.net/kml/2.2'}
    spans = kml.findall('.//k:Placemark/k:TimeSpan/k:begin', ns)
    assert spans and all(s.text.endswith('Z') for s in spans)
    page = (out / 'report.html').read_text(encoding='utf-8')
    assert page.count('<option value=') == 4  # all + 3 passes
    assert 'class="finding missed"' in page and 'data-count="1"' in page
    import re
    assert not re.search(r'(src|href)="(https?:)?//', page) and '<link' not in page


def _row_layout(path):
    """Write the rows of the season's bags: the canopy 0.75 m west of each pass, and one more."""
    rows = []
    for row_id, east_m in (('R1', -0.75), ('R2', ROW2_EAST_M - 0.75), ('R9', 50.0)):
        ends = [offset_latlon(LAT0, LON0, east_m, north) for north in (0.0, 6.0)]
        rows.append({'type': 'Feature', 'properties': {'row': row_id},
                     'geometry': {'type': 'LineString',
                                  'coordinates': [[lon, lat] for lat, lon in ends]}})
    path.write_text(json.dumps({'type': 'FeatureCollection', 'features': rows}))
    return str(path)


def test_rerun_skips_finished_bags_and_redoes_a_changed_one(first_run, season_bags, colours,
                                                            capsys, tmp_path):
    code, out, args = first_run
    before = {p['bag_id']: os.stat(out / 'bags' / p['bag_id'] / 'pass.json').st_mtime_ns
              for p in _json(out / 'season.json')['passes']}
    start = time.perf_counter()
    # a row layout changes the season files, not the bags' results: nothing is replayed
    code, printed, err = _season(args + ['--rows', _row_layout(tmp_path / 'rows.geojson')],
                                 capsys)
    assert code == 1
    summary = _json(out / 'season.json')
    assert summary['counts']['skipped_current'] == 3 and summary['counts']['replayed'] == 1
    assert '3 current (skipped), 1 to replay' in err
    assert all(p['skipped_current'] for p in summary['passes'])
    assert {p['bag_id']: os.stat(out / 'bags' / p['bag_id'] / 'pass.json').st_mtime_ns
            for p in summary['passes']} == before
    assert time.perf_counter() - start < 60
    rows = _json(out / 'rows.json')
    assert rows['never_covered'] == ['R9'] and summary['rows']['never_covered'] == ['R9']
    covered = {r['row']: sorted(p.split('_')[0] for p in r['passes_covered'])
               for r in rows['rows']}
    assert covered == {'R1': ['robotA', 'robotB'], 'R2': ['robotA'], 'R9': []}
    assert all(r['covered_fraction_best'] > 0.9 for r in rows['rows'][:2])
    assert 'rows: 1 of 3 never covered: R9' in printed
    assert 'rows.json' in _json(out / '.leaf-disease-output.json')['files']
    # a bag recorded again (other content) is replayed; the others stay
    _row_bag(season_bags / 'robotA' / 'row2_0615_new', 15, ROW2_EAST_M, 2.0, colours,
             frames=14)
    os.rename(season_bags / 'robotA' / 'row2_0615', season_bags.parent / 'row2_old')
    os.rename(season_bags / 'robotA' / 'row2_0615_new', season_bags / 'robotA' / 'row2_0615')
    code, _, err = _season(args, capsys)
    summary = _json(out / 'season.json')
    assert not (out / 'rows.json').exists()  # this run has no --rows: no stale rows.json
    replayed = [p for p in summary['passes'] if not p['skipped_current']]
    assert [p['bag'].split(os.sep)[-1] for p in replayed] == ['row2_0615']
    assert summary['counts']['bags'] == 4 and summary['counts']['skipped_current'] == 2


def test_a_worker_killed_mid_task_is_retried(cluster, tmp_path, colours, tiny_model_path,
                                             capsys):
    bag = _row_bag(tmp_path / 'in' / 'robotC' / 'long', 2, 0.0, 3.0, colours, frames=400,
                   step_m=0.05)
    out = tmp_path / 'season'
    killed = []

    def kill_first_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            bags = out / 'bags'
            for name in (os.listdir(bags) if bags.is_dir() else []):
                worker = bags / name / 'worker.json'
                if name.startswith('.') and worker.exists():
                    try:
                        pid = _json(worker)['pid']
                    except ValueError:
                        continue
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.005)
    watcher = threading.Thread(target=kill_first_worker)
    watcher.start()
    code, _, err = _season([bag, '--out', str(out), '--model', tiny_model_path, '--backend',
                            'onnxruntime', '--workers', '1', '--no-output-bag'] + PARAMS,
                           capsys)
    watcher.join()
    assert killed, 'the watcher never saw the task start'
    assert code == 0, err
    (entry,) = _json(out / 'season.json')['passes']
    done = _json(out / 'bags' / entry['bag_id'] / 'pass.json')
    assert done['worker']['pid'] != killed[0]  # Ray ran it again on another worker
    assert done['coverage']['frames_judged'] == 400


def test_the_single_bag_replay_and_the_task_body_never_import_ray():
    import subprocess
    import sys
    code = ('import sys; import leaf_disease_ros.cli.replay, leaf_disease_ros.cli.season, '
            'leaf_disease_ros.replay.season_task, leaf_disease_ros.replay.season_map; '
            'assert "ray" not in sys.modules, "ray imported"')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


def test_season_report_opens_offline_in_headless_chromium(first_run):
    from test_report_html import _browser_tool
    _, out, _ = first_run
    tool = _browser_tool()
    reason = tool.browser_missing()
    if reason:
        if os.environ.get('LEAF_DISEASE_REQUIRE_BROWSER') == '1':
            pytest.fail(f'LEAF_DISEASE_REQUIRE_BROWSER=1 but {reason}')
        pytest.skip(reason)
    from test_report_html import ARTIFACTS
    result = tool.check_report(str(out / 'report.html'),
                               os.path.join(ARTIFACTS, 'season_report_screenshot.png'))
    assert result['ready_state'] == 'complete'
    assert result['console_errors'] == [] and result['external_resources'] == []
    assert result['screenshot_bytes'] > 10_000
