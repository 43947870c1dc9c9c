"""
The shared output-safety rule (perception.output_paths), tested once and thoroughly.

Special files are FIFOs made in a temporary folder (never /dev); hard and symbolic
links alias an input; folders are checked for being, holding or lying inside an
input and for holding files their command did not write.
"""

import errno
import json
import os
import socket

import pytest

from leaf_disease_ros.perception.atomic_io import atomic_write_text
from leaf_disease_ros.perception.errors import OutputError
from leaf_disease_ros.perception.output_paths import (check_output_file, check_output_folder,
                                                      check_outputs_apart, folder_files,
                                                      folder_state, is_write_error, Manifest,
                                                      MANIFEST_FILE, read_manifest,
                                                      remove_partial_output, special_kind,
                                                      write_manifest)

REPLAY = 'leaf-disease-replay'


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / 'photo.jpg'
    path.write_bytes(b'precious photo')
    return str(path)


def _refused(match, function, *args, **kwargs):
    with pytest.raises(OutputError, match=match):
        function(*args, **kwargs)


# --- output files --------------------------------------------------------------------------


def test_a_new_file_beside_the_inputs_is_fine(tmp_path, photo):
    check_output_file(str(tmp_path / 'out.json'), [photo])


def test_an_existing_regular_file_may_be_replaced(tmp_path, photo):
    (tmp_path / 'out.json').write_text('{}')
    check_output_file(str(tmp_path / 'out.json'), [photo])


def test_standard_output_where_the_command_allows_it(tmp_path, photo, monkeypatch):
    check_output_file('-', [photo])
    monkeypatch.chdir(tmp_path)
    check_output_file('-', [photo], allow_stdout=False)  # a file named '-' in a free folder


def test_the_input_itself_is_refused(photo):
    _refused('is the input', check_output_file, photo, [photo])


def test_a_hard_link_to_the_input_is_refused(tmp_path, photo):
    os.link(photo, tmp_path / 'alias.jpg')
    _refused('is the input', check_output_file, str(tmp_path / 'alias.jpg'), [photo])


def test_a_hard_link_to_a_photo_of_an_input_folder_is_refused(tmp_path):
    # found by the fuzz suite: classify photos/ --json alias, alias a hard link of photos/a
    (tmp_path / 'photos' / 'deep').mkdir(parents=True)
    (tmp_path / 'photos' / 'deep' / 'a.jpg').write_bytes(b'photo')
    os.link(tmp_path / 'photos' / 'deep' / 'a.jpg', tmp_path / 'alias.jpg')
    _refused('a hard link to it', check_output_file, str(tmp_path / 'alias.jpg'),
             [str(tmp_path / 'photos')])


def test_a_symbolic_link_to_the_input_is_refused(tmp_path, photo):
    os.symlink(photo, tmp_path / 'alias.jpg')
    _refused('is the input', check_output_file, str(tmp_path / 'alias.jpg'), [photo])


def test_an_input_reached_through_a_linked_folder_is_refused(tmp_path, photo):
    os.symlink(str(tmp_path), tmp_path.parent / (tmp_path.name + '_link'))
    aliased = os.path.join(str(tmp_path) + '_link', 'photo.jpg')
    try:
        _refused('is the input', check_output_file, aliased, [photo])
    finally:
        os.unlink(str(tmp_path) + '_link')


def test_a_symbolic_link_to_another_file_is_refused(tmp_path, photo):
    (tmp_path / 'real.json').write_text('{}')
    os.symlink('real.json', tmp_path / 'link.json')
    _refused('is a symbolic link', check_output_file, str(tmp_path / 'link.json'), [photo])


def test_a_file_inside_an_input_folder_is_refused(tmp_path, photo):
    _refused('is inside the input', check_output_file, str(tmp_path / 'b.jpg'),
             [str(tmp_path)])


def test_a_fifo_is_refused_and_left_a_fifo(tmp_path, photo):
    fifo = str(tmp_path / 'pipe')
    os.mkfifo(fifo)
    _refused('is a FIFO', check_output_file, fifo, [photo])
    assert special_kind(fifo).startswith('a FIFO')


def test_a_socket_is_refused(tmp_path, photo):
    path = str(tmp_path / 'sock')
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(path)
        _refused('is a socket', check_output_file, path, [photo])
    finally:
        server.close()


