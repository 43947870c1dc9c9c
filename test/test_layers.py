"""The layer contracts of setup.cfg (import-linter) hold, and fail on an upward import."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_DIR

LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
pytestmark = pytest.mark.skipif(not os.path.exists(LINT_IMPORTS),
                                reason="import-linter is not installed (pip install '.[test]')")


def lint_imports(root: str) -> subprocess.CompletedProcess:
    """Run lint-imports with the contracts of ``root``/setup.cfg on ``root``/src."""
    env = dict(os.environ, PYTHONPATH=os.path.join(root, 'src'))
    return subprocess.run([LINT_IMPORTS, '--config', os.path.join(root, 'setup.cfg'),
                           '--no-cache'], capture_output=True, text=True, cwd=root, env=env,
                          timeout=120)


def test_the_contracts_hold_over_src():
    result = lint_imports(REPO_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Contracts: 3 kept, 0 broken.' in result.stdout


@pytest.mark.parametrize('module, line, contract', [
    ('perception/tiling.py', 'from leaf_disease_ros.geo import mapping  # noqa\n',
     'Layers'),
    ('geo/geotag.py', 'from leaf_disease_ros.inference import factory  # noqa\n', 'Layers'),
    ('replay/bag.py', 'from leaf_disease_ros.training import dataset  # noqa\n', 'Layers'),
    ('ros/conversions.py', 'import rclpy  # noqa\n', 'rclpy is imported'),
    ('inference/factory.py', 'import torch  # noqa\n', 'torch is imported only'),
    ('explain/saliency.py', 'from leaf_disease_ros.replay import report  # noqa\n',
     'Layers'),
    ('inference/base.py', 'from leaf_disease_ros.explain import saliency  # noqa\n',
     'Layers'),
    ('explain/embeddings.py', 'import torch  # noqa\n', 'torch is imported only'),
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, line, contract):
    root = tmp_path / 'repo'
    shutil.copytree(os.path.join(REPO_DIR, 'src'), root / 'src',
                    ignore=shutil.ignore_patterns('*.egg-info', '__pycache__'))
    shutil.copy(os.path.join(REPO_DIR, 'setup.cfg'), root / 'setup.cfg')
    with open(root / 'src' / 'leaf_disease_ros' / module, 'a', encoding='utf-8') as stream:
        stream.write(line)
    result = lint_imports(str(root))
    assert result.returncode != 0
    assert f'{contract}' in result.stdout and 'BROKEN' in result.stdout
