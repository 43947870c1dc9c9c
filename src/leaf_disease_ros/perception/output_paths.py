"""
The one output-safety rule every command applies to its output paths.

An output never lands on an input, on a special file or in a folder the command did
not make. Before any work is done, each command checks each of its outputs:

- :func:`check_output_file` for an output file (``--json``, ``--out m.onnx``): it
  must not be an input (same device and inode, so hard links and symbolic links
  count), must not lie inside an input folder, and must be absent or a regular file
  (a FIFO, a device, a socket, a folder or a symbolic link is refused: the atomic
  write renames over the path and would replace it). ``-`` means standard output
  where the command allows it.
- :func:`check_output_folder` for an output folder (``--out DIR``): it must not be,
  hold or lie inside an input, must be absent or a folder, and, when it holds
  anything, must be an earlier output of the *same* command: a folder that command
  made marks itself with a manifest (:data:`MANIFEST_FILE`, written by
  :func:`write_manifest`, listing the command and the files it wrote). A rerun may
  replace such a folder, and only when it holds nothing but the files of its
  manifest (for a command that replaces the folder as a whole). An empty folder (one
  the user just made) is fine.
- :func:`check_outputs_apart` refuses two outputs of one run that overlap (one is,
  holds or lies inside the other).

Every refusal is an :class:`OutputError` naming the conflict and what to do instead.
:func:`folder_state` and :func:`remove_partial_output` undo what a command that writes
straight into its folder wrote before a write failed (full disk, file size limit), so
no partial folder is left. :func:`is_write_error` tells a failed write of an output
(full disk, file too large, read-only output) from a failed read of an input, so a
command says which of the two went wrong. Inputs that do not exist are skipped (the
command reports them itself). This module reads the file system; it writes nothing
but manifests, and removes only what a failed run of a command wrote.
"""

from dataclasses import dataclass
import errno
import json
import os
import shutil
import stat
from typing import List, Optional, Sequence, Tuple

from leaf_disease_ros.perception.atomic_io import atomic_write_json
from leaf_disease_ros.perception.errors import OutputError

#: the manifest a command leaves in an output folder it made (hidden, JSON)
MANIFEST_FILE = '.leaf-disease-output.json'
MANIFEST_FORMAT = 1
_SHOWN = 5  # names shown in a message before "..."
_MANIFEST_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Manifest:
    """What a command wrote into an output folder: its name and the files (relative)."""

    command: str
    files: Tuple[str, ...]


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _inside(path: str, folder: str) -> bool:
    """Return whether real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _shown(names: Sequence[str]) -> str:
    return ', '.join(names[:_SHOWN]) + (', ...' if len(names) > _SHOWN else '')


def special_kind(path: str) -> str:
    """
    Return what ``path`` is when it exists and is not a regular file or folder, else ''.

    Symbolic links are not followed: a link is ``'a symbolic link'``.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return ''
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ''
    for test, name in ((stat.S_ISLNK, 'a symbolic link'), (stat.S_ISFIFO, 'a FIFO (named pipe)'),
                       (stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'),
                       (stat.S_ISSOCK, 'a socket')):
        if test(mode):
            return name
    return 'a special file'


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _hard_link_in(path: str, folder: str) -> str:
    """
    Return a file below ``folder`` that is ``path`` under another name, else ''.

    Only a regular file with more than one link can be one; only then is ``folder``
    searched (links not followed).
    """
    try:
        info = os.stat(path)
    except OSError:
        return ''
    if not stat.S_ISREG(info.st_mode) or info.st_nlink < 2 or not os.path.isdir(folder):
        return ''
    for root, _, files in os.walk(folder):
        for name in files:
            candidate = os.path.join(root, name)
            try:
                other = os.lstat(candidate)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                return candidate
    return ''


def _existing_inputs(inputs: Sequence[str]) -> List[str]:
    return [item for item in inputs if item and os.path.exists(item)]


def check_apart_from_inputs(path: str, inputs: Sequence[str], what: str, folder: bool) -> None:
    """
    Refuse an output that is an input, lies inside an input folder or (a folder) holds one.

    The part of :func:`check_output_file` and :func:`check_output_folder` about inputs,
    for a command that checks the rest itself.

    :raises OutputError: naming the input and what to do instead.
    """
    out = _real(path)
    for item in _existing_inputs(inputs):
        source = _real(item)
        if _same_file(path, item) or out == source:
            raise OutputError(f'{what} {path} is the input {item}: writing it would destroy '
                              'the input. Give an output path outside every input')
        if folder and _inside(source, out):
            raise OutputError(f'{what} {path} holds the input {item}: the output would '
                              'replace or mix with it. Give an output folder outside every '
                              'input')
        if _inside(out, source) and os.path.isdir(item):
            raise OutputError(f'{what} {path} is inside the input {item}: outputs never go '
                              'into an input folder (a later run would read them as input). '
                              'Give an output path outside it')
        linked = _hard_link_in(path, item)
        if linked:
            raise OutputError(f'{what} {path} is the input {linked} (a hard link to it): '
                              'writing it would destroy the input. Give an output path '
                              'outside every input')


def _check_parent(path: str, what: str, create_parent: bool) -> None:
    parent = os.path.dirname(os.path.abspath(path).rstrip(os.sep)) or os.sep
    probe = parent
    while create_parent and not os.path.lexists(probe):
        probe = os.path.dirname(probe) or os.sep
    if not os.path.isdir(probe):
        if os.path.lexists(probe):
            raise OutputError(f'{what} {path}: {probe} is not a folder; give a path in a '
                              'folder')
        raise OutputError(f'{what} {path}: the folder {parent} does not exist; create it or '
                          'give a path in an existing folder')
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f'{what} {path}: cannot write in {probe} (permission denied); give '
                          'a path in a folder you can write')