def test_a_folder_is_refused_as_a_file(tmp_path, photo):
    _refused('is a folder; give a file name', check_output_file, str(tmp_path), [photo])


def test_a_missing_parent_folder_is_refused_unless_the_command_creates_it(tmp_path, photo):
    _refused('does not exist', check_output_file, str(tmp_path / 'no' / 'out.json'), [photo])
    check_output_file(str(tmp_path / 'no' / 'out.json'), [photo], create_parent=True)


def test_a_parent_that_is_a_file_is_refused(tmp_path, photo):
    _refused('is not a folder', check_output_file, str(tmp_path / 'photo.jpg' / 'o.json'),
             [], create_parent=True)


def test_an_empty_name_is_refused():
    _refused('is empty', check_output_file, '', [])


def test_missing_inputs_are_skipped(tmp_path):
    check_output_file(str(tmp_path / 'out.json'), [str(tmp_path / 'missing'), ''])


def test_the_message_names_the_option(tmp_path, photo):
    _refused('^--out ', check_output_file, photo, [photo], what='--out')


# --- the atomic writer never renames over a special file -----------------------------------


def test_the_atomic_writer_refuses_a_fifo(tmp_path):
    fifo = str(tmp_path / 'pipe')
    os.mkfifo(fifo)
    _refused('special file', atomic_write_text, fifo, 'x')
    assert special_kind(fifo).startswith('a FIFO')
    assert os.listdir(tmp_path) == ['pipe']


# --- output folders ------------------------------------------------------------------------


def test_a_new_or_empty_folder_is_fine(tmp_path, photo):
    assert check_output_folder(str(tmp_path / 'new'), [photo], command=REPLAY) is None
    (tmp_path / 'empty').mkdir()
    assert check_output_folder(str(tmp_path / 'empty'), [photo], command=REPLAY) is None


def test_a_folder_holding_the_input_is_refused(tmp_path, photo):
    _refused('holds the input', check_output_folder, str(tmp_path), [photo], command=REPLAY)


def test_a_folder_holding_the_input_through_a_link_is_refused(tmp_path, photo):
    link = tmp_path.parent / (tmp_path.name + '_alias')
    os.symlink(str(tmp_path), link)
    try:
        _refused('holds the input', check_output_folder, str(tmp_path / 'x' / '..'),
                 [str(link / 'photo.jpg')], command=REPLAY)
    finally:
        os.unlink(link)


def test_a_folder_inside_an_input_folder_is_refused(tmp_path):
    (tmp_path / 'data').mkdir()
    _refused('is inside the input', check_output_folder, str(tmp_path / 'data' / 'split'),
             [str(tmp_path / 'data')], command='leaf-disease-split')


def test_the_input_folder_itself_is_refused(tmp_path):
    (tmp_path / 'data').mkdir()
    _refused('is the input', check_output_folder, str(tmp_path / 'data'),
             [str(tmp_path / 'data')], command=REPLAY)


def test_a_file_or_a_fifo_is_not_a_folder(tmp_path, photo):
    _refused('exists and is not a folder', check_output_folder, photo, [], command=REPLAY)
    os.mkfifo(tmp_path / 'pipe')
    _refused('it is a FIFO', check_output_folder, str(tmp_path / 'pipe'), [], command=REPLAY)


def test_a_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'metrics.json').write_text('{}')
    (tmp_path / 'run' / 'checkpoint_best.pt').write_text('weights')
    _refused('was not made by leaf-disease-replay .*checkpoint_best.pt', check_output_folder,
             str(tmp_path / 'run'), [], command=REPLAY)


def test_a_folder_of_another_command_is_refused(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'metrics.json').write_text('{}')
    write_manifest(str(run), 'leaf-disease-train')
    _refused('holds the output of leaf-disease-train', check_output_folder, str(run),
             [], command=REPLAY)


def test_an_earlier_output_of_the_same_command_may_be_replaced(tmp_path):
    report = tmp_path / 'report'
    (report / 'tiles' / 'esca').mkdir(parents=True)
    (report / 'metrics.json').write_text('{}')
    (report / 'tiles' / 'esca' / 'a.png').write_bytes(b'png')
    write_manifest(str(report), REPLAY)
    manifest = check_output_folder(str(report), [], command=REPLAY)
    assert manifest == Manifest(REPLAY, ('metrics.json', 'tiles/esca/a.png'))


