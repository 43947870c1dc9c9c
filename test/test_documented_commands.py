"""
Commands that docs/explain.md documents, run with the shipped model, their figures compared.

A block between ``<!-- figures:NAME model=ID -->`` markers holds the command (first
line, run from the repository root as written, with ``leaf-disease-embed`` meaning
this tree's module) and the line it prints. The test runs it and compares, so the
page cannot quote figures of another model (it quoted 512-D / silhouette 0.662; the
shipped model gives 1280-D / 0.831) or a command that fails with the shipped model.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_DIR, SHARED_DATASET

DOC = os.path.join(REPO_DIR, 'docs', 'explain.md')
BLOCK = re.compile(r'<!-- figures:(\S+) model=(\S+) -->\n```\n(.*?)```\n<!-- /figures:\1 -->',
                   re.S)
MODULES = {'leaf-disease-embed': 'leaf_disease_ros.cli.embed'}


def blocks():
    """Return (name, model id, command, expected lines) of every figures block."""
    with open(DOC, encoding='utf-8') as stream:
        text = stream.read()
    found = [(name, model, body.splitlines()[0], body.splitlines()[1:])
             for name, model, body in BLOCK.findall(text)]
    assert found, f'{DOC} has no figures block'
    return found


@pytest.mark.slow
@pytest.mark.parametrize('name,model_id,command,expected', blocks(),
                         ids=[b[0] for b in blocks()])
def test_documented_command_prints_its_figures(name, model_id, command, expected, tmp_path):
    if not os.path.isdir(SHARED_DATASET):
        pytest.skip(f'the shared dataset {SHARED_DATASET} is not here')
    argv = shlex.split(command)
    argv = [sys.executable, '-m', MODULES[argv[0]]] + [
        str(tmp_path / a) if a == argv[-1] and argv[-2] == '--out' else a for a in argv[1:]]
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO_DIR, 'src'))
    run = subprocess.run(argv, cwd=REPO_DIR, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr
    assert 'Traceback' not in run.stderr
    assert f"{model_id.split('@')[0]})" in run.stdout  # the shipped model, not a test one
    printed = [line for line in run.stdout.splitlines() if line.startswith('embedded ')]
    assert printed == expected, (
        f'{command} now prints {printed}: update the figures:{name} block of docs/explain.md')
