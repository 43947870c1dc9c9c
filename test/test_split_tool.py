"""leaf-disease-split writes the same leaf-grouped split as training."""

import importlib
import os

from leaf_disease_ros.training.dataset import build_split


def _tool():
    return importlib.import_module('leaf_disease_ros.cli.split')


def test_folders_hold_the_build_split(leaves_dir, tmp_path, capsys):
    out = tmp_path / 'split'
    assert _tool().main([leaves_dir, '--out', str(out), '--val-fraction', '0.3',
                         '--seed', '3']) == 0
    labels, train, val, _ = build_split(leaves_dir, val_fraction=0.3, seed=3)
    for side, samples in (('train', train), ('val', val)):
        expected = sorted((labels[s.label_index], os.path.basename(s.path)) for s in samples)
        found = sorted((label, name) for label in os.listdir(out / side)
                       for name in os.listdir(out / side / label))
        assert found == expected
    link = next((out / 'val').rglob('*.JPG'))
    assert os.path.islink(link) and os.path.exists(link)
    assert f'{len(train)} train and {len(val)} validation' in capsys.readouterr().out


def test_refuses_existing_folder_and_bad_data(leaves_dir, tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('mine')
    assert _tool().main([leaves_dir, '--out', str(tmp_path)]) == 1
    assert 'is not empty' in capsys.readouterr().err
    assert _tool().main([str(tmp_path / 'nope'), '--out', str(tmp_path / 'x')]) == 1
    assert 'not a folder' in capsys.readouterr().err
