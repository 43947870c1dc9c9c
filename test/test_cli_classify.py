"""``leaf-disease-classify`` on good and bad inputs."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from leaf_disease_ros.cli import classify as classify_cli
from leaf_disease_ros.cli.classify import Classifier, evaluate_folder, main
from leaf_disease_ros.inference.factory import load_backend
from scripted_backend import colour_card, ColourBackend, COLOURS_BGR


def test_folder_of_class_folders_prints_metrics(leaves_dir, tiny_model_path, capsys):
    assert main([leaves_dir, '--model', tiny_model_path]) == 0
    out = capsys.readouterr().out
    assert 'images: 24' in out and 'macro-F1' in out
    assert 'confusion matrix' in out and 'leaf_blight' in out
    assert 'unknown rejection at 0.300' in out


def _colour_folders(root, layout):
    """Write solid 64 px photos: ``layout`` maps class folder -> colour names, one a photo."""
    for folder, colours in layout.items():
        os.makedirs(root / folder, exist_ok=True)
        for index, colour in enumerate(colours):
            cv2.imwrite(str(root / folder / f'{index}_{colour}.png'),
                        np.full((64, 64, 3), COLOURS_BGR[colour], dtype=np.uint8))


def test_json_output_matches_known_counts(tmp_path, monkeypatch, capsys):
    # a scripted backend labels a photo by its colour, so every count is known:
    # black_rot 3 right; esca 2 right, 1 taken for black_rot; healthy 2 right and 1 grey
    # photo that falls to unknown (equal logits: top-1 is index 0, black_rot);
    # leaf_blight has no folder, so no samples.
    card = colour_card(str(tmp_path))
    monkeypatch.setattr(classify_cli, 'load_backend', lambda *a, **k: ColourBackend(card))
    data = tmp_path / 'data'
    _colour_folders(data, {'black_rot': ['black_rot'] * 3,
                           'esca': ['esca', 'esca', 'black_rot'],
                           'healthy': ['healthy', 'healthy', 'grey']})
    out_path = tmp_path / 'metrics.json'
    assert main([str(data), '--json', str(out_path)]) == 0
    (report,) = json.loads(out_path.read_text())['evaluations']
    assert report['count'] == 9
    assert report['confusion_matrix'] == [[3, 0, 0, 0], [1, 2, 0, 0], [1, 0, 2, 0],
                                          [0, 0, 0, 0]]
    assert report['accuracy'] == pytest.approx(7 / 9)
    black_rot, esca, healthy = (report['per_class'][c] for c in card.labels[:3])
    assert (black_rot['precision'], black_rot['recall']) == (pytest.approx(3 / 5), 1.0)
    assert (esca['precision'], esca['recall']) == (1.0, pytest.approx(2 / 3))
    assert healthy['f1'] == pytest.approx(0.8)
    # the class without samples is not applicable, and not in the macro average
    assert report['per_class']['leaf_blight'] == {'precision': None, 'recall': None,
                                                  'f1': None, 'support': 0}
    assert report['macro_f1_labels'] == ['black_rot', 'esca', 'healthy']
    assert report['macro_f1'] == pytest.approx((0.75 + 0.8 + 0.8) / 3)
    rejection = report['unknown_rejection']
    assert (rejection['count'], rejection['accepted']) == (1, 8)
    assert rejection['unknown_rate'] == pytest.approx(1 / 9)
    assert rejection['accepted_accuracy'] == pytest.approx(7 / 8)
    # the same numbers on stdout with a bare --json
    assert main([str(data), '--json']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['evaluations'][0]['confusion_matrix'] == report['confusion_matrix']
    # and in words: one unknown said once, as a count and a share; no cut label
    assert main([str(data)]) == 0
    text = capsys.readouterr().out
    assert 'unknown rejection at 0.300: 1 of 9 images (11.11%) fall to unknown; accuracy ' \
        'of the other 8: 0.8750' in text
    assert 'unknown: 0' not in text
    assert 'over 3 of 4 classes (leaf_blight: no samples, n/a)' in text
    leaf_blight_row = next(line for line in text.splitlines()
                           if line.startswith('leaf_blight '))
    assert leaf_blight_row.split() == ['leaf_blight', 'n/a', 'n/a', 'n/a', '0']
    header = next(line for line in text.splitlines() if 'black_rot' in line
                  and 'leaf_blight' in line)
    assert header.split() == list(card.labels)


def test_real_model_on_real_photos(leaves_dir, tiny_model_path):
    # the tiny ONNX model through the real backend: every photo is counted once
    document = evaluate_folder(Classifier(load_backend(tiny_model_path, 'onnxruntime'), 3),
                               leaves_dir)
    assert document['count'] == 24 and sum(map(sum, document['confusion_matrix'])) == 24
    assert [document['per_class'][c]['support'] for c in document['labels']] == [6, 6, 6, 6]
    assert document['model']['backend'] == 'onnxruntime'


def test_single_file_prints_top_k(leaf_images, tiny_model_path, capsys):
    path = leaf_images['esca'][0]
    assert main([path, '--model', tiny_model_path, '--top-k', '2']) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(path + ': ') and 'top-2:' in line


def test_bad_files_are_reported_and_skipped(leaf_images, tiny_model_path, tmp_path, capsys):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    shutil.copy(leaf_images['healthy'][0], folder / 'good.jpg')
    (folder / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not really a jpeg')
    (folder / 'notes.txt').write_text('field notes')
    (folder / 'empty.png').write_bytes(b'')
    assert main([str(folder), '--model', tiny_model_path, '--json']) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    files = document['files']
    assert [os.path.basename(f['path']) for f in files] == ['good.jpg']
    for name in ('corrupt.jpg', 'notes.txt', 'empty.png'):
        assert name in captured.err
    assert sorted(os.path.basename(p) for p in document['not_classified']) == [
        'corrupt.jpg', 'empty.png', 'notes.txt']
    # a path that does not exist is a usage error (exit 2, as in the replay), up front
    assert main([str(folder), str(tmp_path / 'missing.jpg'), '--model', tiny_model_path]) == 2
    captured = capsys.readouterr()
    assert 'no such file or folder' in captured.err and 'missing.jpg' in captured.err
    assert captured.out == ''


def test_nothing_classified_is_exit_1(tmp_path, tiny_model_path, capsys):
    (tmp_path / 'a.txt').write_text('x')
    assert main([str(tmp_path / 'a.txt'), '--model', tiny_model_path]) == 1
    assert 'nothing was classified' in capsys.readouterr().err


def test_unknown_class_folder_is_exit_2(leaves_dir, tmp_path, tiny_model_path, capsys):
    data = tmp_path / 'data'
    shutil.copytree(leaves_dir, data)
    os.rename(data / 'esca', data / 'powdery_mildew')
    assert main([str(data), '--model', tiny_model_path]) == 2
    assert 'powdery_mildew' in capsys.readouterr().err


def test_missing_model_is_exit_2_naming_the_file(tmp_path, capsys):
    assert main(['x.jpg', '--model', str(tmp_path / 'none.onnx')]) == 2
    err = capsys.readouterr().err
    assert 'none.onnx' in err and 'does not exist' in err


def test_console_entry_never_prints_a_traceback(tmp_path, tiny_model_path):
    (tmp_path / 'bad.jpg').write_bytes(b'garbage')
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(__file__), '..', 'src')
    env['PYTHONPATH'] = os.pathsep.join([src, env.get('PYTHONPATH', '')])
    run = subprocess.run([sys.executable, '-m', 'leaf_disease_ros.cli.classify',
                          str(tmp_path / 'bad.jpg'), '--model', tiny_model_path],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1
    assert 'Traceback' not in run.stderr and 'bad.jpg' in run.stderr


@pytest.mark.parametrize('argv', [[], ['x.jpg', '--top-k', '0']])
def test_usage_errors(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_explain_writes_a_saliency_picture_per_image(leaves_dir, leaf_images, tiny_model_path,
                                                     tmp_path, capsys):
    out = tmp_path / 'why'
    assert main([os.path.join(leaves_dir, 'esca'), leaf_images['healthy'][0], '--model',
                 tiny_model_path, '--explain', str(out)]) == 0
    assert 'wrote 7 saliency pictures' in capsys.readouterr().err
    assert len(os.listdir(out / 'esca')) == 6
    assert os.listdir(out / 'healthy') == [
        os.path.splitext(os.path.basename(leaf_images['healthy'][0]))[0] + '.saliency.png']
    # class folders too, keeping the class subfolders
    assert main([leaves_dir, '--model', tiny_model_path, '--explain', str(tmp_path / 'e2'),
                 '--json', str(tmp_path / 'r.json')]) == 0
    assert sorted(os.listdir(tmp_path / 'e2')) == ['.leaf-disease-output.json', 'black_rot',
                                                   'esca', 'healthy', 'leaf_blight']