def test_an_earlier_output_with_files_added_is_refused(tmp_path):
    report = tmp_path / 'report'
    report.mkdir()
    (report / 'metrics.json').write_text('{}')
    write_manifest(str(report), REPLAY)
    (report / 'notes.txt').write_text('mine')
    _refused('files it did not write \\(notes.txt\\)', check_output_folder, str(report), [],
             command=REPLAY)


def test_a_command_writing_into_its_folder_may_meet_files_of_its_unfinished_run(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    write_manifest(str(run), 'leaf-disease-train', files=[])
    (run / 'checkpoint_last.pt').write_text('x')
    assert check_output_folder(str(run), [], command='leaf-disease-train',
                               replaces_folder=False) == Manifest('leaf-disease-train', ())
    _refused('files it did not write', check_output_folder, str(run), [],
             command='leaf-disease-train')


def test_a_rerun_can_be_refused_with_a_hint(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'checkpoint_last.pt').write_text('x')
    write_manifest(str(run), 'leaf-disease-train')
    _refused('pass --resume', check_output_folder, str(run), [], command='leaf-disease-train',
             allow_rerun=False, rerun_hint='pass --resume or give a new name')


def test_a_manifest_that_is_not_one_counts_as_no_manifest(tmp_path):
    folder = tmp_path / 'out'
    folder.mkdir()
    for text in ('not json', '[]', '{"command": 3, "files": []}',
                 '{"command": "leaf-disease-replay", "files": [1]}'):
        (folder / MANIFEST_FILE).write_text(text)
        assert read_manifest(str(folder)) is None
        _refused('was not made by', check_output_folder, str(folder), [], command=REPLAY)


def test_a_manifest_that_is_a_fifo_is_not_read(tmp_path):
    folder = tmp_path / 'out'
    folder.mkdir()
    os.mkfifo(folder / MANIFEST_FILE)
    assert read_manifest(str(folder)) is None  # would block if it were opened


def test_the_manifest_lists_links_without_following_them(tmp_path):
    folder = tmp_path / 'split'
    (folder / 'val').mkdir(parents=True)
    os.symlink(str(tmp_path), folder / 'val' / 'loop')
    (folder / 'a.txt').write_text('a')
    write_manifest(str(folder), 'leaf-disease-split')
    assert folder_files(str(folder)) == ['a.txt', 'val/loop']
    with open(folder / MANIFEST_FILE, encoding='utf-8') as stream:
        assert json.load(stream)['files'] == ['a.txt', 'val/loop']


# --- outputs of one run --------------------------------------------------------------------


def test_overlapping_outputs_are_refused(tmp_path):
    out = str(tmp_path / 'R')
    _refused('overlap', check_outputs_apart, [('--out', out), ('--harvest-tiles', out)])
    _refused('overlap', check_outputs_apart,
             [('--out', out), ('--harvest-tiles', os.path.join(out, 'harvest'))])
    _refused('overlap', check_outputs_apart,
             [('--out', os.path.join(out, 'report')), ('--harvest-tiles', out)])
    check_outputs_apart([('--out', out), ('--harvest-tiles', out + '_harvest'),
                         ('--json', '')])


def test_a_failed_run_leaves_no_partial_folder(tmp_path):
    new = tmp_path / 'new'
    before_new = folder_state(str(new))
    (new / 'sub').mkdir(parents=True)
    (new / 'sub' / 'a.png').write_text('half')
    remove_partial_output(str(new), before_new)
    assert not new.exists()
    earlier = tmp_path / 'earlier'
    earlier.mkdir()
    (earlier / 'old.png').write_text('kept')
    write_manifest(str(earlier), 'leaf-disease-explain')
    before = folder_state(str(earlier))
    (earlier / 'deep').mkdir()
    (earlier / 'deep' / 'b.png').write_text('half')
    remove_partial_output(str(earlier), before)
    assert sorted(os.listdir(earlier)) == sorted([MANIFEST_FILE, 'old.png'])


def test_a_write_error_is_told_from_a_read_error(tmp_path):
    out = str(tmp_path / 'out')
    assert is_write_error(OSError(errno.ENOSPC, 'No space left on device'), [out])
    assert is_write_error(OSError(errno.EFBIG, 'File too large', '/elsewhere/x'), [out])
    assert is_write_error(PermissionError(errno.EACCES, 'denied', out + '/a.png'), [out])
    assert not is_write_error(PermissionError(errno.EACCES, 'denied', str(tmp_path / 'bag')),
                              [out])
