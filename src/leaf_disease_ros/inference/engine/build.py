r"""
Build (or check) the TensorRT engine of a leaf_disease_ros ONNX model on this machine.

Run it on the Jetson that will run the node (docs/tensorrt.md, "Build the engine on
the Jetson" has the whole story)::

    leaf-disease-build-engine engines/leaf_lite0_field.onnx                 # FP16
    leaf-disease-build-engine engines/leaf_lite0_field.onnx --precision int8 \
        --calib-images ../shared/datasets/plantvillage_grape
    leaf-disease-build-engine --check engines/leaf_lite0_field.fp16.sm87.trt10.3.0.engine

The engine goes beside the ONNX model as ``<model>.<precision>.<smXY>.trt<version>
.engine``, followed (atomically, after the engine) by its sidecar ``<engine>.json``:
ONNX sha256, TensorRT version, GPU name and compute capability, precision, batch
profile, workspace, build time and builder options, and the module facts (SM count,
memory, DLA cores, L4T release, power mode). The node's ``backend: auto`` uses it
when the sidecar matches the model card and the machine.

TensorRT 10 API: an explicit-batch network from ``trt.OnnxParser`` (every parser
error printed with its node), one optimisation profile on the input (min/opt/max
batch), a workspace memory-pool limit, a timing cache reused across builds on this
GPU + TensorRT version (a damaged one is replaced), FP32/FP16/INT8 (entropy
calibrator fed through the model card's preprocessing; its cache is keyed by the
ONNX sha256 and only used when no ``--calib-images`` are given; any error while
feeding a batch fails the build instead of ending calibration early), optional DLA
core with GPU fallback (DLA has no dynamic shapes, so it needs min = opt = max batch;
how many layers TensorRT placed on the DLA is read from its build log, recorded in
the sidecar, and a DLA build where nothing runs on the DLA fails). The network's
input and output must be float32 (checked before building). Where the installed
TensorRT deprecates or removed the weakly typed precision flags (10.12+ / 11), FP16 is
built as a strongly typed network from an FP16 copy of the ONNX, and the tool says so.

Every TensorRT object is created and dropped with the CUDA context current, on error
paths too (:func:`~leaf_disease_ros.inference.tensorrt_backend.drop_frames`).

Exit status: 0 built, or ``--check`` found no mismatch; 1 the build failed or
``--check`` found mismatches; 2 bad arguments or inputs, an engine that exists
without ``--force``, or tensorrt / pycuda / a GPU missing.
"""

import argparse
from dataclasses import dataclass, field
from datetime import datetime, timezone
import hashlib
import logging
import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from leaf_disease_ros.inference import tensorrt_backend
from leaf_disease_ros.inference.engine.calibration_batches import (CalibrationBatches,
                                                                   list_calibration_images)
from leaf_disease_ros.inference.engine.commands import build_command, format_parser_error
from leaf_disease_ros.inference.engine.machine import MachineInfo, sm_tag
from leaf_disease_ros.inference.engine.matching import (engine_file_mismatches,
                                                        engine_io_mismatches, expected_onnx_sha256,
                                                        sidecar_mismatches)
from leaf_disease_ros.inference.engine.naming import (calibration_cache_path, engine_file_name,
                                                      model_stem, sidecar_path_for_engine,
                                                      timing_cache_path)
from leaf_disease_ros.inference.engine.policy import (BatchProfile, precision_plan, PrecisionPlan,
                                                      validate_batch_profile)
from leaf_disease_ros.inference.engine.sidecar import (card_path_for_engine, EngineSidecar,
                                                       onnx_path_for_engine, read_sidecar,
                                                       TensorInfo, write_sidecar)
from leaf_disease_ros.perception.atomic_io import atomic_write_bytes
from leaf_disease_ros.perception.errors import (ConfigError, EngineMismatchError, LeafDiseaseError,
                                                ModelLoadError)
from leaf_disease_ros.perception.model_card import (card_path_for_model, check_model_file,
                                                    load_card, ModelCard, sha256_file)
