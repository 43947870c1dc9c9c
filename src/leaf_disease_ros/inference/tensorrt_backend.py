"""
TensorRT backend: runs a prebuilt engine with pycuda in the GPU's primary context, pinned buffers.

It never builds an engine: ``leaf-disease-build-engine`` does, on the target machine.
Loading (:func:`load_engine_backend`) first checks the engine against its sidecar,
its model card and this machine (:func:`~leaf_disease_ros.inference.
engine.sidecar.verify_engine`), then deserialises it with ``trt.Runtime``; a null
engine, or tensors that do not match the card, is an
:class:`~leaf_disease_ros.perception.errors.EngineMismatchError` naming the file, the
mismatch and the build command that fixes it.

Buffers: one page-locked host array and one device allocation per I/O tensor,
sized once for the profile's maximum batch. A call copies the batch into the
pinned input, sets the input shape and every tensor address, queues the
host-to-device copy, ``execute_async_v3`` and the device-to-host copies on one
stream, and synchronises once. Outputs are float32 logits ``(N, C)`` exactly like
the ONNX Runtime backend; batches below the profile minimum are zero-padded.

CUDA context and threads. The node loads the backend on its main thread but calls
``infer`` from its worker thread, and may close it from a third. A CUDA context
is current per thread, and pycuda frees memory of a non-current context only from
the thread that created it, so the backend never leaves its context current
anywhere:

- the context is the device's **primary context** (``Device.retain_primary_context``,
  retained once per process and device, :func:`primary_context`), the one the CUDA
  runtime uses: ONNX Runtime's CUDA provider, VPI or torch in the same process share
  it (and its memory pool) instead of each holding a context of its own. It is
  retained, never pushed, on the loading thread; no ``pycuda.autoinit``, no context
  left behind. pycuda cannot set a primary context's scheduling flags, so waits use
  CUDA's default (``CU_CTX_SCHED_AUTO``);
- every use (loading, warm-up, each ``infer``, ``close``) pushes it onto the calling
  thread, works, and pops it, under one lock, so the thread that runs inference (the
  node's worker) has it current for the duration of each call;
- ``close`` pushes it, drops the TensorRT objects and frees every buffer and the
  stream while it is current, and pops it. The primary context itself stays retained
  until the process ends, as the CUDA runtime keeps it: pycuda's release of a primary
  context (``cuDevicePrimaryCtxRelease``) pops nothing, so releasing it from a worker
  thread would leave it on that thread's context stack. ``close`` is idempotent;
  ``infer`` after ``close`` is an
  :class:`~leaf_disease_ros.perception.errors.InferenceError`.
- on an error path (an engine that does not deserialise, a mismatch, an allocation
  failure) the TensorRT objects still referenced by the traceback are dropped while
  the context is current (:func:`drop_frames`), not later without it.

``tensorrt`` and ``pycuda`` are imported lazily, so importing this module costs
nothing on a machine without them.
"""

import contextlib
import gc
import os
import threading
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from leaf_disease_ros.inference.base import NamedOutputsBackend
from leaf_disease_ros.inference.engine.commands import build_command, BUILD_TOOL, mismatch_message
from leaf_disease_ros.inference.engine.machine import (L4T_RELEASE_FILE, MachineInfo,
                                                       parse_l4t_release, parse_power_mode,
                                                       POWER_MODE_FILE, read_text, sm_tag)
from leaf_disease_ros.inference.engine.matching import engine_io_mismatches, verify_engine
from leaf_disease_ros.inference.engine.sidecar import (EngineSidecar, onnx_path_for_engine,
                                                       TensorInfo)
from leaf_disease_ros.perception.errors import (BackendUnavailableError, EngineMismatchError,
                                                InferenceError, ModelLoadError)
from leaf_disease_ros.perception.model_card import ModelCard

_LOGGER: Any = None
_PRIMARY_CONTEXTS: Dict[int, Any] = {}
_PRIMARY_LOCK = threading.Lock()


