"""
The tile harvest (replay/harvest.py): most uncertain first, by label, bounded, never over.

Unit tests feed hand-made frames with known scores; the command test replays a tiny
bag with the tiny ONNX model through ``leaf-disease-replay --harvest-tiles``.
"""

import csv
import os

import cv2
import numpy as np
import pytest

from bag_builder import Frame, GpsFix, NS, write_bag
from leaf_disease_ros.cli import replay as cli
from leaf_disease_ros.geo.geodesy import offset_latlon
from leaf_disease_ros.perception.errors import DatasetError
from leaf_disease_ros.perception.pipeline import Detection, FrameResult
from leaf_disease_ros.perception.positions import (GeoTag, GeotagResult, REASON_INTERPOLATED,
                                                   REASON_NO_FIX_RECEIVED, STATUS_GBAS_FIX)
from leaf_disease_ros.replay.harvest import (check_harvest_folder, INDEX_COLUMNS, INDEX_FILE,
                                             tile_file_name, TileHarvester, uncertainty)

LAT0, LON0 = 46.0, 7.0


def tile(label, scores, column=0):
    """Return a tile at ``column`` whose top-k scores are ``scores`` (best first)."""
    labels = [label] + [f'other{i}' for i in range(1, len(scores))]
    return Detection((32 * column, 0, 32 * (column + 1), 32), label, 0, scores[0],
                     tuple(zip(labels, scores)), label == 'unknown', False, False, 1.0)


def frame(stamp_s, tiles, position=True):
    """Return a frame result with the tiles, at (LAT0, LON0) or without position."""
    if position:
        tag = GeoTag(int(stamp_s * NS), LAT0, LON0, 30.0, STATUS_GBAS_FIX, 1, (0.0,) * 9, 2,
                     REASON_INTERPOLATED, 0.0)
        geotag = GeotagResult(tag, REASON_INTERPOLATED)
    else:
        geotag = GeotagResult(None, REASON_NO_FIX_RECEIVED)
    return FrameResult(int(stamp_s * NS), 32, 32 * len(tiles), tuple(tiles), len(tiles), 0,
                       geotag, {})


def image(columns):
    """Return a frame image with a different grey level per 32 px column."""
    return np.hstack([np.full((32, 32, 3), 20 * (c + 1), dtype=np.uint8)
                      for c in range(columns)])


def test_uncertainty_is_one_minus_the_margin():
    assert uncertainty(tile('esca', (0.9, 0.05, 0.05))) == pytest.approx(0.15)
    assert uncertainty(tile('esca', (0.5, 0.5))) == pytest.approx(1.0)
    assert uncertainty(tile('esca', (1.0, 0.0))) == pytest.approx(0.0)
    # top_k 1: the second score is taken at its largest possible value, 1 - best
    assert uncertainty(tile('esca', (0.9,))) == pytest.approx(0.2)


def test_file_names_carry_rank_stamp_position_and_box():
    assert tile_file_name(7, 5, 1_757_665_812_250_000_000, 44.89312345, -0.15412345,
                          (256, 0, 512, 256)) == \
        '00007_t1757665812.250000000_lat44.8931234_lon-0.1541234_x256y0.png'
    assert tile_file_name(12, 3, 5 * NS + 7, None, None, (0, 64, 32, 96)) == \
        '012_t5.000000007_nofix_x0y64.png'


def test_a_folder_with_files_is_refused(tmp_path):
    check_harvest_folder(str(tmp_path / 'new'))  # new: fine
    (tmp_path / 'empty').mkdir()
    check_harvest_folder(str(tmp_path / 'empty'))  # empty: fine
    (tmp_path / 'used' / 'esca').mkdir(parents=True)
    with pytest.raises(DatasetError) as info:
        check_harvest_folder(str(tmp_path / 'used'))
    assert 'never writes over files; give a new folder' in str(info.value)
    assert f"--harvest-tiles {tmp_path / 'used'}_2" in str(info.value)
    (tmp_path / 'file').write_text('x')
    with pytest.raises(DatasetError):
        check_harvest_folder(str(tmp_path / 'file'))
    with pytest.raises(DatasetError):
        TileHarvester(str(tmp_path / 'other'), max_tiles=0)