from leaf_disease_ros.perception.output_paths import check_output_file, check_outputs_apart

TOOL = 'leaf-disease-build-engine'
DEFAULT_WORKSPACE_MIB = 1024
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class BuildFailed(LeafDiseaseError):
    """TensorRT could not parse the model or build the engine (exit status 1)."""


class EngineExistsError(LeafDiseaseError):
    """The engine to build exists and ``--force`` was not given (exit status 2)."""


_LOG = logging.getLogger(__name__)


def say(message: str) -> None:
    """Report a progress line (``leaf-disease-build-engine`` prints it on stdout)."""
    _LOG.info('%s', message)


def runtime(device_index: int) -> Tuple[Any, Any, MachineInfo]:
    """Return ``(tensorrt, pycuda.driver, machine)``; raise BackendUnavailableError if absent."""
    trt = tensorrt_backend.import_tensorrt()
    cuda = tensorrt_backend.import_pycuda_driver()
    machine = tensorrt_backend.probe_machine(device_index)
    return trt, cuda, machine


# --- build ------------------------------------------------------------------------

@dataclass
class BuildResult:
    """What a successful build returns besides the engine bytes."""

    engine: bytes
    build_seconds: float
    tensors: List[TensorInfo] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)


def make_calibrator(trt: Any, cuda: Any, batches: Optional[CalibrationBatches],
                    batch_shape: Tuple[int, int, int, int], cache_path: str,
                    errors: List[str]) -> Any:
    """
    Return an ``IInt8EntropyCalibrator2`` fed by ``batches`` (card preprocessing).

    With ``batches`` the images calibrate and an existing cache is ignored (then
    rewritten); with ``batches`` None only the calibration cache can calibrate; if
    TensorRT rejects it, calibration gets no batch and the build fails with that
    reason. TensorRT's Python wrapper (``pyCalibratorTrampoline`` in NVIDIA/TensorRT
    python/src/infer/pyInt8.cpp, 10.x) calls every override inside ``try``/``catch``,
    prints what it caught and carries on: an exception in ``get_batch`` means "no more
    data" (calibration ends early and the build succeeds), one in
    ``read_calibration_cache`` "no cache", one in ``write_calibration_cache`` nothing
    at all. So no override lets an exception out: ``get_batch`` and
    ``read_calibration_cache`` record it in ``errors`` (the build then fails),
    ``exhausted`` tells whether every batch was delivered, and
    ``write_calibration_cache`` keeps its failure in ``cache_error`` (the engine is
    still good; the sidecar then records no cache). ``cache_state`` says what became
    of the cache: ``read`` (it calibrated), ``written`` or ``''``.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds preprocessed calibration batches; reads/writes the calibration cache."""

        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches_done = 0
            self.exhausted = batches is None
            self._iterator = iter(batches) if batches is not None else iter(())
            self._device = cuda.mem_alloc(int(np.prod(batch_shape)) * 4)
            self.cache_state = ''
            self.cache_error = ''

        def get_batch_size(self) -> int:
            return int(batch_shape[0])

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            try:
                batch = next(self._iterator)
                cuda.memcpy_htod(self._device, np.ascontiguousarray(batch))
            except StopIteration:
                self.exhausted = True
                if self.batches_done == 0:
                    errors.append(f'no calibration batch: the cache {cache_path} was not '
                                  'accepted and no --calib-images were given')
                return None
            except Exception as exc:  # nothing may cross into TensorRT (it would stop)
                errors.append(f'calibration batch {self.batches_done + 1} failed: '
                              f'{type(exc).__name__}: {exc}')
                return None
            self.batches_done += 1
            say(f'  calibration batch {self.batches_done} '
                f'({self.batches_done * batch_shape[0]} images)')
            return [int(self._device)]

        def read_calibration_cache(self) -> Optional[bytes]:
            if batches is not None:
                if os.path.isfile(cache_path):
                    say(f'  calibrating from the images; the cache {cache_path} is '
                        'rewritten')
                return None
            if os.path.isfile(cache_path):
                say(f'  using calibration cache {cache_path} (delete it to calibrate again)')
                try:
                    with open(cache_path, 'rb') as stream:
                        data = stream.read()
                except OSError as exc:
                    errors.append(f'the calibration cache {cache_path} cannot be read: '
                                  f'{exc.strerror or exc}')
                    return None
                self.cache_state = 'read'
                return data
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            try:
                atomic_write_bytes(cache_path, bytes(cache))
            except Exception as exc:  # TensorRT's wrapper would print and drop it
                self.cache_error = f'{type(exc).__name__}: {exc}'
                return
            self.cache_state = 'written'
            say(f'  wrote calibration cache {cache_path}')

        def free(self) -> None:
            self._device.free()

    return EntropyCalibrator()


