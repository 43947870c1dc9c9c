r"""
``leaf-disease-build-engine``: build (or check) the TensorRT engine of a model on this machine.

Run it on the Jetson that will run the node (docs/tensorrt.md has the whole story)::

    leaf-disease-build-engine engines/leaf_lite0_field.onnx                 # FP16
    leaf-disease-build-engine engines/leaf_lite0_field.onnx --precision int8 \\
        --calib-images ../shared/datasets/plantvillage_grape
    leaf-disease-build-engine --check engines/leaf_lite0_field.fp16.sm87.trt10.3.0.engine

The build itself is :mod:`leaf_disease_ros.inference.engine.build`; this module
parses the command line, sends progress lines to stdout and errors to stderr.
Exit status: 0 built, or ``--check`` found no mismatch; 1 the build failed or
``--check`` found mismatches; 2 bad arguments or inputs, an engine that exists
without ``--force``, or tensorrt / pycuda / a GPU missing.
"""

import argparse
import logging
import sys
from typing import Optional, Sequence

from leaf_disease_ros.inference.engine.build import (build, BuildFailed, check,
                                                     DEFAULT_WORKSPACE_MIB, EXIT_FAILED,
                                                     EXIT_USAGE)
from leaf_disease_ros.inference.engine.policy import (DEFAULT_BATCH_PROFILE, DEFAULT_PRECISION,
                                                      PRECISIONS, TYPING_MODES)
from leaf_disease_ros.perception.errors import (BackendUnavailableError, ConfigError,
                                                LeafDiseaseError)


def fail(message: str) -> None:
    """Write an error line to stderr."""
    sys.stderr.write(f'error: {message}\n')
    sys.stderr.flush()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Build a TensorRT engine for an ONNX model + model card on this machine, '
                    'or --check an engine against its card and this machine.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('onnx', nargs='?', help='ONNX model (its card <model>.json beside it)')
    parser.add_argument('--check', metavar='ENGINE',
                        help='deserialise ENGINE and verify its sidecar against the card and '
                             'this machine; build nothing')
    parser.add_argument('--card', help='model card (default: <model>.json beside the ONNX, or '
                                       "the sidecar's card for --check)")
    parser.add_argument('--precision', choices=PRECISIONS, default=DEFAULT_PRECISION)
    parser.add_argument('--min-batch', type=int, default=DEFAULT_BATCH_PROFILE[0])
    parser.add_argument('--opt-batch', type=int, default=DEFAULT_BATCH_PROFILE[1],
                        help='batch the kernels are tuned for (typical tiles per frame)')
    parser.add_argument('--max-batch', type=int, default=DEFAULT_BATCH_PROFILE[2],
                        help="largest batch the engine accepts (caps the node's max_batch)")
    parser.add_argument('--workspace-mib', type=int, default=DEFAULT_WORKSPACE_MIB,
                        help='builder workspace memory-pool limit in MiB')
    parser.add_argument('--out-dir', help="output folder (default: the ONNX model's folder)")
    parser.add_argument('--force', action='store_true', help='overwrite an existing engine')
    parser.add_argument('--timing-cache', help='timing cache file (default: '
                        '<out-dir>/<smXY>.trt<version>.timing_cache, shared by all builds)')
    parser.add_argument('--no-timing-cache', action='store_true',
                        help='neither read nor write a timing cache')
    parser.add_argument('--typing', choices=TYPING_MODES, default='auto',
                        help='auto: strongly typed from TensorRT 10.12 (where the precision '
                             'flags are deprecated), weakly typed before')
    parser.add_argument('--fp16-onnx', help='FP16 ONNX (float32 I/O) for a strongly typed FP16 '
                        'build, e.g. from NVIDIA Model Optimizer AutoCast; default: converted '
                        'here')
    parser.add_argument('--calib-images', help='INT8: folder of representative images '
                        '(searched recursively)')
    parser.add_argument('--calib-cache', help='INT8: calibration cache file (default: '
                        '<out-dir>/<model>.<onnx sha256[:12]>.int8.<smXY>.trt<version>'
                        '.calib_cache); used only without --calib-images (then rewritten)')
    parser.add_argument('--calib-batch', type=int, default=8, help='INT8: calibration batch')
    parser.add_argument('--calib-max-images', type=int, default=512,
                        help='INT8: use at most this many images, spread over the folder')
    parser.add_argument('--dla-core', type=int, help='build for this DLA core (GPU fallback '
                        'on); FP16 or INT8 only; needs one batch size (--min-batch = '
                        '--opt-batch = --max-batch): DLA has no dynamic shapes')
    parser.add_argument('--device', type=int, default=0, help='CUDA GPU index')
    parser.add_argument('--verbose', action='store_true', help='TensorRT info messages')
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.check and not args.onnx:
        parser.error('give the ONNX model to build, or --check ENGINE')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; return the exit status (0 ok, 1 build failed / mismatch, 2 usage)."""
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('%(message)s'))
    progress = logging.getLogger('leaf_disease_ros.inference.engine.build')
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    try:
        return check(args) if args.check else build(args)
    except BuildFailed as exc:
        fail(str(exc))
        return EXIT_FAILED
    except BackendUnavailableError as exc:
        fail(f'TensorRT engines are built and checked on the machine that runs them (a Jetson '
             f'with JetPack 6.1 or newer, or a PC with TensorRT 10, pycuda and an NVIDIA '
             f'GPU): {exc}')
        return EXIT_USAGE
    except ConfigError as exc:
        fail(f'--{exc.parameter.replace("_", "-")}: {exc.reason}')
        return EXIT_USAGE
    except LeafDiseaseError as exc:
        fail(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        fail('interrupted; nothing was written')
        return 130
