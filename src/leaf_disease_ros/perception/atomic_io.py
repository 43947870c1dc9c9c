"""
Atomic file output: a file is either its old complete self or its new complete self.

Every report, card, sidecar or map the package writes goes through here: the data is
written to a temporary file in the destination folder, flushed and fsync'ed, then
renamed over the destination (``os.replace`` is atomic on POSIX within a file
system). An interrupted run never leaves a half-written file behind, and nothing is
ever renamed over a special file (a FIFO, a device, a socket): that is an
:class:`~leaf_disease_ros.perception.errors.OutputError`.
"""

import contextlib
import json
import os
import stat
import tempfile
from typing import Any, Iterator

from leaf_disease_ros.perception.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """
    Yield a temporary path beside ``path``; rename it over ``path`` on success.

    For libraries that want a file name rather than bytes (matplotlib, OpenCV). On
    an exception the temporary file is removed and ``path`` is left untouched.
    The temporary name keeps the destination's extension so format sniffing works.

    :raises OutputError: ``path`` is a FIFO, a device or a socket (checked before and
        again just before the rename).
    """
    _refuse_special(path)
    folder = os.path.dirname(os.path.abspath(path)) or '.'
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix=f'.{stem}.', suffix=f'.tmp{ext}', dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, 'rb+') as stream:
            os.fsync(stream.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would,
        # so an installed card or a report is readable by the robot's other users.
        os.chmod(tmp, 0o666 & ~_umask())
        _refuse_special(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _refuse_special(path: str) -> None:
    """Raise OutputError when ``path`` exists and is neither a file, a folder nor a link."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise OutputError(f'{path} is a special file (FIFO, device or socket), not a regular '
                          'file: it is never replaced. Give a regular file name')


def _umask() -> int:
    # os.umask can only be read by setting it; restore it at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as stream:
            stream.write(data)


def atomic_write_text(path: str, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: str, document: Any) -> None:
    """Write ``document`` as indented JSON (trailing newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=False) + '\n')
