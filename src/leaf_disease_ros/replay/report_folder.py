"""
The report folder as one unit: built beside its destination, swapped in when complete.

A replay writes its whole report (metrics, figures, maps, the output bag) into a
hidden staging folder next to ``--out`` (``.<name>.partial-<random>``). Only when
every file is written is the staging folder put in the place of ``--out``, in one
step (an atomic exchange of the two folders where the kernel offers it, two renames
otherwise). So ``--out`` holds the files of one run, or is left as it was: an
interrupted run (Ctrl-C, SIGTERM), a full disk or an error removes the staging
folder and leaves no debris.

Before anything is read, :class:`ReportFolder` refuses destinations that would
destroy something (the shared rule, :mod:`leaf_disease_ros.perception.output_paths`):

- ``--out`` that is, holds or lies inside an input (the bag, the model and its card,
  the params file: the replay never writes over or next to what it reads);
- ``--out`` that exists and is not a report folder: a file, a special file, or a
  folder holding anything but an earlier replay report. A report marks itself with
  a manifest (``.leaf-disease-output.json``, command ``leaf-disease-replay``, its
  files), written by :meth:`ReportFolder.commit`; only a folder whose manifest says
  so, and that holds nothing else, is replaced. A training run (which has a
  ``metrics.json`` too) or a folder of the model in use is never replaced;
- a parent folder that cannot be written (found at start, not after the run).
"""

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from typing import List, Optional, Sequence

from leaf_disease_ros.perception.errors import OutputError
from leaf_disease_ros.perception.output_paths import check_output_folder, write_manifest

#: the command a report folder's manifest names
REPLAY_COMMAND = 'leaf-disease-replay'
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_destination(out_dir: str, inputs: Sequence[str]) -> None:
    """
    Refuse a report folder that would overwrite an input or someone else's files.

    :raises OutputError: naming the conflict and what to do instead.
    """
    check_output_folder(out_dir, inputs, what='--out', command=REPLAY_COMMAND)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux renameat2); return False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


class ReportFolder:
    """
    A staging folder beside ``out_dir``; :meth:`commit` puts it in ``out_dir``'s place.

    Use as a context manager: leaving it without :meth:`commit` (an error, an
    interrupt) removes the staging folder.

    :raises OutputError: the destination is refused (:func:`check_destination`) or its
        parent folder cannot be written.
    """

    def __init__(self, out_dir: str, inputs: Sequence[str] = ()) -> None:
        check_destination(out_dir, inputs)
        self._inputs = tuple(inputs)
        self.out_dir = os.path.abspath(out_dir)
        parent = os.path.dirname(self.out_dir.rstrip(os.sep)) or os.sep
        name = os.path.basename(self.out_dir.rstrip(os.sep))
        try:
            os.makedirs(parent, exist_ok=True)
            self.path: Optional[str] = tempfile.mkdtemp(prefix=f'.{name}.partial-', dir=parent)
            os.chmod(self.path, 0o777 & ~_umask())
        except OSError as exc:
            raise OutputError(f'cannot write the report folder {out_dir}: cannot create a '
                              f'folder in {parent} ({exc.strerror}); give a writable --out'
                              ) from exc
        self._parent = parent
        self._name = name

    @property
    def staging(self) -> str:
        """The folder to write the report into."""
        if self.path is None:
            raise OutputError('the report folder was already committed or discarded')
        return self.path

    def commit(self) -> None:
        """Mark the complete staging folder (manifest), put it in place of ``out_dir``."""
        staging = self.staging
        check_destination(self.out_dir, self._inputs)  # again: files may have come meanwhile
        write_manifest(staging, REPLAY_COMMAND)
        if not os.path.exists(self.out_dir):
            os.rename(staging, self.out_dir)
        elif _exchange(staging, self.out_dir):
            shutil.rmtree(staging, ignore_errors=True)  # now the old report
        else:
            old = tempfile.mkdtemp(prefix=f'.{self._name}.old-', dir=self._parent)
            os.rmdir(old)
            os.rename(self.out_dir, old)
            try:
                os.rename(staging, self.out_dir)
            except OSError:
                os.rename(old, self.out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        self.path = None

    def discard(self) -> None:
        """Remove the staging folder (safe to call twice, and after :meth:`commit`)."""
        path, self.path = self.path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> 'ReportFolder':
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def leftovers(out_dir: str) -> List[str]:
    """Return the staging folders of ``out_dir`` left beside it (for tests and cleanup)."""
    parent = os.path.dirname(os.path.abspath(out_dir).rstrip(os.sep)) or os.sep
    name = os.path.basename(os.path.abspath(out_dir).rstrip(os.sep))
    if not os.path.isdir(parent):
        return []
    return sorted(e for e in os.listdir(parent)
                  if e.startswith((f'.{name}.partial-', f'.{name}.old-')))