def check_output_file(path: str, inputs: Sequence[str] = (), *, what: str = '--json',
                      allow_stdout: bool = True, create_parent: bool = False) -> None:
    """
    Refuse an output file that would destroy an input or a special file.

    :param path: the output file; ``-`` is standard output when ``allow_stdout``.
    :param inputs: every file and folder the command reads.
    :param what: the option that named ``path``, for messages.
    :param create_parent: the command creates missing parent folders (else the parent
        folder must exist).
    :raises OutputError: ``path`` is an input or inside an input folder, is a folder,
        a symbolic link or a special file, or its folder cannot be written.
    """
    if path == '-' and allow_stdout:
        return
    if not path:
        raise OutputError(f'{what} is empty; give a file name')
    kind = special_kind(path)
    if kind == 'a symbolic link':
        check_apart_from_inputs(path, inputs, what, folder=False)
        raise OutputError(f'{what} {path} is a symbolic link (to {os.readlink(path)}): the '
                          'output would replace the link. Give the real file or a new name')
    if kind:
        hint = f', or {what} - for standard output' if allow_stdout else ''
        raise OutputError(f'{what} {path} is {kind}, not a regular file: the output would '
                          f'replace it. Give a regular file name{hint}')
    if os.path.isdir(path):
        raise OutputError(f'{what} {path} is a folder; give a file name (e.g. '
                          f'{os.path.join(path, "out.json")})')
    check_apart_from_inputs(path, inputs, what, folder=False)
    _check_parent(path, what, create_parent)


def read_manifest(folder: str) -> Optional[Manifest]:
    """Return the manifest of an output folder, or None when it has none (or a bad one)."""
    path = os.path.join(folder, MANIFEST_FILE)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) or os.path.getsize(path) > \
                _MANIFEST_MAX_BYTES:
            return None
        with open(path, encoding='utf-8') as stream:
            document = json.load(stream)
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    command, files = document.get('command'), document.get('files')
    if not isinstance(command, str) or not isinstance(files, list) or \
            not all(isinstance(f, str) for f in files):
        return None
    return Manifest(command, tuple(files))


