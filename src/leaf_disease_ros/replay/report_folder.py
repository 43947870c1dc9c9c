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
destroy something:

- ``--out`` that is, holds or lies inside an input (the replay never writes over or
  next to the bag it reads);
- ``--out`` that exists and is not a report folder: a file, or a folder holding
  anything but an earlier report (one with ``metrics.json``, or only report files);
- a parent folder that cannot be written (found at start, not after the run).
"""

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from typing import List, Optional, Sequence

from leaf_disease_ros.perception.errors import OutputError
from leaf_disease_ros.replay.report import (CONFUSION_FILE, GEOJSON_FILE, KML_FILE, MAP_FILE,
                                            METRICS_FILE, REPORT_FILE)

DETECTIONS_BAG = 'detections.mcap'
#: the files a replay writes into its report folder
REPORT_ENTRIES = frozenset((METRICS_FILE, REPORT_FILE, CONFUSION_FILE, MAP_FILE, GEOJSON_FILE,
                            KML_FILE, DETECTIONS_BAG))
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _inside(path: str, folder: str) -> bool:
    """Return whether ``path`` is ``folder`` or below it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_destination(out_dir: str, inputs: Sequence[str]) -> None:
    """
    Refuse a report folder that would overwrite an input or someone else's files.

    :raises OutputError: naming the conflict and what to do instead.
    """
    out = _real(out_dir)
    for item in inputs:
        source = _real(item)
        if _inside(source, out):
            raise OutputError(f'--out {out_dir} holds the input {item}: the new report would '
                              'replace it. Give a report folder outside the recording')
        if _inside(out, source):
            raise OutputError(f'--out {out_dir} is inside the input {item}: the replay never '
                              'writes into a recording. Give a report folder outside it')
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f'--out {out_dir} exists and is not a folder')
    if os.path.isdir(out_dir):
        entries = sorted(os.listdir(out_dir))
        strangers = [e for e in entries if e not in REPORT_ENTRIES]
        if strangers and METRICS_FILE not in entries:
            shown = ', '.join(strangers[:5]) + (', ...' if len(strangers) > 5 else '')
            raise OutputError(f'--out {out_dir} is a folder that is not a replay report (it '
                              f'holds {shown}); the report replaces the folder as a whole, so '
                              'give a new or empty folder')


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
        """Put the complete staging folder in place of ``out_dir`` (replacing an old one)."""
        staging = self.staging
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