def capturing_logger(trt: Any, verbose: bool) -> Any:
    """
    Return a TensorRT logger that keeps every message and shows warnings and errors.

    The build log is where TensorRT says which layers run on a DLA core
    (``Layers Running on DLA`` / ``[DlaLayer]`` lines at INFO); with ``verbose`` the
    INFO messages are shown too.
    """
    class CapturingLogger(trt.ILogger):
        """Keeps ``lines``; forwards WARNING and worse (INFO too when verbose)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: List[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            self.lines.append(str(msg))
            if level <= 1:  # INTERNAL_ERROR, ERROR
                _LOG.error('[TensorRT] %s', msg)
            elif level == 2 or verbose:  # WARNING; INFO and VERBOSE when asked
                _LOG.warning('[TensorRT] %s', msg)

    return CapturingLogger()


def dla_placement(lines: Sequence[str]) -> Tuple[Optional[int], Optional[int]]:
    """
    Return ``(DLA subgraphs, GPU layers)`` from TensorRT's build log (None when absent).

    TensorRT logs at INFO, for a DLA build, one ``[DlaLayer] {ForeignNode[...]}`` line
    per subgraph it placed on the DLA and one ``[GpuLayer] ...`` line per layer left on
    the GPU, under ``Layers Running on DLA`` / ``on GPU`` headings.
    """
    if not any('layers running on' in line.lower() for line in lines):
        return None, None
    return (sum('[DlaLayer]' in line for line in lines),
            sum('[GpuLayer]' in line for line in lines))


def parse_network(trt: Any, builder: Any, logger: Any, onnx_path: str,
                  strongly_typed: bool) -> Tuple[Any, Any]:
    """Return ``(network, parser)`` parsed from ``onnx_path``; BuildFailed lists each error."""
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # TensorRT 10: always explicit batch
    if network is None:  # IBuilder::createNetworkV2 refuses flags this TensorRT lacks
        raise BuildFailed(f'TensorRT {trt.__version__} cannot create a network with flags '
                          f'{flags:#x} (its messages are above)')
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, 'rb') as stream:
        ok = parser.parse(stream.read(), onnx_path)
    if not ok:
        lines = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            lines.append(format_parser_error(
                index, error.desc(), str(error.code()), int(error.node()),
                str(getattr(error, 'node_name', lambda: '')()),
                str(getattr(error, 'node_operator', lambda: '')())))
        raise BuildFailed(f'TensorRT {trt.__version__} cannot parse {onnx_path}:\n  '
                          + '\n  '.join(lines or ['(no parser error reported)']))
    return network, parser


def check_network(trt: Any, network: Any, card: ModelCard, profile: BatchProfile,
                  onnx_path: str, flag: str = 'onnx') -> None:
    """
    Check the parsed network's input/output against the card and the batch profile.

    Runs before the build: an FP16 input or output (a ``--fp16-onnx`` converted without
    keeping float32 I/O) is refused here, not after minutes of building.

    :param flag: the command-line option the ONNX came from (named in the error).
    """
    where = card.path or '<card>'
    if network.num_inputs != 1:
        raise ConfigError('onnx', f'{onnx_path} has {network.num_inputs} inputs; the package '
                          'runs single-input classifiers')
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    chw = (3, card.input_height_px, card.input_width_px)
    if inp.name != card.input_name or len(shape) != 4 or shape[1:] != chw:
        raise ConfigError('onnx', f'{onnx_path} input {inp.name!r} {shape} does not match '
                          f'card {where}: {card.input_name!r} (N, {chw[0]}, {chw[1]}, {chw[2]})')
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    names = [out.name for out in outputs]
    if card.output_name not in names:
        raise ConfigError('onnx', f'{onnx_path} outputs {names}; card {where} expects '
                          f'{card.output_name!r}')
    out_shape = tuple(outputs[names.index(card.output_name)].shape)
    if not out_shape or out_shape[-1] != card.num_classes:
        raise ConfigError('onnx', f'{onnx_path} output shape {out_shape}; card {where} lists '
                          f'{card.num_classes} labels')
    float32 = getattr(trt, 'float32', None)
    output = outputs[names.index(card.output_name)]
    for kind, tensor in (('input', inp), ('output', output)):
        if float32 is not None and tensor.dtype != float32:
            raise ConfigError(flag, f'{onnx_path} {kind} {tensor.name!r} is {tensor.dtype}; '
                              'the node feeds and reads float32: convert the model keeping '
                              'float32 inputs and outputs (AutoCast --keep_io_types), or let '
                              'the tool convert it (leave out --fp16-onnx)')
    if shape[0] != -1 and profile.as_tuple() != (shape[0],) * 3:
        raise ConfigError('max_batch', f'{onnx_path} has a fixed batch of {shape[0]}: re-export '
                          'it with a dynamic batch axis, or pass --min-batch/--opt-batch/'
                          f'--max-batch {shape[0]}')


def build_engine(trt: Any, cuda: Any, args: argparse.Namespace, card: ModelCard,
                 network_onnx: str, plan: PrecisionPlan, profile: BatchProfile,
                 timing_cache: Optional[str], calib: Optional[CalibrationBatches],
                 calib_cache: Optional[str]) -> BuildResult:
    """Build and return the serialised engine; call with a CUDA context current."""
    logger = capturing_logger(trt, bool(args.verbose))
    builder = trt.Builder(logger)
    network, _parser = parse_network(trt, builder, logger, network_onnx, plan.strongly_typed)
    check_network(trt, network, card, profile, network_onnx,
                  'fp16_onnx' if args.fp16_onnx and network_onnx == args.fp16_onnx else 'onnx')
    name = card.input_name
    chw = (3, card.input_height_px, card.input_width_px)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(args.workspace_mib) << 20)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(name, (profile.min_batch,) + chw, (profile.opt_batch,) + chw,
                          (profile.max_batch,) + chw)
    config.add_optimization_profile(opt_profile)
    options: Dict[str, Any] = {'typing': 'strong' if plan.strongly_typed else 'weak',
                               'flags': list(plan.flags)}
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.precision == 'fp32' and hasattr(trt.BuilderFlag, 'TF32'):
        config.clear_flag(trt.BuilderFlag.TF32)  # true FP32: parity with ONNX Runtime
        options['tf32'] = False
    calibrator = None
    errors: List[str] = []
    if plan.calibrator:
        if calib_cache is None:
            raise ConfigError('calib_cache', 'INT8 needs a calibration cache path')
        shape = (int(args.calib_batch),) + chw
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(calib_profile)
        calibrator = make_calibrator(trt, cuda, calib, shape, calib_cache, errors)
        config.int8_calibrator = calibrator
    options['dla_cores_here'] = int(builder.num_DLA_cores)
    eligible = 0
    if args.dla_core is not None:
        if builder.num_DLA_cores <= args.dla_core:
            raise ConfigError('dla_core', f'{args.dla_core} requested, this machine has '
                              f'{builder.num_DLA_cores} DLA cores')
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(args.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        options['gpu_fallback'] = True
        eligible = sum(1 for index in range(network.num_layers)
                       if config.can_run_on_DLA(network.get_layer(index)))
    cache = None
    if timing_cache:
        blob = b''
        if os.path.isfile(timing_cache):
            with open(timing_cache, 'rb') as stream:
                blob = stream.read()
        cache = config.create_timing_cache(blob)
        if cache is None:  # TensorRT refuses a damaged (truncated, foreign) cache
            say(f'note: timing cache {timing_cache} is damaged; starting a fresh one')
        elif not config.set_timing_cache(cache, False):
            say(f'note: timing cache {timing_cache} was made by another TensorRT or GPU; '
                'starting a fresh one')
            cache = None
        if cache is None:
            cache = config.create_timing_cache(b'')
            config.set_timing_cache(cache, False)
            blob = b''
        options['timing_cache_reused'] = bool(blob)
    say(f'building {plan.precision} engine (batch {profile.min_batch}/{profile.opt_batch}/'
        f'{profile.max_batch}, workspace {args.workspace_mib} MiB); the first build on a '
        'Jetson takes minutes...')
    start = time.monotonic()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            options['calibration_batches'] = calibrator.batches_done
            options['calibration_cache'] = calibrator.cache_state
            if calibrator.cache_error:
                options['calibration_cache_error'] = calibrator.cache_error
            calibrator.free()
    seconds = time.monotonic() - start
    if errors:
        raise BuildFailed('calibration failed: ' + '; '.join(errors))
    if calibrator is not None and calib is not None and not calibrator.exhausted:
        raise BuildFailed(f'calibration stopped after {calibrator.batches_done} batch(es), '
                          f'before the last of the (at most {calib.count_batches()}) batches '
                          'of the images: TensorRT stopped asking (its messages are above)')
    if args.dla_core is not None:
        dla_subgraphs, gpu_layers = dla_placement(logger.lines)
        options['dla'] = {'core': int(args.dla_core), 'network_layers': network.num_layers,
                          'eligible_layers': eligible, 'dla_subgraphs': dla_subgraphs,
                          'gpu_layers': gpu_layers}
        if dla_subgraphs == 0 or (dla_subgraphs is None and eligible == 0):
            raise BuildFailed(
                f'nothing of {network_onnx} runs on DLA core {args.dla_core}: TensorRT '
                f'placed every layer on the GPU ({eligible} of {network.num_layers} layers '
                'could run on DLA). Build without --dla-core')
        say(f'DLA core {args.dla_core}: '
            + (f'{dla_subgraphs} DLA subgraph(s), {gpu_layers} layer(s) left on the GPU'
               if dla_subgraphs is not None else 'placement not reported by TensorRT')
            + f' ({eligible} of {network.num_layers} network layers can run on DLA)')
    if serialized is None:
        raise BuildFailed(
            f'TensorRT could not build the engine from {network_onnx} (its messages are above). '
            f'Out of memory? Lower --workspace-mib (now {args.workspace_mib}) or --max-batch '
            f'(now {profile.max_batch}), stop other GPU programs (the node) and retry')
    if timing_cache and cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    engine_bytes = bytes(serialized)
    runtime = trt.Runtime(logger)  # read back what was built before writing anything
    if args.dla_core is not None:
        runtime.DLA_core = int(args.dla_core)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BuildFailed('TensorRT built an engine it cannot deserialise (messages above)')
    tensors = tensorrt_backend.tensor_infos(trt, engine)
    del engine, runtime
    return BuildResult(engine_bytes, seconds, tensors, options)


def prepare_network_onnx(args: argparse.Namespace, onnx_path: str, plan: PrecisionPlan,
                         scratch: str) -> Tuple[str, Dict[str, Any]]:
    """Return the ONNX to parse (an FP16 copy for strongly typed FP16) and what was done."""
    if not plan.fp16_onnx:
        if args.fp16_onnx:
            say('note: --fp16-onnx is only used for strongly typed FP16 builds; ignored')
        return onnx_path, {}
    if args.fp16_onnx:
        if not os.path.isfile(args.fp16_onnx):
            raise ModelLoadError(f'--fp16-onnx {args.fp16_onnx} does not exist')
        say(f'using FP16 ONNX {args.fp16_onnx} (it must be a conversion of {onnx_path})')
        return args.fp16_onnx, {'fp16_onnx': os.path.abspath(args.fp16_onnx),
                                'fp16_onnx_sha256': sha256_file(args.fp16_onnx)}
    from leaf_disease_ros.inference.engine.onnx_fp16 import convert_to_fp16

    target = os.path.join(scratch, model_stem(onnx_path) + '.fp16.onnx')
    summary = convert_to_fp16(onnx_path, target)
    say(f'converted {onnx_path} to FP16 ({summary["initializers"]} initializers, float32 '
        f'inputs {summary["inputs"]} and outputs {summary["outputs"]} kept, '
        f'{summary["clipped_values"]} values clipped to the FP16 range)')
    return target, {'fp16_onnx': 'converted by leaf_disease_ros.inference.engine.onnx_fp16',
                    'fp16_onnx_sha256': sha256_file(target), 'fp16_conversion': summary}


def check_build_outputs(args: argparse.Namespace, onnx_path: str, card_path: str,
                        engine_path: str, timing_cache: Optional[str],
                        calib_cache: Optional[str]) -> None:
    """
    Refuse an engine, sidecar or cache path that would destroy an input or a special file.

    The shared output rule (:mod:`leaf_disease_ros.perception.output_paths`): the
    engine, its sidecar, the timing cache and the INT8 calibration cache are never the
    ONNX model, its card, the FP16 ONNX or inside the calibration images; never a FIFO,
    a device, a socket, a folder or a symbolic link; and never one another (the timing
    cache and the calibration cache are read and rewritten, so each may be itself).

    :raises OutputError: naming the conflict and what to do instead.
    """
    inputs = [onnx_path, card_path, args.fp16_onnx or '', args.calib_images or '']
    outputs = [('the engine', engine_path),
               ('its sidecar', sidecar_path_for_engine(engine_path)),
               ('--timing-cache', timing_cache or ''),
               ('--calib-cache', calib_cache or '')]
    for what, path in outputs:
        if path:
            check_output_file(path, inputs, what=what, allow_stdout=False, create_parent=True)
    check_outputs_apart(outputs)


def build(args: argparse.Namespace) -> int:
    """Build the engine and its sidecar; return the exit status."""
    profile = validate_batch_profile(args.min_batch, args.opt_batch, args.max_batch)
    if args.workspace_mib < 1:
        raise ConfigError('workspace_mib', f'must be >= 1, got {args.workspace_mib}')
    if args.dla_core is not None and (args.dla_core < 0 or args.precision == 'fp32'):
        raise ConfigError('dla_core', 'DLA runs FP16 or INT8 only, on a core index >= 0')
    if args.dla_core is not None and len(set(profile.as_tuple())) != 1:
        raise ConfigError('dla_core', f'DLA has no dynamic shapes: with batch '
                          f'{profile.min_batch}/{profile.opt_batch}/{profile.max_batch} every '
                          'layer would silently run on the GPU. Give one batch size, e.g. '
                          '--min-batch 8 --opt-batch 8 --max-batch 8 (the node pads smaller '
                          'batches)')
    onnx_path = os.path.abspath(args.onnx)
    if not os.path.isfile(onnx_path):
        raise ModelLoadError(f'ONNX model {onnx_path} does not exist')
    card_path = os.path.abspath(args.card) if args.card else card_path_for_model(onnx_path)
    card = load_card(card_path)
    onnx_sha = check_model_file(card, onnx_path)

    trt, cuda, machine = runtime(args.device)
    facts = machine.module_facts()
    say(f'machine: {machine.describe()}' + (f' ({facts})' if facts else ''))
    plan = precision_plan(machine.tensorrt_version, args.precision, args.typing)
    for note in plan.notes:
        say(f'note: {note}')
    out_dir = os.path.abspath(args.out_dir or os.path.dirname(onnx_path))
    engine_name = engine_file_name(model_stem(onnx_path), args.precision,
                                   machine.compute_capability, machine.tensorrt_version)
    engine_path = os.path.join(out_dir, engine_name)
    timing_cache = None if args.no_timing_cache else os.path.abspath(
        args.timing_cache or timing_cache_path(out_dir, machine))

    calib = None
    calib_cache = os.path.abspath(args.calib_cache or calibration_cache_path(
        out_dir, model_stem(onnx_path), machine, onnx_sha)) if plan.calibrator else None
    calib_record: Dict[str, Any] = {}
    # what the path is comes first: a FIFO where the engine goes is no engine that exists
    check_build_outputs(args, onnx_path, card_path, engine_path, timing_cache, calib_cache)
    if os.path.exists(engine_path) and not args.force:
        raise EngineExistsError(f'{engine_path} exists; pass --force to rebuild it, or check '
                                f'it with: {TOOL} --check {engine_path}')
    if plan.calibrator:
        if args.calib_images:
            paths = list_calibration_images(args.calib_images, args.calib_max_images)
            calib = CalibrationBatches(paths, card, args.calib_batch)
            if calib.count_batches() < 1:
                raise ConfigError('calib_images', f'{args.calib_images} has {len(paths)} images, '
                                  f'fewer than one batch of {args.calib_batch}')
            calib_record = {'images_dir': os.path.abspath(args.calib_images),
                            'images_listed': len(paths), 'batch': args.calib_batch}
        elif calib_cache and os.path.isfile(calib_cache):
            say(f'INT8 from the calibration cache {calib_cache} alone (no --calib-images)')
        else:
            raise ConfigError('calib_images', f'INT8 needs --calib-images DIR (representative '
                              f'leaf images) or an existing calibration cache {calib_cache}')

    context = tensorrt_backend.CudaContext(cuda, args.device)
    try:
        with tempfile.TemporaryDirectory(prefix='leaf_engine_') as scratch:
            network_onnx, fp16_record = prepare_network_onnx(args, onnx_path, plan, scratch)
            with context.active():
                try:
                    result = build_engine(trt, cuda, args, card, network_onnx, plan, profile,
                                          timing_cache, calib, calib_cache)
                except BaseException as exc:
                    # the builder, network, parser and config in the traceback's frames go
                    # now, with the context current
                    tensorrt_backend.drop_frames(exc)
                    raise
    finally:
        context.release()
    if calib is not None and calib_record.get('images_dir'):
        calib_record.update({'images_used': calib.used, 'images_skipped': calib.skipped,
                             'images_dropped': calib.dropped})
        for path in calib.skipped:
            say(f'note: calibration skipped unreadable image {path}')

    options: Dict[str, Any] = dict(result.options)
    if plan.calibrator:
        # the sidecar names the cache only where this engine's scales are in it
        cache_state = options.pop('calibration_cache', '')
        cache_error = options.pop('calibration_cache_error', '')
        calib_record['cache'] = calib_cache if cache_state in ('read', 'written') else None
        if cache_error:
            calib_record['cache_error'] = cache_error
            say(f'note: the calibration cache {calib_cache} could not be written '
                f'({cache_error}); the engine is built, but the next INT8 build of this '
                'model needs --calib-images again')
    options.update(fp16_record)
    options['timing_cache'] = timing_cache
    if calib_record:
        options['calibration'] = calib_record
    options['command'] = [TOOL] + list(args.argv)
    sidecar = EngineSidecar(
        engine_file=engine_name,
        engine_sha256=hashlib.sha256(result.engine).hexdigest(),
        onnx_file=os.path.relpath(onnx_path, out_dir),
        onnx_sha256=onnx_sha,
        card_file=os.path.relpath(card_path, out_dir),
        model_name=card.name,
        num_classes=card.num_classes,
        input_name=card.input_name,
        input_shape_chw=(3, card.input_height_px, card.input_width_px),
        output_name=card.output_name,
        tensorrt_version=machine.tensorrt_version,
        gpu_name=machine.gpu_name,
        compute_capability=machine.compute_capability,
        precision=args.precision,
        batch_profile=profile,
        workspace_mib=int(args.workspace_mib),
        build_seconds=round(result.build_seconds, 3),
        built_at_utc=datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ'),
        dla_core=args.dla_core,
        builder_options=options,
        sm_count=machine.sm_count,
        memory_mib=machine.memory_mib,
        dla_cores=options.get('dla_cores_here'),
        l4t_release=machine.l4t_release,
        power_mode=machine.power_mode,
    )
    problems = engine_io_mismatches(result.tensors, card, sidecar)
    if problems:
        raise BuildFailed('the built engine does not match the card: ' + '; '.join(problems))
    sidecar_path = sidecar_path_for_engine(engine_path)
    if os.path.exists(sidecar_path):
        os.remove(sidecar_path)  # never leave an old sidecar describing a new engine
    atomic_write_bytes(engine_path, result.engine)
    write_sidecar(sidecar_path, sidecar)
    say(f'wrote {engine_path} ({len(result.engine) / 2**20:.1f} MiB) and its sidecar')
    say(f'build time: {result.build_seconds:.1f} s')
    say(f'check it any time with: {TOOL} --check {engine_path}')
    return EXIT_OK


# --- check ------------------------------------------------------------------------

def check(args: argparse.Namespace) -> int:
    """Verify an engine against its sidecar, card and this machine; return the exit status."""
    engine_path = os.path.abspath(args.check)
    if not os.path.isfile(engine_path):
        raise ModelLoadError(f'engine {engine_path} does not exist')
    sidecar = read_sidecar(sidecar_path_for_engine(engine_path))
    if args.card:
        card_path = os.path.abspath(args.card)
    else:
        card_path = card_path_for_engine(engine_path, sidecar)
    card = load_card(card_path)
    onnx_path = onnx_path_for_engine(engine_path, sidecar)
    trt, _cuda, machine = runtime(args.device)
    say(f'engine:  {engine_path}')
    say(f'card:    {card_path}')
    say(f'machine: {machine.describe()}')
    profile = sidecar.batch_profile
    say(f'sidecar: {sidecar.precision}, batch {profile.min_batch}/{profile.opt_batch}/'
        f'{profile.max_batch}, built {sidecar.built_at_utc} in {sidecar.build_seconds:.1f} s '
        f'on {sidecar.machine.describe()}')
    problems = sidecar_mismatches(sidecar, card, machine, expected_onnx_sha256(card, onnx_path))
    problems += engine_file_mismatches(engine_path, sidecar)
    rebuild = build_command(onnx_path, sidecar.precision, tool=TOOL, extra=['--force'])
    foreign = (sidecar.tensorrt_version != machine.tensorrt_version
               or tuple(sidecar.compute_capability) != tuple(machine.compute_capability))
    if foreign:
        say('not deserialised: it was built for another TensorRT version or GPU')
    else:
        try:
            infos = tensorrt_backend.inspect_engine(engine_path, sidecar.dla_core, args.device,
                                                    rebuild)
        except EngineMismatchError as exc:
            problems.append(str(exc))
        else:
            for info in infos:
                kind = 'input ' if info.is_input else 'output'
                extra = f' profile {list(info.profile)}' if info.profile else ''
                say(f'tensor:  {kind} {info.name} {info.shape} {info.dtype}{extra}')
            problems += engine_io_mismatches(infos, card, sidecar)
    if problems:
        for problem in problems:
            say(f'MISMATCH: {problem}')
        say(f'{len(problems)} mismatch(es); rebuild on this machine with: {rebuild}')
        return EXIT_FAILED
    say(f'OK: the engine matches the card and this machine ({sm_tag(machine.compute_capability)}'
        f', TensorRT {machine.tensorrt_version})')
    return EXIT_OK