def test_the_most_uncertain_tiles_are_kept_in_bounded_space(tmp_path):
    folder = str(tmp_path / 'harvest')
    harvester = TileHarvester(folder, max_tiles=3, model_id='tiny@123', bag='/bags/b')
    best = [0.99, 0.6, 0.95, 0.5, 0.9, 0.7, 0.98, 0.55]  # margins 0.98 .. 0.0
    labels = ['healthy', 'esca', 'healthy', 'unknown', 'black_rot', 'esca', 'healthy', 'esca']
    staging = [os.path.join(folder, name) for name in os.listdir(folder)]
    assert len(staging) == 1 and os.path.basename(staging[0]).startswith('.harvest-')
    for i in range(4):  # four frames of two tiles
        tiles = [tile(labels[2 * i + c], (best[2 * i + c], 1 - best[2 * i + c]), c)
                 for c in range(2)]
        harvester.observe(image(2), frame(i * 0.5, tiles, position=i != 3), None)
        assert len(os.listdir(staging[0])) <= 3  # never more than max_tiles on disk
    summary = harvester.commit()
    assert summary['tiles_classified'] == 8 and summary['tiles_harvested'] == 3
    assert summary['by_label'] == {'esca': 2, 'unknown': 1}
    assert sorted(os.listdir(folder)) == ['esca', INDEX_FILE, 'unknown']  # staging gone
    with open(os.path.join(folder, INDEX_FILE), encoding='utf-8') as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == INDEX_COLUMNS
    # most uncertain first: 0.5 (unknown, frame 1), 0.55 (esca, frame 3), 0.6 (esca, frame 0)
    assert [r['predicted_label'] for r in rows] == ['unknown', 'esca', 'esca']
    assert [float(r['uncertainty']) for r in rows] == pytest.approx([1.0, 0.9, 0.8])
    assert [r['rank'] for r in rows] == ['1', '2', '3']
    assert rows[1]['file'] == 'esca/00002_t1.500000000_nofix_x32y0.png'
    assert rows[1]['position'] == 'no_fix_received' and rows[1]['latitude_deg'] == ''
    assert rows[0]['file'] == 'unknown/00001_t0.500000000_lat46.0000000_lon7.0000000_x32y0.png'
    assert rows[0]['latitude_deg'] == '46.00000000' and rows[0]['fix_status'] == '2'
    assert rows[0]['box_x0'] == '32' and rows[0]['box_x1'] == '64'
    assert rows[0]['top_k'] == 'unknown:0.5000 other1:0.5000'
    assert rows[0]['model_id'] == 'tiny@123' and rows[0]['bag'] == '/bags/b'
    for row in rows:  # the file holds the tile's own pixels
        pixels = cv2.imread(os.path.join(folder, row['file']))
        column = int(row['box_x0']) // 32
        assert pixels.shape == (32, 32, 3) and int(pixels[0, 0, 0]) == 20 * (column + 1)


def test_abort_leaves_nothing(tmp_path):
    folder = str(tmp_path / 'harvest')
    harvester = TileHarvester(folder, max_tiles=5)
    harvester.observe(image(1), frame(0.0, [tile('esca', (0.6, 0.4))]), None)
    harvester.abort()
    assert not os.path.exists(folder)
    (tmp_path / 'kept').mkdir()
    harvester = TileHarvester(str(tmp_path / 'kept'), max_tiles=5)
    harvester.abort()
    assert os.listdir(tmp_path / 'kept') == []  # a folder it did not create stays


def test_the_command_harvests_and_refuses_a_second_harvest(tmp_path, tiny_model_path,
                                                           leaf_images, capsys):
    leaves = [cv2.imread(paths[0]) for _, paths in sorted(leaf_images.items())]
    frames = [Frame(int((1.0 + 0.25 * i) * NS),
                    np.hstack([leaves[i % 4], leaves[(i + 1) % 4]])) for i in range(6)]
    fixes = []
    for k in range(12):  # 1 m/s east, every 0.2 s, from 0.8 s
        lat, lon = offset_latlon(LAT0, LON0, 0.2 * k, 0.0)
        fixes.append(GpsFix(int((0.8 + 0.2 * k) * NS), lat, lon))
    bag = write_bag(str(tmp_path / 'bag'), 'mcap', frames, fixes)
    harvest = tmp_path / 'tiles'
    argv = [bag, '--model', tiny_model_path, '--out', str(tmp_path / 'report'),
            '--harvest-tiles', str(harvest), '--harvest-max', '8', '--no-progress',
            '--no-output-bag', '--param', 'min_vegetation_fraction=0.0']
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f'harvested 8 of 12 tiles, most uncertain first, into {harvest}/<predicted ' in out
    with open(harvest / INDEX_FILE, encoding='utf-8') as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 8
    uncertainties = [float(r['uncertainty']) for r in rows]
    assert uncertainties == sorted(uncertainties, reverse=True)
    files = sorted(str(p.relative_to(harvest)) for p in harvest.rglob('*.png'))
    assert files == sorted(r['file'] for r in rows)
    for row in rows:
        assert row['file'].split('/')[0] == row['predicted_label']
        assert f"_t{int(row['stamp_ns']) // NS}." in row['file'] and '_lat46.' in row['file']
        assert row['model_id'].startswith('tiny@')
    with open(tmp_path / 'report' / 'report.md', encoding='utf-8') as stream:
        assert '## Harvested tiles' in stream.read()
    # a second harvest into the same folder changes nothing and says what to do
    before = sorted(str(p) for p in harvest.rglob('*'))
    assert cli.main(argv) == 2
    assert 'give a new folder' in capsys.readouterr().err
    assert sorted(str(p) for p in harvest.rglob('*')) == before