def import_tensorrt() -> Any:
    """
    Return the ``tensorrt`` module.

    :raises BackendUnavailableError: it is not installed.
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            'the tensorrt Python module is not installed (JetPack ships it as '
            'python3-libnvinfer; a virtualenv must be created with --system-site-packages '
            'to see it)') from exc
    return tensorrt


def import_pycuda_driver() -> Any:
    """
    Return ``pycuda.driver``.

    :raises BackendUnavailableError: pycuda is not installed.
    """
    try:
        import pycuda.driver as driver
    except ImportError as exc:
        raise BackendUnavailableError(
            'pycuda is not installed: pip3 install pycuda (it compiles: sudo apt install '
            'build-essential python3-dev, and the CUDA toolkit on PATH: export '
            'PATH=/usr/local/cuda/bin:$PATH; with CUDA 13 pycuda>=2025.1.2; on Ubuntu 24.04 '
            'inside a virtual environment; docs/tensorrt.md has the steps)') from exc
    return driver


def tensorrt_installed() -> bool:
    """Return whether ``import tensorrt`` works here (no GPU is touched)."""
    try:
        import_tensorrt()
    except BackendUnavailableError:
        return False
    return True


def probe_machine(device_index: int = 0) -> MachineInfo:
    """
    Return this machine's TensorRT version, GPU and module facts.

    GPU name, compute capability, SM count and memory come from the CUDA driver; the
    DLA cores from TensorRT's runtime (``Runtime.num_DLA_cores``, IRuntime::getNbDLACores:
    0 on a PC, 2 on an AGX Orin or Orin NX 16GB, 1 on an Orin NX 8GB, 0 on an Orin
    Nano), asked with the GPU's primary context current (retained as the backend
    retains it, popped after); the L4T release and power mode from Jetson Linux's
    files (absent on a PC).

    :raises BackendUnavailableError: tensorrt or pycuda is missing, or there is no
        usable CUDA GPU number ``device_index``.
    """
    trt = import_tensorrt()
    cuda = import_pycuda_driver()
    try:
        cuda.init()
        count = cuda.Device.count()
        if count <= device_index:
            raise BackendUnavailableError(
                f'no CUDA GPU number {device_index} (the driver sees {count}); TensorRT needs '
                'a GPU: check nvidia-smi / tegrastats and that this user may access the GPU')
        device = cuda.Device(device_index)
        major, minor = device.compute_capability()
        name = str(device.name())
        sm_count = int(device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT))
        memory_mib = int(device.total_memory()) >> 20
    except cuda.Error as exc:
        raise BackendUnavailableError(f'no usable CUDA GPU: {exc}') from exc
    return MachineInfo(str(trt.__version__), name, (int(major), int(minor)),
                       sm_count=sm_count, memory_mib=memory_mib,
                       dla_cores=count_dla_cores(trt, cuda, device_index),
                       l4t_release=parse_l4t_release(read_text(L4T_RELEASE_FILE)),
                       power_mode=parse_power_mode(read_text(POWER_MODE_FILE)))


def count_dla_cores(trt: Any, cuda: Any, device_index: int = 0) -> int:
    """
    Return the DLA cores TensorRT can use on this machine (0 where there are none).

    Asked of a ``trt.Runtime`` (``num_DLA_cores``, bound to IRuntime::getNbDLACores in
    TensorRT's python/src/infer/pyCore.cpp), created and dropped with the GPU's primary
    context current, like every TensorRT object here.

    :raises BackendUnavailableError: the driver cannot provide the context.
    """
    with CudaContext(cuda, device_index).active():
        runtime = trt.Runtime(trt_logger(trt))
        try:
            return int(runtime.num_DLA_cores)
        finally:
            del runtime


def trt_logger(trt: Any) -> Any:
    """Return the process-wide TensorRT logger (warnings and errors only)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def _dtype_name(trt: Any, dtype: Any) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # BF16, FP8, INT4...: no numpy type
        return str(dtype).split('.')[-1].lower()


def tensor_infos(trt: Any, engine: Any) -> List[TensorInfo]:
    """Return every I/O tensor of a deserialised engine as :class:`TensorInfo` values."""
    infos: List[TensorInfo] = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        profile = None
        if is_input:
            low, opt, high = engine.get_tensor_profile_shape(name, 0)
            profile = (tuple(low), tuple(opt), tuple(high))
        infos.append(TensorInfo(name=name, is_input=is_input,
                                shape=tuple(engine.get_tensor_shape(name)),
                                dtype=_dtype_name(trt, engine.get_tensor_dtype(name)),
                                profile=profile))
    return infos


def primary_context(cuda: Any, device_index: int = 0) -> Any:
    """
    Return the primary CUDA context of GPU ``device_index``, retained once per process.

    The primary context is the one the CUDA runtime (ONNX Runtime, TensorRT, torch,
    VPI) uses; sharing it shares one memory pool. Retaining does not make it current.

    :raises BackendUnavailableError: the driver cannot retain it (no GPU, no driver).
    """
    with _PRIMARY_LOCK:
        context = _PRIMARY_CONTEXTS.get(device_index)
        if context is None:
            try:
                cuda.init()
                context = cuda.Device(device_index).retain_primary_context()
            except cuda.Error as exc:
                raise BackendUnavailableError(f'cannot use the CUDA context of GPU '
                                              f'{device_index}: {exc}') from exc
            _PRIMARY_CONTEXTS[device_index] = context
        return context


def drop_frames(exc: BaseException) -> None:
    """
    Drop what the frames of ``exc``'s traceback reference (TensorRT objects, buffers).

    Call with the CUDA context current, before it is popped: otherwise a builder,
    network, parser, runtime or engine kept alive by the traceback is destroyed
    later, on whatever thread, without its context.
    """
    traceback.clear_frames(exc.__traceback__)
    context = exc.__context__
    while context is not None:
        traceback.clear_frames(context.__traceback__)
        context = context.__context__
    gc.collect()


class CudaContext:
    """
    The GPU's primary CUDA context, current on a thread only while in use.

    :meth:`active` pushes it on the calling thread for the duration of a block;
    :meth:`release` runs a clean-up with it current and ends this user's use of it
    (the primary context itself stays retained for the process, see
    :func:`primary_context`).
    """

    def __init__(self, cuda: Any, device_index: int = 0) -> None:
        """
        Take the primary context of GPU ``device_index``, not current.

        :raises BackendUnavailableError: the driver cannot provide it.
        """
        self._cuda = cuda
        self._context: Any = primary_context(cuda, device_index)

    @property
    def alive(self) -> bool:
        """Return whether the context still exists."""
        return self._context is not None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make the context current on this thread for the block, then pop it."""
        if self._context is None:
            raise InferenceError('the CUDA context was released')
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def release(self, cleanup: Optional[Callable[[], None]] = None) -> None:
        """Run ``cleanup`` with the context current, then stop using it; safe twice."""
        context, self._context = self._context, None
        if context is None:
            return
        context.push()
        try:
            if cleanup is not None:
                cleanup()
        finally:
            self._cuda.Context.pop()


def read_engine_bytes(engine_path: str) -> bytes:
    """Return the serialised engine, or raise ModelLoadError naming the file."""
    try:
        with open(engine_path, 'rb') as stream:
            return stream.read()
    except OSError as exc:
        raise ModelLoadError(f'TensorRT engine {engine_path} cannot be read: '
                             f'{exc.strerror}') from exc


def deserialize(trt: Any, engine_path: str, dla_core: Optional[int],
                rebuild: str) -> Tuple[Any, Any]:
    """
    Return ``(runtime, engine)``; the runtime must outlive the engine.

    Call with a CUDA context current.

    :raises EngineMismatchError: TensorRT returned no engine (another TensorRT version
        or GPU built it, or the file is damaged); the message carries ``rebuild``.
    """
    runtime = trt.Runtime(trt_logger(trt))
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    engine = runtime.deserialize_cuda_engine(read_engine_bytes(engine_path))
    if engine is None:
        del runtime  # never kept alive by this traceback past the context
        raise EngineMismatchError(mismatch_message(
            engine_path, [f'TensorRT {trt.__version__} could not deserialise it (see the '
                          'TensorRT messages above: another TensorRT version or GPU built it, '
                          'or the file is damaged)'], rebuild))
    return runtime, engine


def inspect_engine(engine_path: str, dla_core: Optional[int] = None, device_index: int = 0,
                   rebuild: str = f'{BUILD_TOOL} <model>.onnx --force'
                   ) -> List[TensorInfo]:
    """
    Deserialise ``engine_path``; return its I/O tensors (``leaf-disease-build-engine --check``).

    ``rebuild`` is the command quoted when TensorRT cannot deserialise it.

    :raises BackendUnavailableError: tensorrt, pycuda or a GPU is missing.
    :raises EngineMismatchError: TensorRT cannot deserialise it.
    """
    trt = import_tensorrt()
    cuda = import_pycuda_driver()
    context = CudaContext(cuda, device_index)
    holder: Dict[str, Any] = {}

    def _drop() -> None:
        holder.pop('engine', None)  # the engine goes before the runtime that made it
        holder.pop('runtime', None)

    try:
        with context.active():
            try:
                holder['runtime'], holder['engine'] = deserialize(trt, engine_path, dla_core,
                                                                  rebuild)
                return tensor_infos(trt, holder['engine'])
            except BaseException as exc:
                drop_frames(exc)
                raise
    finally:
        context.release(_drop)


class TensorRTBackend(NamedOutputsBackend):
    """Runs a TensorRT engine (built by leaf-disease-build-engine) on one CUDA GPU."""

    name = 'tensorrt'

    def __init__(self, engine_path: str, card: ModelCard, sidecar: EngineSidecar,
                 max_batch: int = 16, device_index: int = 0, tool: str = BUILD_TOOL) -> None:
        """
        Deserialise ``engine_path``, allocate buffers for its max batch and warm up.

        ``sidecar`` and ``card`` must already be verified (:func:`verify_engine`);
        use :func:`load_engine_backend`, which does both.

        :raises BackendUnavailableError: tensorrt, pycuda or the GPU is missing.
        :raises EngineMismatchError: TensorRT cannot deserialise the engine or its tensors
            do not match the card.
        :raises ModelLoadError: the engine file cannot be read, or allocation or warm-up
            fails (out of GPU memory...).
        """
        self._trt = import_tensorrt()
        self._cuda = import_pycuda_driver()
        self._lock = threading.Lock()
        self._closed = False
        self.engine_path = engine_path
        self.sidecar = sidecar
        self._rebuild = build_command(onnx_path_for_engine(engine_path, sidecar),
                                      sidecar.precision, tool=tool, extra=['--force'])
        self._runtime: Any = None
        self._engine: Any = None
        self._exec: Any = None
        self._stream: Any = None
        self._host: Dict[str, np.ndarray] = {}
        self._device: Dict[str, Any] = {}
        self._context = CudaContext(self._cuda, device_index)
        try:
            with self._context.active():
                try:
                    self._setup(card)
                except BaseException as exc:
                    drop_frames(exc)  # while the context is still current
                    self._free()
                    raise
        except BaseException:
            self._context.release()
            raise
        profile = sidecar.batch_profile
        self._profile_min = profile.min_batch
        super().__init__(card, min(int(max_batch), self._profile_max),
                         f'{card.name}@{sidecar.onnx_sha256[:12]}:{sidecar.precision}.'
                         f'{sm_tag(sidecar.compute_capability)}.trt{sidecar.tensorrt_version}')
        try:
            self.warmup(1)
            self.warmup(self.max_batch)
        except InferenceError as exc:
            self.close()
            raise ModelLoadError(f'TensorRT engine {engine_path} failed its warm-up run: '
                                 f'{exc}') from exc

    def _setup(self, card: ModelCard) -> None:
        trt, cuda = self._trt, self._cuda
        self._runtime, self._engine = deserialize(trt, self.engine_path, self.sidecar.dla_core,
                                                  self._rebuild)
        infos = tensor_infos(trt, self._engine)
        mismatches = engine_io_mismatches(infos, card, self.sidecar)
        if mismatches:
            raise EngineMismatchError(mismatch_message(self.engine_path, mismatches,
                                                       self._rebuild))
        self._exec = self._engine.create_execution_context()
        if self._exec is None:
            raise ModelLoadError(f'TensorRT engine {self.engine_path}: no execution context '
                                 '(out of GPU memory?); close other GPU programs or rebuild '
                                 'with a smaller --max-batch')
        inp = next(info for info in infos if info.is_input)
        self._input_name = inp.name
        if inp.profile is None:
            raise ModelLoadError(f'TensorRT engine {self.engine_path}: input {inp.name} has no '
                                 'optimisation profile; rebuild it with '
                                 f'{BUILD_TOOL} <model>.onnx --force')
        self._profile_max = int(inp.profile[2][0])
        max_shape = (self._profile_max,) + tuple(inp.shape[1:])
        if not self._exec.set_input_shape(inp.name, max_shape):
            raise EngineMismatchError(mismatch_message(
                self.engine_path, [f'input shape {max_shape} rejected by the engine'],
                self._rebuild))
        try:
            for info in infos:
                shape = max_shape if info.is_input else tuple(
                    self._exec.get_tensor_shape(info.name))
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(info.name)))
                host = cuda.pagelocked_empty(shape, dtype)
                self._host[info.name] = host
                self._device[info.name] = cuda.mem_alloc(max(1, host.nbytes))
            self._stream = cuda.Stream()
        except cuda.Error as exc:
            raise ModelLoadError(f'TensorRT engine {self.engine_path}: cannot allocate buffers '
                                 f'for batch {self._profile_max}: {exc}') from exc

    def _free(self) -> None:
        """Drop TensorRT objects and free buffers; call with the context current."""
        if self._stream is not None:
            try:
                self._stream.synchronize()
            except self._cuda.Error:
                pass  # a failed stream still has to be released below
        self._exec = None
        self._engine = None
        self._runtime = None
        for allocation in self._device.values():
            allocation.free()
        self._device = {}
        for array in self._host.values():
            base = getattr(array, 'base', None)
            if base is not None and hasattr(base, 'free'):
                base.free()
        self._host = {}
        self._stream = None

    def _run_outputs(self, batch: np.ndarray, names: List[str]) -> List[np.ndarray]:
        count = batch.shape[0]
        run = max(count, self._profile_min)
        with self._lock:
            if self._closed or not self._context.alive:
                raise InferenceError('tensorrt backend is closed')
            cuda = self._cuda
            try:
                with self._context.active():
                    host_in = self._host[self._input_name][:run]
                    host_in[:count] = batch
                    if run > count:
                        host_in[count:] = 0.0
                    if not self._exec.set_input_shape(self._input_name, host_in.shape):
                        raise InferenceError(f'tensorrt: input shape {host_in.shape} is '
                                             f'outside the engine profile of {self.engine_path}')
                    for name, allocation in self._device.items():
                        if not self._exec.set_tensor_address(name, int(allocation)):
                            raise InferenceError(f'tensorrt: cannot bind tensor {name!r}')
                    cuda.memcpy_htod_async(self._device[self._input_name], host_in,
                                           self._stream)
                    if not self._exec.execute_async_v3(self._stream.handle):
                        raise InferenceError(f'tensorrt: execute_async_v3 failed on a batch '
                                             f'of {count} (see the TensorRT messages)')
                    for output in names:
                        cuda.memcpy_dtoh_async(self._host[output][:run], self._device[output],
                                               self._stream)
                    self._stream.synchronize()
                    return [self._host[output][:count].reshape(count, -1).copy()
                            for output in names]
            except (cuda.Error, RuntimeError, TypeError, ValueError) as exc:
                raise InferenceError(f'tensorrt failed on a batch of {count}: {exc}') from exc

    def describe(self) -> Dict[str, Any]:
        """Return backend facts: engine file, precision, TensorRT version, GPU, profile."""
        facts = super().describe()
        facts.update({
            'engine_path': self.engine_path,
            'precision': self.sidecar.precision,
            'tensorrt_version': self.sidecar.tensorrt_version,
            'gpu': f'{self.sidecar.gpu_name} ({sm_tag(self.sidecar.compute_capability)})',
            'batch_profile': list(self.sidecar.batch_profile.as_tuple()),
            'dla_core': self.sidecar.dla_core,
            'dla_placement': dict(self.sidecar.builder_options.get('dla') or {}),
            'module': self.sidecar.machine.module_facts(),
        })
        return facts

    def close(self) -> None:
        """Free the engine, buffers, stream and CUDA context; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._context.release(self._free)


def load_engine_backend(engine_path: str, max_batch: int = 16, device_index: int = 0,
                        tool: str = BUILD_TOOL,
                        machine: Optional[MachineInfo] = None) -> TensorRTBackend:
    """
    Verify ``engine_path`` against its sidecar, card and this machine, then load it.

    :raises BackendUnavailableError: tensorrt, pycuda or a GPU is missing.
    :raises ModelLoadError, ModelCardError: the engine, sidecar or card is missing or
        malformed.
    :raises EngineMismatchError: the engine does not match (message lists every
        mismatch and the build command).
    """
    engine_path = os.path.abspath(engine_path)
    machine = machine or probe_machine(device_index)
    sidecar, card = verify_engine(engine_path, machine, tool=tool)
    return TensorRTBackend(engine_path, card, sidecar, max_batch=max_batch,
                           device_index=device_index, tool=tool)
