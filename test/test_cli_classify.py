"""``leaf-disease-classify`` on good and bad inputs."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from leaf_disease_ros.cli.classify import main


def test_folder_of_class_folders_prints_metrics(leaves_dir, tiny_model_path, capsys):
    assert main([leaves_dir, '--model', tiny_model_path]) == 0
    out = capsys.readouterr().out
    assert 'images: 24' in out and 'macro-F1' in out
    assert 'confusion matrix' in out and 'leaf_blight' in out
    assert 'unknown rejection at 0.300' in out


def test_json_output_matches_known_counts(leaves_dir, tiny_model_path, tmp_path, capsys):
    out_path = tmp_path / 'metrics.json'
    assert main([leaves_dir, '--model', tiny_model_path, '--json', str(out_path)]) == 0
    document = json.loads(out_path.read_text())
    (report,) = document['evaluations']
    assert report['count'] == 24
    assert sum(map(sum, report['confusion_matrix'])) == 24
    assert [report['per_class'][c]['support'] for c in report['labels']] == [6, 6, 6, 6]
    assert 0.0 <= report['accuracy'] <= 1.0
    assert report['model']['backend'] == 'onnxruntime'
    # the same numbers on stdout with a bare --json
    assert main([leaves_dir, '--model', tiny_model_path, '--json']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['evaluations'][0]['confusion_matrix'] == report['confusion_matrix']


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
