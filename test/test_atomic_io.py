"""Atomic writes: all or nothing, normal permissions."""

import os
import stat

import pytest

from leaf_disease_ros.perception.atomic_io import atomic_path, atomic_write_json, atomic_write_text


def test_write_and_replace(tmp_path):
    path = tmp_path / 'sub' / 'report.json'
    atomic_write_json(str(path), {'a': 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    atomic_write_text(str(path), 'new')
    assert path.read_text() == 'new'
    assert [p.name for p in path.parent.iterdir()] == ['report.json']


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / 'card.json'
    path.write_text('old')
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            with open(tmp, 'w') as stream:
                stream.write('half')
            raise RuntimeError('interrupted')
    assert path.read_text() == 'old'
    assert [p.name for p in tmp_path.iterdir()] == ['card.json']


def test_files_get_umask_permissions_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / 'card.json'
        atomic_write_text(str(path), 'x')
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_temp_name_keeps_extension(tmp_path):
    with atomic_path(str(tmp_path / 'map.png')) as tmp:
        assert tmp.endswith('.png')
        open(tmp, 'wb').close()
