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

import cv2
import pytest

from bag_builder import Frame, GpsFix, mosaic, NS, write_bag
from leaf_disease_ros.cli import classify as classify_cli
from leaf_disease_ros.cli import replay as replay_cli
from leaf_disease_ros.perception.output_paths import (MANIFEST_FILE, read_manifest,
                                                      write_manifest)


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


# --- leaf-disease-replay -------------------------------------------------------------------


@pytest.fixture(scope='module')
def bag(tmp_path_factory, leaf_images):
    """Return a small MCAP bag of two frames of three leaves (read-only: do not modify)."""
    image = mosaic([cv2.imread(leaf_images[label][0])
                    for label in ('black_rot', 'esca', 'leaf_blight')], 3)
    frames = [Frame(stamp_ns=k * NS, image_bgr=image, log_time_ns=k * NS + 15_000_000)
              for k in (1, 2)]
    fixes = [GpsFix(int(0.2 * k * NS), 46.0 + 1e-6 * k, 7.0, 2, int((0.2 * k + 0.025) * NS))
             for k in range(20)]
    return write_bag(str(tmp_path_factory.mktemp('bag') / 'bag'), 'mcap', frames, fixes)


def _replay(argv, model, capsys):
    code = replay_cli.main(list(argv) + ['--model', model, '--no-progress'])
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err
    return code, captured.out + captured.err


def test_replay_over_a_training_run_is_refused(tmp_path, bag, tiny_model_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    for name in ('metrics.json', 'checkpoint_best.pt', 'checkpoint_last.pt', 'split.json',
                 'train.log', 'curves.png'):
        (run / name).write_text(name)
    before = _tree(run)
    code, printed = _replay([bag, '--out', str(run)], tiny_model_path, capsys)
    assert code == replay_cli.EXIT_ERROR
    assert 'was not made by leaf-disease-replay' in printed
    assert _tree(run) == before


def test_replay_over_a_run_marked_by_train_is_refused(tmp_path, bag, tiny_model_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'metrics.json').write_text('{}')
    write_manifest(str(run), 'leaf-disease-train')
    code, printed = _replay([bag, '--out', str(run)], tiny_model_path, capsys)
    assert code == replay_cli.EXIT_ERROR
    assert 'holds the output of leaf-disease-train' in printed
    assert (run / 'metrics.json').read_text() == '{}'


def test_replay_out_holding_the_model_in_use_is_refused(tmp_path, bag, tiny_model_path,
                                                        capsys):
    folder = tmp_path / 'R'
    folder.mkdir()
    for source in (tiny_model_path, tiny_model_path[:-5] + '.json'):
        shutil.copy(source, folder / os.path.basename(source))
    write_manifest(str(folder), 'leaf-disease-replay')  # even a folder marked as a report
    before = _tree(folder)
    code, printed = _replay([bag, '--out', str(folder)], str(folder / 'tiny.onnx'), capsys)
    assert code == replay_cli.EXIT_ERROR
    assert f'--out {folder} holds the input {folder / "tiny.onnx"}' in printed
    assert _tree(folder) == before


@pytest.mark.parametrize('harvest', ['R', 'R/harvest'])
def test_replay_harvest_overlapping_out_is_refused(tmp_path, bag, tiny_model_path, capsys,
                                                   harvest):
    out = str(tmp_path / 'R')
    code, printed = _replay([bag, '--out', out, '--harvest-tiles', str(tmp_path / harvest)],
                            tiny_model_path, capsys)
    assert code == replay_cli.EXIT_ERROR
    assert 'overlap' in printed and 'harvested' not in printed
    assert not os.path.exists(out)


def test_replay_harvest_inside_the_bag_is_refused(tmp_path, bag, tiny_model_path, capsys):
    before = _tree(bag)
    code, printed = _replay([bag, '--out', str(tmp_path / 'R'), '--harvest-tiles',
                             os.path.join(bag, 'harvest')], tiny_model_path, capsys)
    assert code == replay_cli.EXIT_ERROR
    assert 'is inside the input' in printed
    assert _tree(bag) == before


def test_replay_replaces_its_own_report_and_marks_it(tmp_path, bag, tiny_model_path, capsys):
    out = tmp_path / 'R'
    assert _replay([bag, '--out', str(out)], tiny_model_path, capsys)[0] == replay_cli.EXIT_OK
    manifest = read_manifest(str(out))
    assert manifest is not None and manifest.command == 'leaf-disease-replay'
    assert 'metrics.json' in manifest.files
    assert _replay([bag, '--out', str(out)], tiny_model_path, capsys)[0] == replay_cli.EXIT_OK
    (out / 'my_notes.txt').write_text('mine')
    code, printed = _replay([bag, '--out', str(out)], tiny_model_path, capsys)
    assert code == replay_cli.EXIT_ERROR
    assert 'files it did not write (my_notes.txt)' in printed
    assert (out / 'my_notes.txt').read_text() == 'mine'


def test_a_killed_harvest_does_not_block_the_next(tmp_path, bag, tiny_model_path, capsys):
    harvest = tmp_path / 'harvest'
    (harvest / '.harvest-staging-abc123').mkdir(parents=True)  # SIGKILL'ed harvest debris
    (harvest / '.harvest-staging-abc123' / '3.png').write_bytes(b'png')
    code, printed = _replay([bag, '--out', str(tmp_path / 'R'), '--harvest-tiles',
                             str(harvest)], tiny_model_path, capsys)
    assert code == replay_cli.EXIT_OK, printed
    assert not [n for n in os.listdir(harvest) if n.startswith('.harvest-staging-')]
    assert 'index.csv' in os.listdir(harvest)


# --- leaf-disease-split --------------------------------------------------------------------


def test_split_inside_the_data_is_refused(tmp_path, leaves_dir, capsys):
    from leaf_disease_ros.cli import split as split_cli

    data = tmp_path / 'data'
    shutil.copytree(leaves_dir, data)
    before = _tree(data)
    assert split_cli.main([str(data), '--out', str(data / 'split')]) == 1
    assert f'is inside the input {data}' in capsys.readouterr().err
    assert _tree(data) == before and not (data / 'split').exists()


def test_split_into_an_empty_folder_is_fine_and_marked(tmp_path, leaves_dir, capsys):
    from leaf_disease_ros.cli import split as split_cli

    out = tmp_path / 'split'
    out.mkdir()
    assert split_cli.main([leaves_dir, '--out', str(out)]) == 0
    manifest = read_manifest(str(out))
    assert manifest is not None and manifest.command == 'leaf-disease-split'
    assert split_cli.main([leaves_dir, '--out', str(out)]) == 1  # never over a split
    assert 'choose a new folder' in capsys.readouterr().err
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]


