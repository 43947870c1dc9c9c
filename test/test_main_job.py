"""
The README's main job, run as written: the shipped model replays the shipped demo.

The README's first command ends with ``leaf-disease-replay`` and no argument: the
installed command replays the demo recording installed with the package, with the
shipped model, into ``./replay_report``. This test runs that command (the installed
console script of this environment, in a fresh folder) and compares what it prints
with the figures of record in ``docs/replay.md`` (the block between the
``figures:demo-summary`` markers, which also names the model they belong to). Only
the speed figures (frames/s, latency) depend on the machine and are not compared.

When the shipped model or the demo changes, this test fails until the block in
``docs/replay.md`` is updated with the new figures: the documentation cannot drift.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_DIR
import leaf_disease_ros
from leaf_disease_ros.perception.model_card import load_card

DOC = os.path.join(REPO_DIR, 'docs', 'replay.md')
README = os.path.join(REPO_DIR, 'README.md')
BLOCK = re.compile(r'<!-- figures:demo-summary model=(\S+) -->\n```\n(.*?)```\n'
                   r'<!-- /figures:demo-summary -->', re.S)


def normalise(lines):
    """Return the summary lines without what depends on the machine or the install path."""
    out = []
    for line in lines:
        if line.startswith('pipeline latency per frame'):
            continue
        line = re.sub(r'^replayed .*?/demo/vineyard_demo:', 'replayed <demo>:', line)
        line = re.sub(r'[0-9.]+ frames/s', '<n> frames/s', line)
        out.append(line)
    return out


def documented():
    """Return (model id, summary lines) of the figures of record in docs/replay.md."""
    with open(DOC, encoding='utf-8') as stream:
        match = BLOCK.search(stream.read())
    assert match, 'docs/replay.md lost its figures:demo-summary block'
    return match.group(1), match.group(2).strip().splitlines()


def test_the_readme_main_job_is_the_replay_without_arguments():
    with open(README, encoding='utf-8') as stream:
        readme = stream.read()
    first_block = readme.split('```bash\n', 1)[1].split('```', 1)[0].strip()
    assert first_block.endswith('&& .venv/bin/leaf-disease-replay'), first_block


@pytest.mark.slow
def test_the_readme_main_job_reproduces_the_documented_figures(tmp_path):
    model_id, expected = documented()
    script = shutil.which('leaf-disease-replay', path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, '-m', 'leaf_disease_ros.cli.replay']
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(leaf_disease_ros.__file__)))
    env['PYTHONPATH'] = os.pathsep.join(p for p in (package_root, env.get('PYTHONPATH')) if p)
    run = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert 'Traceback' not in run.stderr
    assert 'no bag given: replaying the demo recording' in run.stderr
    with open(tmp_path / 'replay_report' / 'metrics.json', encoding='utf-8') as stream:
        metrics = json.load(stream)
    shipped = load_card(os.path.splitext(metrics['model']['model_path'])[0] + '.json')
    assert metrics['model']['model'] == shipped.name == 'leaf_lite0_field'  # not a test model
    assert metrics['model']['model_id'] == model_id, (
        f"the shipped model is now {metrics['model']['model_id']}: run leaf-disease-replay and "
        'update the figures:demo-summary block of docs/replay.md (figures and model id)')
    assert normalise(run.stdout.strip().splitlines()) == normalise(expected), (
        'leaf-disease-replay no longer prints the figures of record in docs/replay.md:\n'
        + run.stdout)
    for name in ('report.md', 'map.png', 'findings.geojson', 'findings.kml',
                 'confusion_matrix.png', 'detections'):
        assert os.path.exists(tmp_path / 'replay_report' / name), name