def folder_files(folder: str) -> List[str]:
    """
    Return every file below ``folder`` as sorted relative paths (not the manifest).

    Symbolic links are listed, never followed; empty folders are not listed.
    """
    found: List[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        names = files + [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MANIFEST_FILE:
                found.append(rel.replace(os.sep, '/'))
    return sorted(found)


def write_manifest(folder: str, command: str, files: Optional[Sequence[str]] = None) -> None:
    """
    Mark ``folder`` as an output of ``command`` (atomically).

    :param files: the files it wrote, relative to ``folder``; default: every file
        below ``folder`` now (:func:`folder_files`).
    """
    listed = folder_files(folder) if files is None else sorted(files)
    atomic_write_json(os.path.join(folder, MANIFEST_FILE),
                      {'format': MANIFEST_FORMAT, 'command': command, 'files': listed})


def check_output_folder(path: str, inputs: Sequence[str] = (), *, what: str = '--out',
                        command: str, allow_rerun: bool = True, rerun_hint: str = '',
                        replaces_folder: bool = True, create_parent: bool = True
                        ) -> Optional[Manifest]:
    """
    Refuse an output folder that would destroy an input or someone else's files.

    :param path: the output folder.
    :param inputs: every file and folder the command reads.
    :param command: the command writing it (e.g. ``leaf-disease-replay``); a folder
        whose manifest names another command is refused.
    :param allow_rerun: whether an earlier output of ``command`` may be replaced; when
        False any non-empty folder is refused, ``rerun_hint`` saying what to do.
    :param replaces_folder: the command replaces the folder as a whole, so an earlier
        output holding files its manifest does not list is refused; False for a command
        that writes its own files into the folder and leaves others alone (a resumed
        training run).
    :returns: the manifest of the earlier output that will be replaced, or None when
        the folder is new or empty.
    :raises OutputError: naming the conflict and what to do instead.
    """
    if not path:
        raise OutputError(f'{what} is empty; give a folder name')
    if os.path.lexists(path) and not os.path.isdir(path):
        kind = special_kind(path) or 'a file'
        raise OutputError(f'{what} {path} exists and is not a folder (it is {kind}); give a '
                          'new or empty folder')
    check_apart_from_inputs(path, inputs, what, folder=True)
    if not os.path.isdir(path):
        _check_parent(path, what, create_parent)
        return None
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise OutputError(f'{what} {path}: cannot read the folder ({exc.strerror}); give a '
                          'folder you can read and write') from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f'{what} {path}: cannot write in it (permission denied); give a '
                          'folder you can write')
    if not entries:
        return None
    manifest = read_manifest(path)
    if manifest is None:
        raise OutputError(f'{what} {path} is not empty and was not made by {command} (it holds '
                          f'{_shown(entries)}): it is never written over. Give a new or '
                          'empty folder')
    if manifest.command != command:
        raise OutputError(f'{what} {path} holds the output of {manifest.command}, not of '
                          f'{command}: it is never written over. Give a new or empty folder')
    if not allow_rerun:
        raise OutputError(f'{what} {path} holds an earlier output of {command}: '
                          + (rerun_hint or 'give a new or empty folder'))
    strangers = sorted(set(folder_files(path)) - set(manifest.files)) if replaces_folder else []
    if strangers:
        raise OutputError(f'{what} {path} holds an earlier output of {command} and files it '
                          f'did not write ({_shown(strangers)}): it is never written over. '
                          'Move those files away, or give a new or empty folder')
    return manifest


def folder_state(path: str) -> Optional[Tuple[str, ...]]:
    """Return the files below output folder ``path`` now (manifest too), None when absent."""
    if not os.path.isdir(path):
        return None
    return tuple(folder_files(path)) + ((MANIFEST_FILE,) if os.path.lexists(
        os.path.join(path, MANIFEST_FILE)) else ())


def remove_partial_output(path: str, before: Optional[Tuple[str, ...]]) -> None:
    """
    Remove what a failed run wrote into output folder ``path`` (see :func:`folder_state`).

    A folder that was absent (``before`` None) is removed whole; otherwise the files
    that were not there before are removed (an earlier output of the same command keeps
    its files), then the folders left empty. Errors are ignored: this runs after one.
    """
    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    kept = set(before)
    for name in folder_files(path) + [MANIFEST_FILE]:
        if name not in kept:
            try:
                os.remove(os.path.join(path, name))
            except OSError:
                pass
    for root, _, _ in sorted(os.walk(path), key=lambda item: -len(item[0])):
        if root != path:
            try:
                os.rmdir(root)  # only when empty
            except OSError:
                pass


#: errors only a write raises: disk full, file size limit (RLIMIT_FSIZE), quota, read-only
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


def is_write_error(exc: OSError, outputs: Sequence[Optional[str]]) -> bool:
    """
    Return whether ``exc`` is a failed write of one of ``outputs`` (not a failed read).

    It is when its errno only a write raises (:data:`WRITE_ERRNOS`), when it names a
    file inside an output, or when it names no file at all (the writers of the commands
    name none; a reader that fails names its file).
    """
    if exc.errno in WRITE_ERRNOS:
        return True
    names = [name for name in (exc.filename, exc.filename2) if isinstance(name, str)]
    if not names:
        return True
    given = [_real(path) for path in outputs if path]
    return any(_inside(_real(name), out) for name in names for out in given)


def check_outputs_apart(outputs: Sequence[Tuple[str, str]]) -> None:
    """
    Refuse two outputs of one run that overlap.

    :param outputs: (option, path) pairs; empty paths are skipped.
    :raises OutputError: one output is, holds or lies inside another.
    """
    given = [(what, path, _real(path)) for what, path in outputs if path]
    for k, (what_a, path_a, real_a) in enumerate(given):
        for what_b, path_b, real_b in given[k + 1:]:
            if _inside(real_a, real_b) or _inside(real_b, real_a):
                raise OutputError(f'{what_a} {path_a} and {what_b} {path_b} overlap: one '
                                  'output would replace or mix with the other. Give them '
                                  'separate folders')
