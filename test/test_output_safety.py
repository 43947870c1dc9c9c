"""
Issue 18, data loss: every command refuses outputs that would destroy an input or a file.

One test per case of the issue (the rule itself is tested in test_output_paths.py):
classify ``--json`` onto a FIFO or its own photo, ``--explain`` inside the classified
folder; replay ``--out`` over a training run or the folder of the model in use, and
``--harvest-tiles`` overlapping ``--out``; train ``--out`` twice without ``--resume``
or inside the data; export over its own card or input; split inside the data. Each
checks that the input is unchanged and the command exits non-zero with the reason.
"""

import hashlib
import os
import shutil
import stat

import pytest

from leaf_disease_ros.cli import classify as classify_cli
from leaf_disease_ros.perception.output_paths import MANIFEST_FILE, read_manifest


def _digest(path):
    with open(path, 'rb') as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def _tree(folder):
    """Return {relative path: sha256} of every file below ``folder``."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = _digest(path)
    return found


@pytest.fixture()
def photos(tmp_path, leaf_images):
    """Return a folder of three leaf photos: a.jpg, b.jpg and c.jpg."""
    folder = tmp_path / 'photos'
    folder.mkdir()
    for name, source in zip('abc', leaf_images['esca']):
        shutil.copy(source, folder / f'{name}.jpg')
    return folder


# --- leaf-disease-classify -----------------------------------------------------------------


def test_classify_json_onto_a_fifo_is_refused_and_the_fifo_stays(tmp_path, photos,
                                                                 tiny_model_path, capsys):
    fifo = str(tmp_path / 'pipe')
    os.mkfifo(fifo)
    code = classify_cli.main([str(photos / 'a.jpg'), '--json', fifo, '--model',
                              tiny_model_path])
    assert code == 2
    assert 'is a FIFO (named pipe), not a regular file' in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_classify_json_dash_still_prints(photos, tiny_model_path, capsys):
    assert classify_cli.main([str(photos / 'a.jpg'), '--json', '-', '--model',
                              tiny_model_path]) == 0
    assert '"files"' in capsys.readouterr().out


@pytest.mark.parametrize('how', ['same', 'hard_link', 'symlink'])
def test_classify_json_onto_its_photo_is_refused(tmp_path, photos, tiny_model_path, capsys,
                                                 how):
    photo = str(photos / 'a.jpg')
    before = _digest(photo)
    target = photo
    if how == 'hard_link':
        target = str(tmp_path / 'alias.jpg')
        os.link(photo, target)
    elif how == 'symlink':
        target = str(tmp_path / 'alias.jpg')
        os.symlink(photo, target)
    assert classify_cli.main([photo, '--json', target, '--model', tiny_model_path]) == 2
    assert f'--json {target} is the input' in capsys.readouterr().err
    assert _digest(photo) == before


def test_classify_json_inside_the_classified_folder_is_refused(photos, tiny_model_path,
                                                               capsys):
    before = _tree(photos)
    code = classify_cli.main([str(photos), '--json', str(photos / 'b.jpg'), '--model',
                              tiny_model_path])
    assert code == 2
    assert f'is inside the input {photos}' in capsys.readouterr().err
    assert _tree(photos) == before


def test_classify_json_onto_the_model_card_is_refused(tmp_path, photos, tiny_model_copy,
                                                      capsys):
    card = tiny_model_copy[:-5] + '.json'
    before = _digest(card)
    assert classify_cli.main([str(photos / 'a.jpg'), '--json', card, '--model',
                              tiny_model_copy]) == 2
    assert 'is the input' in capsys.readouterr().err
    assert _digest(card) == before


def test_classify_explain_inside_the_classified_folder_is_refused(tmp_path, leaves_dir,
                                                                  tiny_model_path, capsys):
    data = tmp_path / 'data'
    shutil.copytree(leaves_dir, data)
    before = _tree(data)
    code = classify_cli.main([str(data), '--explain', str(data / 'esca'), '--model',
                              tiny_model_path])
    assert code == 2
    assert f'--explain {data / "esca"} is inside the input {data}' in capsys.readouterr().err
    assert _tree(data) == before


def test_classify_explain_into_a_foreign_folder_is_refused(tmp_path, photos, tiny_model_path,
                                                           capsys):
    notes = tmp_path / 'notes'
    notes.mkdir()
    (notes / 'thesis.tex').write_text('precious')
    code = classify_cli.main([str(photos), '--explain', str(notes), '--model', tiny_model_path])
    assert code == 2
    assert 'is not empty and was not made by leaf-disease-explain' in capsys.readouterr().err
    assert os.listdir(notes) == ['thesis.tex']


def test_classify_explain_marks_its_folder_and_may_run_again(tmp_path, photos,
                                                             tiny_model_path, capsys):
    out = tmp_path / 'why'
    argv = [str(photos), '--explain', str(out), '--model', tiny_model_path]
    assert classify_cli.main(argv) == 0
    manifest = read_manifest(str(out))
    assert manifest is not None and manifest.command == 'leaf-disease-explain'
    assert sorted(manifest.files) == ['photos/a.saliency.png', 'photos/b.saliency.png',
                                      'photos/c.saliency.png']
    assert classify_cli.main(argv) == 0
    assert MANIFEST_FILE in os.listdir(out)


def test_classify_json_inside_explain_is_refused(tmp_path, photos, tiny_model_path, capsys):
    out = tmp_path / 'why'
    code = classify_cli.main([str(photos), '--explain', str(out), '--json',
                              str(out / 'r.json'), '--model', tiny_model_path])
    assert code == 2
    assert 'overlap' in capsys.readouterr().err