# --- leaf-disease-explain, leaf-disease-embed ----------------------------------------------


def test_explain_out_inside_the_photos_is_refused(photos, tiny_model_path, capsys):
    from leaf_disease_ros.cli import explain as explain_cli

    before = _tree(photos)
    code = explain_cli.main([str(photos), '--out', str(photos / 'saliency'), '--model',
                             tiny_model_path])
    assert code == 2
    assert 'is inside the input' in capsys.readouterr().err
    assert _tree(photos) == before and not (photos / 'saliency').exists()


def test_explain_marks_its_folder(tmp_path, photos, tiny_model_path, capsys):
    from leaf_disease_ros.cli import explain as explain_cli

    out = tmp_path / 'saliency'
    argv = [str(photos / 'a.jpg'), '--out', str(out), '--model', tiny_model_path, '--grid', '2']
    assert explain_cli.main(argv) == 0
    assert read_manifest(str(out)).command == 'leaf-disease-explain'
    assert explain_cli.main(argv) == 0  # its own folder: written again


@pytest.mark.parametrize('where', ['data', 'data/maps'])
def test_embed_out_in_the_data_is_refused(tmp_path, leaves_dir, tiny_embedding_model_path,
                                          capsys, where):
    from leaf_disease_ros.cli import embed as embed_cli

    data = tmp_path / 'data'
    shutil.copytree(leaves_dir, data)
    before = _tree(data)
    code = embed_cli.main([str(data), '--out', str(tmp_path / where), '--model',
                           tiny_embedding_model_path])
    assert code == 2
    assert 'is the input' in capsys.readouterr().err or where != 'data'
    assert _tree(data) == before
