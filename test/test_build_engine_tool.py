"""
leaf-disease-build-engine exits cleanly where it cannot build: run as a subprocess.

Where tensorrt, pycuda or a GPU must look absent (or present, to reach a later
check), a folder put first on PYTHONPATH shadows them with tiny modules that only
answer the environment probe (version, device count, name, compute capability, SM
count, memory, and the DLA cores of a TensorRT runtime made with the context pushed).
Every case below exits before any GPU work; none imitates a build.
"""

import os
import stat
import subprocess
import sys
from typing import Dict, List, Optional

import pytest

from engine_helpers import make_engine_files, ORIN
from leaf_disease_ros.perception.model_card import ModelCard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the installed command leaf-disease-build-engine, run from this source tree
TOOL = ['-c', 'import sys; from leaf_disease_ros.cli.build_engine import main; '
        'sys.exit(main(sys.argv[1:]))']

HIDDEN = {'tensorrt.py': "raise ImportError(\"No module named 'tensorrt'\")\n"}
# the runtime probe: Runtime(logger).num_DLA_cores, asked with the primary context pushed
TRT_PROBE = """
__version__ = '{version}'


class Logger:
    WARNING = 2

    def __init__(self, severity):
        self.severity = severity


class Runtime:
    def __init__(self, logger):
        import pycuda.driver
        assert pycuda.driver.PUSHED, 'tensorrt.Runtime created with no CUDA context current'

    num_DLA_cores = 0
"""


def _tensorrt(version: str) -> Dict[str, str]:
    return {'tensorrt.py': TRT_PROBE.replace('{version}', version)}


TRT_10_3 = _tensorrt('10.3.0')
NO_PYCUDA = {'pycuda/__init__.py': "raise ImportError(\"No module named 'pycuda'\")\n"}
DRIVER = """
PUSHED = []


class Error(Exception):
    pass


class _Primary:
    def push(self):
        PUSHED.append(self)


class Context:
    @staticmethod
    def pop():
        PUSHED.pop()


def init():
    pass


class Device:
    def __init__(self, index):
        self.index = index

    @staticmethod
    def count():
        return {count}

    def name(self):
        return 'Orin'

    def compute_capability(self):
        return (8, 7)

    def get_attribute(self, attribute):
        return 16

    def total_memory(self):
        return 30 << 30

    def retain_primary_context(self):
        return _Primary()


class device_attribute:
    MULTIPROCESSOR_COUNT = 16
"""


def _driver(count: int) -> Dict[str, str]:
    return {'pycuda/__init__.py': '', 'pycuda/driver.py': DRIVER.replace('{count}', str(count))}


