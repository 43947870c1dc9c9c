"""tools/field_contact_sheet.py: the node's overlays of a photo folder and the counts."""

import importlib.util
import json
import os
from typing import Dict, List

import cv2
import pytest

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO_DIR, 'tools', 'field_contact_sheet.py')


def _tool():
    spec = importlib.util.spec_from_file_location('field_contact_sheet', TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sheet_and_counts(tmp_path, tiny_model_path: str,
                          leaf_images: Dict[str, List[str]]) -> None:
    photos = tmp_path / 'photos'
    for label in ('esca', 'healthy'):
        (photos / label).mkdir(parents=True)
        for path in leaf_images[label][:2]:
            image = cv2.imread(path)
            cv2.imwrite(str(photos / label / (os.path.basename(path)[:8] + '.jpg')),
                        cv2.resize(image, (640, 480)))
    out = tmp_path / 'sheet.jpg'
    counts = tmp_path / 'counts.json'
    assert _tool().main([str(photos), '--model', tiny_model_path, '--out', str(out),
                         '--json', str(counts)]) == 0
    sheet = cv2.imread(str(out))
    assert sheet is not None and sheet.shape == (720, 4 * 640, 3)  # 4 photos: one row
    with open(counts, encoding='utf-8') as stream:
        summary = json.load(stream)
    assert set(summary['per_folder']) == {'esca', 'healthy'}
    for folder in summary['per_folder'].values():
        assert folder['photos'] == 2 and folder['tiles_kept'] >= 1
        labelled = sum(v for k, v in folder.items() if k not in (
            'photos', 'photos_with_finding', 'tiles_kept', 'findings')
            and not k.startswith('findings_'))
        assert labelled == folder['tiles_kept']  # every kept tile has one label
    assert summary['finding_score'] == 'top_label'


def test_empty_folder_is_refused(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        _tool().main([str(tmp_path), '--out', str(tmp_path / 's.jpg')])
    assert stop.value.code == 2
    assert 'no FOLDER/<class>/*.jpg photos' in capsys.readouterr().err
