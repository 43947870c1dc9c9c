"""
Run a command of the package as an unprivileged user, for permission and write faults.

The tests run as root, and root reads every file whatever its mode, so an unreadable
file or model is only unreadable to another user: :func:`run_module` starts the
command in a subprocess that drops to ``nobody`` (uid/gid 65534) with ``os.setuid`` in
``preexec_fn``. Optional resource limits apply there too (``RLIMIT_FSIZE`` makes a write
past the limit fail with ``EFBIG``: a full disk without filling one; Python ignores
SIGXFSZ, so the write raises instead of killing the process).

The test interpreter may live where ``nobody`` cannot reach it (a pyenv under a
private ``/root``): the same Python version elsewhere (``/usr/bin/python3.X``) is then
used with this interpreter's ``site-packages`` on its path. When neither runs as
``nobody``, or the tests do not run as root, the calling test is skipped.

:func:`open_folder` makes a temporary folder ``nobody`` can enter (pytest's own are
private to root).
"""

import functools
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

import leaf_disease_ros

NOBODY = 65534
SRC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(leaf_disease_ros.__file__)))


def _drop(limits: Sequence[Tuple[int, int]]):
    def preexec() -> None:
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    return preexec


@functools.lru_cache(maxsize=1)
def _interpreter() -> Optional[Tuple[str, Tuple[str, ...]]]:
    """Return (python, extra path entries) that runs the package as nobody, or None."""
    if not hasattr(os, 'geteuid') or os.geteuid() != 0:
        return None
    version = f'python{sys.version_info[0]}.{sys.version_info[1]}'
    site = (sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib'])
    candidates = [(sys.executable, ())]
    for folder in ('/usr/bin', '/usr/local/bin'):
        other = os.path.join(folder, version)
        if os.path.isfile(other) and os.path.realpath(other) != os.path.realpath(sys.executable):
            candidates.append((other, site))
    for python, extra in candidates:
        env = _env(extra)
        try:
            probe = subprocess.run([python, '-c', 'import numpy, cv2, leaf_disease_ros'],
                                   preexec_fn=_drop(()), env=env, cwd='/',
                                   capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return python, extra
    return None


def _env(extra: Sequence[str]) -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([SRC_DIR, *extra])
    env['HOME'] = '/'
    env.pop('PYTHONHOME', None)
    return env


def run_module(module: str, args: Sequence[str], cwd: str,
               fsize_bytes: Optional[int] = None, timeout_s: float = 300
               ) -> subprocess.CompletedProcess:
    """
    Run ``python -m module args`` as ``nobody`` in ``cwd``; return the finished process.

    :param fsize_bytes: the largest file the command may write (RLIMIT_FSIZE), if any.
    """
    found = _interpreter()
    if found is None:
        pytest.skip('needs root to drop to an unprivileged user, and a Python that user '
                    'can run')
    python, extra = found
    limits: List[Tuple[int, int]] = []
    if fsize_bytes is not None:
        limits.append((resource.RLIMIT_FSIZE, fsize_bytes))
    return subprocess.run([python, '-m', module, *args], preexec_fn=_drop(limits),
                          env=_env(extra), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)


class open_folder:  # noqa: N801 - used like tempfile.TemporaryDirectory
    """A temporary folder ``nobody`` can enter and write in (a context manager)."""

    def __enter__(self) -> str:
        self.path = tempfile.mkdtemp(prefix='leaf-unprivileged-')
        os.chmod(self.path, 0o777)
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def give_away(path: str) -> None:
    """Hand ``path`` (a folder, recursively) to ``nobody``, so nobody can write in it."""
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.chown(name, NOBODY, NOBODY)