def run_tool(args: List[str], shim_root: str, shims: Optional[Dict[str, str]] = None
             ) -> subprocess.CompletedProcess:
    """Run the tool with ``shims`` (relative path -> source) first on PYTHONPATH."""
    shim = os.path.join(shim_root, 'shim')
    for relative, source in (shims or {}).items():
        path = os.path.join(shim, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w', encoding='utf-8') as stream:
            stream.write(source)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([shim, os.path.join(REPO, 'src')])
    return subprocess.run([sys.executable] + TOOL + args, capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)


def assert_clean_exit(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """Assert the exit status, each message part in stderr, and no traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert 'Traceback' not in output, output
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_build_without_tensorrt(tmp_path, tiny_model_copy: str) -> None:
    result = run_tool([tiny_model_copy], str(tmp_path), HIDDEN)
    assert_clean_exit(result, 2, 'error: TensorRT engines are built and checked on the machine',
                      'tensorrt Python module is not installed')
    assert result.stderr.count('\n') == 1  # one line, not a stack of them
    assert not [n for n in os.listdir(os.path.dirname(tiny_model_copy)) if 'engine' in n]


def test_check_without_tensorrt(tmp_path, tiny_model_copy: str, tiny_card: ModelCard) -> None:
    engine = make_engine_files(tiny_model_copy, tiny_card)
    result = run_tool(['--check', engine], str(tmp_path), HIDDEN)
    assert_clean_exit(result, 2, 'tensorrt Python module is not installed')


def test_build_without_pycuda(tmp_path, tiny_model_copy: str) -> None:
    result = run_tool([tiny_model_copy], str(tmp_path), {**TRT_10_3, **NO_PYCUDA})
    assert_clean_exit(result, 2, 'pycuda is not installed: pip3 install pycuda')


def test_build_without_gpu(tmp_path, tiny_model_copy: str) -> None:
    result = run_tool([tiny_model_copy], str(tmp_path), {**TRT_10_3, **_driver(0)})
    assert_clean_exit(result, 2, 'no CUDA GPU number 0 (the driver sees 0)')


def test_refuses_to_overwrite_an_engine_without_force(tmp_path, tiny_model_copy: str,
                                                      tiny_card: ModelCard) -> None:
    engine = make_engine_files(tiny_model_copy, tiny_card, machine=ORIN)
    before = open(engine, 'rb').read()
    result = run_tool([tiny_model_copy], str(tmp_path), {**TRT_10_3, **_driver(1)})
    assert_clean_exit(result, 2, f'{engine} exists; pass --force', '--check')
    assert 'machine: Orin (sm87), TensorRT 10.3.0' in result.stdout
    assert open(engine, 'rb').read() == before


def test_a_special_file_where_the_engine_goes_is_named_as_such_without_force(
        tmp_path, tiny_model_copy: str, tiny_card: ModelCard) -> None:
    """Regression: without --force a FIFO at the engine's path was called an engine that exists."""
    engine = make_engine_files(tiny_model_copy, tiny_card, machine=ORIN)
    os.remove(engine)
    os.mkfifo(engine)
    result = run_tool([tiny_model_copy], str(tmp_path), {**TRT_10_3, **_driver(1)})
    assert_clean_exit(result, 2, 'is a FIFO (named pipe), not a regular file')
    assert 'exists; pass --force' not in result.stdout + result.stderr
    assert stat.S_ISFIFO(os.stat(engine).st_mode)


@pytest.mark.parametrize('args, needle', [
    (['--min-batch', '8', '--opt-batch', '4'], 'error: --opt-batch: 4 is below min_batch 8'),
    (['--max-batch', '0'], 'error: --max-batch: 0 is outside 1..1024'),
    (['--workspace-mib', '0'], 'error: --workspace-mib: must be >= 1'),
    (['--precision', 'fp32', '--dla-core', '0'], 'error: --dla-core: DLA runs FP16 or INT8'),
])
def test_bad_flags_exit_2_before_touching_tensorrt(tmp_path, tiny_model_copy: str, args,
                                                   needle: str) -> None:
    result = run_tool([tiny_model_copy] + args, str(tmp_path), HIDDEN)
    assert_clean_exit(result, 2, needle)


def test_int8_needs_calibration_images(tmp_path, tiny_model_copy: str) -> None:
    result = run_tool([tiny_model_copy, '--precision', 'int8'], str(tmp_path),
                      {**TRT_10_3, **_driver(1)})
    assert_clean_exit(result, 2, 'INT8 needs --calib-images DIR')
    assert 'deprecates the INT8 calibrator' in result.stdout


def test_int8_on_tensorrt_11_says_what_to_do(tmp_path, tiny_model_copy: str) -> None:
    result = run_tool([tiny_model_copy, '--precision', 'int8'], str(tmp_path),
                      {**_tensorrt('11.0.0'), **_driver(1)})
    assert_clean_exit(result, 2, 'removed implicit INT8', '--precision fp16')


def test_missing_onnx_and_foreign_card(tmp_path, tiny_model_copy: str) -> None:
    result = run_tool([str(tmp_path / 'nope.onnx')], str(tmp_path), HIDDEN)
    assert_clean_exit(result, 2, 'nope.onnx does not exist')
    with open(tiny_model_copy, 'ab') as stream:
        stream.write(b'\0')  # the card's sha256 no longer matches the model
    result = run_tool([tiny_model_copy], str(tmp_path), HIDDEN)
    assert_clean_exit(result, 2, "field 'onnx_sha256'", 'leaf-disease-export')


def test_check_of_a_missing_engine(tmp_path) -> None:
    result = run_tool(['--check', str(tmp_path / 'x.fp16.sm87.trt10.3.0.engine')],
                      str(tmp_path), HIDDEN)
    assert_clean_exit(result, 2, 'x.fp16.sm87.trt10.3.0.engine does not exist')


def test_help_and_usage_work_without_tensorrt(tmp_path) -> None:
    result = run_tool(['--help'], str(tmp_path), HIDDEN)
    assert result.returncode == 0 and '--calib-images' in result.stdout
    assert '--timing-cache' in result.stdout and '--check ENGINE' in result.stdout
    result = run_tool([], str(tmp_path), HIDDEN)
    assert result.returncode == 2 and 'give the ONNX model to build' in result.stderr


def _snapshot(folder: str) -> Dict[str, bytes]:
    return {name: open(os.path.join(folder, name), 'rb').read() for name in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, name))}


@pytest.mark.parametrize('make_args, needle', [
    (lambda onnx, tmp: ['--timing-cache', onnx], '--timing-cache {onnx} is the input {onnx}'),
    (lambda onnx, tmp: ['--timing-cache', onnx[:-5] + '.json'], 'is the input'),
    (lambda onnx, tmp: ['--timing-cache', os.path.join(tmp, 'fifo')],
     'is a FIFO (named pipe), not a regular file'),
    (lambda onnx, tmp: ['--out-dir', onnx], 'is not a folder'),
    (lambda onnx, tmp: ['--precision', 'int8', '--calib-images', os.path.join(tmp, 'leaves'),
                        '--out-dir', os.path.join(tmp, 'leaves', 'engines')],
     'is inside the input'),
])
def test_outputs_never_land_on_an_input_or_a_special_file(tmp_path, tiny_model_copy: str,
                                                          make_args, needle: str) -> None:
    os.mkfifo(tmp_path / 'fifo')
    (tmp_path / 'leaves').mkdir()  # calibration images: never a place for outputs
    before = _snapshot(str(tmp_path))
    args = make_args(tiny_model_copy, str(tmp_path))
    result = run_tool([tiny_model_copy, '--force'] + args, str(tmp_path),
                      {**TRT_10_3, **_driver(1)})
    assert_clean_exit(result, 2, needle.format(onnx=tiny_model_copy))
    assert _snapshot(str(tmp_path)) == before
    assert not [n for n in os.listdir(tmp_path) if 'engine' in n or 'timing' in n]
