"""
A CPU STAND-IN for ``tensorrt`` (10.x Python API) and ``pycuda.driver``, for tier 1.

It is not TensorRT and not CUDA: an "engine" is the ONNX model behind a small
header, ``execute_async_v3`` runs it with ONNX Runtime, and "device memory" is host
memory. It exists so the real ``TensorRTBackend`` and the real engine build code
(``inference/engine/build.py``) run on any machine, with the rules that make them
hard to get right enforced as strictly as the real libraries do, or more:

- pycuda contexts (modelled on pycuda ``src/cpp/cuda.hpp``): a per-thread context
  stack; ``make_context`` pushes, ``retain_primary_context`` does not;
  ``Context.pop()`` with nothing current is an error; allocations
  (``mem_alloc``, ``pagelocked_empty``) need a current context and belong to it;
  ``free()`` works only where that context is current, or on the thread that created
  it ("cannot activate out-of-thread context"), never after it is gone;
- every CUDA or TensorRT call that needs a context checks that one is current on the
  calling thread, and TensorRT objects (runtime, engine, execution context, builder,
  network, parser, config) record it when they are destroyed without their context
  current (:data:`VIOLATIONS`; the GPU tier cannot see this, a crash or a leak can);
- async copies and ``execute_async_v3`` are queued on the stream and run at
  ``Stream.synchronize()``: a missing synchronise leaves the output untouched;
- engines have an optimisation profile: ``set_input_shape`` outside it is refused;
  a damaged or foreign engine deserialises to ``None``;
- network flags are TensorRT 10's (``STRONGLY_TYPED`` = 1, ``create_network`` refuses
  unknown bits, a strongly typed network refuses the FP16/INT8 builder flags);
- the builder parses the ONNX (through onnxruntime), builds with a profile, runs an
  INT8 calibrator as TensorRT's Python wrapper does (pyInt8.cpp: every override is
  called inside try/catch, an exception printed and taken as -1 / no more data / no
  cache / nothing; ``get_batch_size`` is asked and must match the calibration
  profile), reads and writes calibration and timing caches
  (a damaged timing cache gives ``None`` from ``create_timing_cache``, and
  ``set_timing_cache(None, ...)`` is a ``TypeError`` as in pybind11), and places
  layers on a DLA core only when min = opt = max batch, logging the placement as
  TensorRT does ("Layers Running on DLA", ``[DlaLayer]``/``[GpuLayer]`` lines).

The GPU tier (``test/test_tensorrt_gpu.py``) stays the real check. :func:`install`
puts the two modules into ``sys.modules``.
"""

import contextlib
import hashlib
import json
import sys
import threading
import types
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

VERSION = '10.3.0'
MAGIC = b'TRT-STANDIN-ENGINE\n'
CALIB_MAGIC = b'TRT-STANDIN-CALIB\n'
TIMING_MAGIC = b'TRT-STANDIN-TIMING\n'
#: what the stand-in saw done wrong: (what, where) pairs; tests assert it stays empty
VIOLATIONS: List[str] = []
# operators a DLA core runs (TensorRT's DLA layer support, simplified)
DLA_OPS = {'Conv', 'Relu', 'MaxPool', 'AveragePool', 'GlobalAveragePool', 'Add', 'Gemm',
           'BatchNormalization', 'Flatten'}


# ==== pycuda.driver ======================================================================

class CudaError(Exception):
    """pycuda.driver.Error."""


class LogicError(CudaError):
    """pycuda.driver.LogicError (what pycuda raises for context misuse)."""


_THREAD_STATE = threading.local()


def _stack() -> List['Context']:
    if not hasattr(_THREAD_STATE, 'stack'):
        _THREAD_STATE.stack = []
    return _THREAD_STATE.stack


def current_context() -> Optional['Context']:
    """Return the context current on this thread (None when none)."""
    stack = _stack()
    while stack and not stack[-1].valid:
        stack.pop()
    return stack[-1] if stack else None


def require_context(what: str) -> 'Context':
    """Return the current context, or raise as CUDA does when there is none."""
    context = current_context()
    if context is None:
        raise LogicError(f'{what}: no currently active context? (CUDA_ERROR_INVALID_CONTEXT)')
    return context


class Device:
    """pycuda.driver.Device of a GPU the test describes (:data:`GPU`)."""

    def __init__(self, index: int) -> None:
        if not 0 <= index < GPU['count']:
            raise LogicError(f'cuDeviceGet failed: invalid device ordinal {index}')
        self.index = index

    @staticmethod
    def count() -> int:
        return int(GPU['count'])

    def name(self) -> str:
        return str(GPU['name'])

    def compute_capability(self) -> Tuple[int, int]:
        return tuple(GPU['compute_capability'])  # type: ignore[return-value]

    def total_memory(self) -> int:
        return int(GPU['memory_bytes'])

    def get_attribute(self, attribute: Any) -> int:
        if attribute == device_attribute.MULTIPROCESSOR_COUNT:
            return int(GPU['sm_count'])
        raise LogicError(f'attribute {attribute} not modelled')

    def make_context(self, flags: int = 0) -> 'Context':
        context = Context(self, flags=flags)
        _stack().append(context)  # make_context leaves the new context current
        return context

    def retain_primary_context(self) -> 'Context':
        with _PRIMARY_LOCK:
            state = _PRIMARY.get(self.index)
            if state is None or state.retains == 0:
                state = _PrimaryState(self.index)
                _PRIMARY[self.index] = state
            state.retains += 1
        return Context(self, state=state)  # not pushed, unlike make_context


class _PrimaryState:
    """The device's primary context, shared by every handle that retained it."""

    def __init__(self, device_index: int) -> None:
        self.device_index = device_index
        self.retains = 0
        self.allocated: Dict[int, 'DeviceAllocation'] = {}
        self.host_allocated: Dict[int, 'HostAllocation'] = {}


_PRIMARY: Dict[int, _PrimaryState] = {}
_PRIMARY_LOCK = threading.Lock()


class device_attribute:  # noqa: N801 (pycuda's name)
    """pycuda.driver.device_attribute (the one attribute used)."""

    MULTIPROCESSOR_COUNT = 16


class ctx_flags:  # noqa: N801 (pycuda's name)
    """pycuda.driver.ctx_flags."""

    SCHED_AUTO = 0
    SCHED_SPIN = 1
    SCHED_YIELD = 2
    SCHED_BLOCKING_SYNC = 4


class Context:
    """
    pycuda.driver.Context: a private context, or one handle on the primary context.

    As in pycuda, the object remembers the thread that created it; ``push`` works from
    any thread, ``detach`` destroys a private context (and pops it) or releases a
    primary one (cuDevicePrimaryCtxRelease, which pops nothing).
    """

    def __init__(self, device: Device, flags: int = 0,
                 state: Optional[_PrimaryState] = None) -> None:
        self.device = device
        self.flags = flags
        self.state = state
        self.primary = state is not None
        self.valid = True
        self.thread = threading.get_ident()
        self.allocated: Dict[int, 'DeviceAllocation'] = state.allocated if state else {}
        self.host_allocated: Dict[int, 'HostAllocation'] = (
            state.host_allocated if state else {})

    def push(self) -> None:
        if not self.valid:
            raise LogicError('cannot activate dead context')
        _stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = _stack()
        if not stack:
            raise LogicError('context::pop: cannot pop non-current context '
                             '(CUDA_ERROR_INVALID_CONTEXT)')
        stack.pop()

    def detach(self) -> None:
        """Destroy (private) or release (primary) the context as pycuda does."""
        if not self.valid:
            raise LogicError('context::detach: cannot detach from invalid context')
        if current_context() is self:
            self._release()
            _stack().pop()  # pycuda's own stack; a primary one stays on the driver's
            if self.primary:
                VIOLATIONS.append('a primary context was released while current: '
                                  "cuDevicePrimaryCtxRelease leaves it on the thread's stack")
        elif self.thread == threading.get_ident():
            self._release()
            if self.primary:
                VIOLATIONS.append('a primary context was released by pycuda with a push it '
                                  'never pops')
        else:
            VIOLATIONS.append('a context was detached from a thread where it is not current '
                              'and that did not create it: pycuda leaks it')
        self.valid = False

    def _release(self) -> None:
        if self.state is not None:
            self.state.retains -= 1
            if self.state.retains > 0:
                return
        leaked = len(self.allocated) + len(self.host_allocated)
        if leaked:
            VIOLATIONS.append(f'context destroyed with {leaked} allocation(s) not freed')

    @staticmethod
    def synchronize() -> None:
        require_context('Context.synchronize')


class DeviceAllocation:
    """pycuda.driver.DeviceAllocation: int() is the address; free() as pycuda does."""

    _next = [0x7000_0000]

    def __init__(self, nbytes: int) -> None:
        self.context = require_context('mem_alloc')
        self.memory = bytearray(int(nbytes))
        self.address = self._next[0]
        self._next[0] += max(256, (int(nbytes) + 255) // 256 * 256)
        self.freed = False
        self.context.allocated[self.address] = self
        _MEMORY[self.address] = self

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        if self.freed:
            return
        _activate_for_free(self.context, 'device_allocation::free')
        self.freed = True
        self.context.allocated.pop(self.address, None)
        _MEMORY.pop(self.address, None)


class HostAllocation(bytearray):
    """The ``base`` of a ``pagelocked_empty`` array: page-locked host memory (context-bound)."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(int(nbytes))
        self.context = require_context('pagelocked_empty')
        self.freed = False
        self.context.host_allocated[id(self)] = self

    def free(self) -> None:
        if self.freed:
            return
        _activate_for_free(self.context, 'host_allocation::free')
        self.freed = True
        self.context.host_allocated.pop(id(self), None)


def _activate_for_free(context: Context, what: str) -> None:
    # pycuda scoped_context_activation: no switch when current, else only on the
    # thread that created the context
    if not context.valid:
        raise LogicError(f'{what}: cannot activate dead context')
    if current_context() is not context and threading.get_ident() != context.thread:
        raise LogicError(f'{what}: cannot activate out-of-thread context')


_MEMORY: Dict[int, DeviceAllocation] = {}


def _device_view(address: int, nbytes: int) -> memoryview:
    for base, allocation in _MEMORY.items():
        if base <= address and address + nbytes <= base + len(allocation.memory):
            offset = address - base
            return memoryview(allocation.memory)[offset:offset + nbytes]
    raise CudaError(f'invalid device address 0x{address:x} ({nbytes} bytes): '
                    'CUDA_ERROR_ILLEGAL_ADDRESS')


class Stream:
    """pycuda.driver.Stream: queued work runs at synchronize()."""

    def __init__(self, flags: int = 0) -> None:
        self.context = require_context('Stream')
        self.handle = id(self)
        self._queue: List[Any] = []
        _STREAMS[self.handle] = self

    def enqueue(self, work: Any) -> None:
        self._queue.append(work)

    def synchronize(self) -> None:
        queue, self._queue = self._queue, []
        for work in queue:
            work()


_STREAMS: Dict[int, Stream] = {}


def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
    """Return a page-locked host array (its ``base`` has ``free()``)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape)) if shape else 1
    host = HostAllocation(count * dtype.itemsize)
    return np.ndarray(shape, dtype=dtype, buffer=host)


def mem_alloc(nbytes: int) -> DeviceAllocation:
    """Allocate device memory in the current context."""
    return DeviceAllocation(nbytes)


def _same_context(allocation: DeviceAllocation, what: str) -> None:
    current = require_context(what)
    if current is not allocation.context:
        raise LogicError(f'{what}: memory of another context')


def _pinned(array: Any) -> bool:
    """Return whether ``array`` (or what it views) is page-locked host memory."""
    base = getattr(array, 'base', None)
    while base is not None and not isinstance(base, HostAllocation):
        base = getattr(base, 'base', None)
    return isinstance(base, HostAllocation) and not base.freed


def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream) -> None:
    """Queue a host-to-device copy on ``stream`` (from page-locked memory: truly async)."""
    _same_context(dest, 'memcpy_htod_async')
    if not _pinned(src):
        VIOLATIONS.append('memcpy_htod_async from memory that is not page-locked')
    data = np.ascontiguousarray(src).tobytes()  # pinned source: read at enqueue is fine
    stream.enqueue(lambda: _device_view(int(dest), len(data)).__setitem__(slice(None), data))


def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream) -> None:
    """Queue a device-to-host copy on ``stream`` (``dest`` changes at synchronize)."""
    _same_context(src, 'memcpy_dtoh_async')
    if not _pinned(dest):
        VIOLATIONS.append('memcpy_dtoh_async into memory that is not page-locked')

    def copy() -> None:
        view = _device_view(int(src), dest.nbytes)
        dest[...] = np.frombuffer(view, dtype=dest.dtype).reshape(dest.shape)
    stream.enqueue(copy)


def memcpy_htod(dest: DeviceAllocation, src: np.ndarray) -> None:
    """Copy host to device now."""
    _same_context(dest, 'memcpy_htod')
    data = np.ascontiguousarray(src).tobytes()
    _device_view(int(dest), len(data))[:] = data


def mem_get_info() -> Tuple[int, int]:
    """Return (free, total) device bytes."""
    require_context('mem_get_info')
    used = sum(len(a.memory) for a in _MEMORY.values())
    return int(GPU['memory_bytes']) - used, int(GPU['memory_bytes'])


def init() -> None:
    """cuInit."""


def get_version() -> Tuple[int, int, int]:
    """Return the CUDA version pycuda was built for."""
    return (12, 6, 0)


#: the GPU the stand-in pretends to have (tests may change it)
GPU: Dict[str, Any] = {'count': 1, 'name': 'Orin', 'compute_capability': (8, 7),
                       'sm_count': 16, 'memory_bytes': 32 << 30, 'dla_cores': 2}


# ==== tensorrt ===========================================================================

class _TrtObject:
    """Base of TensorRT objects: created and destroyed with a CUDA context current."""

    def __init__(self) -> None:
        self._created_in = current_context()
        if self._created_in is None:
            VIOLATIONS.append(f'{type(self).__name__} created with no CUDA context current')

    def __del__(self) -> None:
        context = current_context()
        if context is None or not context.valid:
            VIOLATIONS.append(f'{type(self).__name__} destroyed with no CUDA context current')


class Logger:
    """tensorrt.Logger with its severities."""

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)
    Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

    def __init__(self, min_severity: int = WARNING) -> None:
        self.min_severity = min_severity
        self.messages: List[Tuple[int, str]] = []

    def log(self, severity: int, msg: str) -> None:
        self.messages.append((severity, msg))


class ILogger:
    """tensorrt.ILogger: subclass it and implement log(severity, msg)."""

    def __init__(self) -> None:
        pass

    def log(self, severity: int, msg: str) -> None:
        raise NotImplementedError


def _log(logger: Any, severity: int, msg: str) -> None:
    if logger is not None:
        logger.log(severity, msg)


class DataType:
    """tensorrt.DataType."""

    FLOAT = 'DataType.FLOAT'
    HALF = 'DataType.HALF'
    INT8 = 'DataType.INT8'
    INT32 = 'DataType.INT32'
    BOOL = 'DataType.BOOL'
    BF16 = 'DataType.BF16'


float32, float16 = DataType.FLOAT, DataType.HALF
_NP_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
             DataType.INT32: np.int32, DataType.BOOL: np.bool_}


def nptype(dtype: Any) -> Any:
    """tensorrt.nptype."""
    if dtype not in _NP_TYPES:
        raise TypeError(f'Could not resolve TensorRT datatype to an equivalent numpy datatype.'
                        f' ({dtype})')
    return _NP_TYPES[dtype]


class TensorIOMode:
    """tensorrt.TensorIOMode."""

    NONE, INPUT, OUTPUT = 'NONE', 'INPUT', 'OUTPUT'


class DeviceType:
    """tensorrt.DeviceType."""

    GPU, DLA = 'DeviceType.GPU', 'DeviceType.DLA'


class BuilderFlag:
    """tensorrt.BuilderFlag (10.x, weakly typed flags still present)."""

    FP16, INT8, TF32, GPU_FALLBACK, STRICT_TYPES = 'FP16', 'INT8', 'TF32', 'GPU_FALLBACK', 'ST'


class MemoryPoolType:
    """tensorrt.MemoryPoolType."""

    WORKSPACE = 'WORKSPACE'


class NetworkDefinitionCreationFlag:
    """
    tensorrt.NetworkDefinitionCreationFlag (NvInfer.h, TensorRT 10.x).

    ``kEXPLICIT_BATCH = 0`` (deprecated, ignored: every 10.x network is explicit batch),
    ``kSTRONGLY_TYPED = 1``; ``create_network`` takes ``1 << flag`` bits.
    """

    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


#: NvInfer.h EnumMax<NetworkDefinitionCreationFlag>() in 10.x: bits beyond are invalid
_NETWORK_FLAG_BITS = 2


class LayerInformationFormat:
    """tensorrt.LayerInformationFormat."""

    ONELINE, JSON = 'ONELINE', 'JSON'


class ProfilingVerbosity:
    """tensorrt.ProfilingVerbosity."""

    LAYER_NAMES_ONLY, NONE, DETAILED = 'LAYER_NAMES_ONLY', 'NONE', 'DETAILED'


def _onnx_session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=['CPUExecutionProvider'])


_ORT_TYPES = {'tensor(float)': DataType.FLOAT, 'tensor(float16)': DataType.HALF}


def engine_bytes(onnx_bytes: bytes, profile: Sequence[int], precision: str = 'fp16',
                 dla_core: Optional[int] = None, version: str = VERSION,
                 layers: Optional[Dict[str, int]] = None) -> bytes:
    """Return a stand-in engine of an ONNX model with batch ``profile`` (min, opt, max)."""
    header = {'version': version, 'profile': list(profile), 'precision': precision,
              'dla_core': dla_core, 'layers': layers or {'dla': 0, 'gpu': 1},
              'onnx_sha256': hashlib.sha256(onnx_bytes).hexdigest(),
              'device': [GPU['name'], list(GPU['compute_capability'])]}
    return MAGIC + json.dumps(header).encode() + b'\n' + onnx_bytes


class Runtime(_TrtObject):
    """tensorrt.Runtime."""

    def __init__(self, logger: Any) -> None:
        super().__init__()
        self.logger = logger
        self.DLA_core = -1

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 (TensorRT's name)
        return int(GPU['dla_cores'])

    def deserialize_cuda_engine(self, data: bytes) -> Optional['ICudaEngine']:
        require_context('deserialize_cuda_engine')
        if not data.startswith(MAGIC) or b'\n' not in data[len(MAGIC):]:
            _log(self.logger, Logger.ERROR, 'IRuntime::deserializeCudaEngine: Error Code 1: '
                 'Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.)')
            return None
        head, _, onnx_bytes = data[len(MAGIC):].partition(b'\n')
        try:
            header = json.loads(head)
            session = _onnx_session(onnx_bytes)
        except Exception as exc:  # a damaged engine: TensorRT logs and returns None
            _log(self.logger, Logger.ERROR, f'IRuntime::deserializeCudaEngine: {exc}')
            return None
        if header['version'] != __version__ or header['device'] != [
                GPU['name'], list(GPU['compute_capability'])]:
            _log(self.logger, Logger.ERROR, 'The engine plan file is not compatible with '
                 'this version of TensorRT or this GPU')
            return None
        dla_core = header.get('dla_core')
        if dla_core is not None and not 0 <= self.DLA_core < GPU['dla_cores']:
            _log(self.logger, Logger.ERROR, 'engine needs a DLA core this runtime lacks')
            return None
        return ICudaEngine(header, session)


class ICudaEngine(_TrtObject):
    """tensorrt.ICudaEngine of a stand-in engine."""

    def __init__(self, header: Dict[str, Any], session: Any) -> None:
        super().__init__()
        self.header = header
        self.session = session
        inp = session.get_inputs()[0]

        def shape(value: Any) -> Tuple[int, ...]:
            return tuple(d if isinstance(d, int) else -1 for d in value.shape)
        # every output of the network is an I/O tensor of the engine (logits, embedding)
        self._io = [(inp.name, TensorIOMode.INPUT, shape(inp),
                     _ORT_TYPES.get(inp.type, DataType.FLOAT))] + [
            (out.name, TensorIOMode.OUTPUT, shape(out), _ORT_TYPES.get(out.type, DataType.FLOAT))
            for out in session.get_outputs()]
        self.executed_batches: List[int] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    @property
    def num_layers(self) -> int:
        return sum(self.header['layers'].values())

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def _tensor(self, name: str) -> Tuple[str, str, Tuple[int, ...], str]:
        return next(t for t in self._io if t[0] == name)

    def get_tensor_mode(self, name: str) -> str:
        return self._tensor(name)[1]

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        return self._tensor(name)[2]

    def get_tensor_dtype(self, name: str) -> str:
        return self._tensor(name)[3]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Tuple[int, ...]]:
        shape = self._tensor(name)[2]
        return [(batch,) + tuple(shape[1:]) for batch in self.header['profile']]

    def create_execution_context(self) -> 'IExecutionContext':
        require_context('create_execution_context')
        return IExecutionContext(self)

    def create_engine_inspector(self) -> 'EngineInspector':
        return EngineInspector(self)


class EngineInspector(_TrtObject):
    """tensorrt.EngineInspector (engine information as JSON)."""

    def __init__(self, engine: ICudaEngine) -> None:
        super().__init__()
        self.engine = engine

    def get_engine_information(self, fmt: str) -> str:
        layers = self.engine.header['layers']
        return json.dumps({'Layers': ['{ForeignNode[dla]}'] * layers['dla']
                           + ['gpu layer'] * layers['gpu']})


class IExecutionContext(_TrtObject):
    """tensorrt.IExecutionContext: shapes, addresses, execute_async_v3 with ONNX Runtime."""

    def __init__(self, engine: ICudaEngine) -> None:
        super().__init__()
        self.engine = engine
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._addresses: Dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        low, _, high = self.engine.header['profile']
        shape = tuple(int(v) for v in shape)
        declared = self.engine.get_tensor_shape(name)
        if len(shape) != len(declared) or shape[1:] != tuple(declared[1:]) \
                or not low <= shape[0] <= high:
            return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, self.engine.get_tensor_shape(name))
        batch = next(iter(self._shapes.values()), (-1,))[0]
        return (batch,) + tuple(self.engine.get_tensor_shape(name)[1:])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self._addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        require_context('execute_async_v3')
        stream = _STREAMS.get(stream_handle)
        (inp, _, _, in_type), outputs = self.engine._io[0], self.engine._io[1:]
        names = {inp} | {out[0] for out in outputs}
        if stream is None or inp not in self._shapes or names - set(self._addresses):
            return False  # TensorRT: every I/O tensor needs an address
        shape = self._shapes[inp]
        in_dtype = np.dtype(nptype(in_type))

        def run() -> None:
            count = int(np.prod(shape))
            batch = np.frombuffer(_device_view(self._addresses[inp], count * in_dtype.itemsize),
                                  dtype=in_dtype).reshape(shape)
            results = self.engine.session.run([out[0] for out in outputs], {inp: batch.copy()})
            for (name, _, _, out_type), result in zip(outputs, results):
                result = np.ascontiguousarray(result, dtype=np.dtype(nptype(out_type)))
                _device_view(self._addresses[name], result.nbytes)[:] = result.tobytes()
            self.engine.executed_batches.append(shape[0])
        stream.enqueue(run)
        return True


# --- builder -----------------------------------------------------------------------------

class ITensor:
    """tensorrt.ITensor of a parsed network."""

    def __init__(self, name: str, shape: Tuple[int, ...], dtype: str) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class ILayer:
    """tensorrt.ILayer (name and ONNX operator)."""

    def __init__(self, name: str, op: str) -> None:
        self.name, self.type = name, op


class INetworkDefinition(_TrtObject):
    """tensorrt.INetworkDefinition filled by the ONNX parser."""

    def __init__(self, flags: int) -> None:
        super().__init__()
        self.flags = flags
        self.inputs: List[ITensor] = []
        self.outputs: List[ITensor] = []
        self.layers: List[ILayer] = []
        self.onnx_bytes = b''

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]

    def get_layer(self, index: int) -> ILayer:
        return self.layers[index]


class ParserError:
    """tensorrt.ParserError."""

    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def code(self) -> str:
        return 'ErrorCode.INVALID_GRAPH'

    def node(self) -> int:
        return -1


class OnnxParser(_TrtObject):
    """tensorrt.OnnxParser: fills the network from the ONNX model (via onnxruntime)."""

    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        super().__init__()
        self.network = network
        self.errors: List[ParserError] = []

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, index: int) -> ParserError:
        return self.errors[index]

    def parse(self, model: bytes, path: str = '') -> bool:
        try:
            session = _onnx_session(model)
        except Exception as exc:  # what the parser reports
            self.errors.append(ParserError(f'cannot parse {path}: {exc}'))
            return False

        def shape(value: Any) -> Tuple[int, ...]:
            return tuple(d if isinstance(d, int) else -1 for d in value.shape)
        self.network.inputs = [ITensor(i.name, shape(i), _ORT_TYPES.get(i.type, DataType.FLOAT))
                               for i in session.get_inputs()]
        self.network.outputs = [ITensor(o.name, shape(o),
                                        _ORT_TYPES.get(o.type, DataType.FLOAT))
                                for o in session.get_outputs()]
        self.network.layers = [ILayer(name, op) for name, op in _onnx_nodes(model)]
        self.network.onnx_bytes = model
        return True


def _onnx_nodes(model: bytes) -> List[Tuple[str, str]]:
    try:
        import onnx
    except ImportError:
        return [('network', 'Conv')]
    graph = onnx.load_from_string(model).graph
    return [(node.name or f'{node.op_type}_{i}', node.op_type)
            for i, node in enumerate(graph.node)]


class IOptimizationProfile:
    """tensorrt.IOptimizationProfile."""

    def __init__(self) -> None:
        self.shapes: Dict[str, Tuple[Tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, low: Sequence[int], opt: Sequence[int],
                  high: Sequence[int]) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class ITimingCache:
    """tensorrt.ITimingCache."""

    def __init__(self, key: str, entries: int) -> None:
        self.key, self.entries = key, entries

    def serialize(self) -> bytes:
        return TIMING_MAGIC + json.dumps({'key': self.key, 'entries': self.entries}).encode()


class IBuilderConfig(_TrtObject):
    """tensorrt.IBuilderConfig."""

    def __init__(self) -> None:
        super().__init__()
        self.flags: set = set()
        self.profiles: List[IOptimizationProfile] = []
        self.calibration_profile: Optional[IOptimizationProfile] = None
        self.int8_calibrator: Any = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.pool_limits: Dict[str, int] = {}
        self._timing_cache: Optional[ITimingCache] = None

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self.calibration_profile = profile
        return True

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: str) -> bool:
        return flag in self.flags

    def create_timing_cache(self, serialized: bytes) -> Optional[ITimingCache]:
        if not serialized:
            return ITimingCache(_machine_key(), 0)
        if not serialized.startswith(TIMING_MAGIC):
            return None  # TensorRT: a damaged cache is refused
        try:
            doc = json.loads(serialized[len(TIMING_MAGIC):])
        except ValueError:
            return None
        return ITimingCache(doc['key'], int(doc['entries']))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, ITimingCache):
            raise TypeError('set_timing_cache(): incompatible function arguments. The '
                            'following argument types are supported: (self: '
                            'tensorrt.IBuilderConfig, cache: tensorrt.ITimingCache, '
                            f'ignore_mismatch: bool) -> bool; invoked with: {cache!r}')
        if cache.key != _machine_key() and not ignore_mismatch:
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> Optional[ITimingCache]:
        return self._timing_cache

    def can_run_on_DLA(self, layer: ILayer) -> bool:  # noqa: N802 (TensorRT's name)
        return layer.type in DLA_OPS

    def get_device_type(self, layer: ILayer) -> str:
        return self.default_device_type


def _machine_key() -> str:
    return f"{GPU['name']}/{GPU['compute_capability']}/{__version__}"


class IHostMemory(bytes):
    """tensorrt.IHostMemory (bytes-like)."""


class IInt8EntropyCalibrator2:
    """tensorrt.IInt8EntropyCalibrator2 base class."""

    def __init__(self) -> None:
        pass


def _trampoline(call: Any, name: str, failed: Any) -> Any:
    """Call a calibrator override as pyInt8.cpp does: an exception is printed, not raised."""
    try:
        return call()
    except Exception as exc:  # noqa: B902 (the C++ side catches std::exception and ...)
        print(f'[ERROR] Exception caught in {name}(): {exc}', file=sys.stderr)
        return failed


class Builder(_TrtObject):
    """tensorrt.Builder: 'builds' a stand-in engine, calibrating and placing layers."""

    def __init__(self, logger: Any) -> None:
        super().__init__()
        self.logger = logger

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 (TensorRT's name)
        return int(GPU['dla_cores'])

    def create_network(self, flags: int = 0) -> Optional[INetworkDefinition]:
        if not isinstance(flags, int) or flags < 0 or flags >> _NETWORK_FLAG_BITS:
            # IBuilder::createNetworkV2 refuses unknown bits: an error and no network
            _log(self.logger, Logger.ERROR, f'IBuilder::createNetworkV2: Error Code 3: API '
                 f'Usage Error (invalid NetworkDefinitionCreationFlags {flags!r})')
            return None
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _calibrate(self, config: IBuilderConfig, network: INetworkDefinition) -> Optional[bytes]:
        calibrator = config.int8_calibrator
        if calibrator is None:
            _log(self.logger, Logger.ERROR, 'INT8 without a calibrator')
            return None
        # TensorRT's Python wrapper (python/src/infer/pyInt8.cpp, pyCalibratorTrampoline,
        # 10.x): every override is called inside try/catch; an exception is printed to
        # stderr and becomes -1 / false / nullptr / nothing, never a Python exception
        batch_size = _trampoline(calibrator.get_batch_size, 'get_batch_size', -1)
        if config.calibration_profile is None:
            _log(self.logger, Logger.ERROR, 'a dynamic-shape network needs a calibration profile')
            return None
        shape = config.calibration_profile.shapes[network.get_input(0).name][0]
        expected = shape[0]
        if not isinstance(batch_size, int) or batch_size != expected:
            _log(self.logger, Logger.ERROR, f'Calibrator batch size {batch_size} does not match '
                 f'the calibration profile batch {expected}')
            return None
        cache = _trampoline(calibrator.read_calibration_cache, 'read_calibration_cache', None)
        key = hashlib.sha256(network.onnx_bytes).hexdigest()
        if cache:
            if bytes(memoryview(cache)) == CALIB_MAGIC + key.encode():
                return bytes(cache)
            _log(self.logger, Logger.WARNING, 'calibration cache does not match: calibrating')
        batches = 0
        name = network.get_input(0).name
        while True:
            pointers = _trampoline(lambda: calibrator.get_batch([name]), 'get_batch', None)
            if not pointers:
                break
            require_context('calibration')
            _device_view(int(pointers[0]), 4 * int(np.prod(shape)))  # the whole float32 batch
            batches += 1
        if batches == 0:
            _log(self.logger, Logger.ERROR, 'Calibration failure occurred with no scaling '
                 'factors detected')
            return None
        cache = CALIB_MAGIC + key.encode()
        _trampoline(lambda: calibrator.write_calibration_cache(memoryview(cache)),
                    'write_calibration_cache', None)
        return cache

    def build_serialized_network(self, network: INetworkDefinition,
                                 config: IBuilderConfig) -> Optional[IHostMemory]:
        require_context('build_serialized_network')
        if not config.profiles or not network.num_inputs:
            _log(self.logger, Logger.ERROR, 'network needs an optimization profile')
            return None
        low, opt, high = config.profiles[0].shapes[network.get_input(0).name]
        strong = bool(network.flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        weak_flags = {BuilderFlag.FP16, BuilderFlag.INT8} & config.flags
        if strong and weak_flags:
            # a strongly typed network takes its precision from its tensors: TensorRT
            # refuses the weakly typed precision flags on it
            _log(self.logger, Logger.ERROR, 'Error Code 4: API Usage Error (precision flags '
                 f'{sorted(weak_flags)} are not allowed on a strongly typed network)')
            return None
        if BuilderFlag.INT8 in config.flags and self._calibrate(config, network) is None:
            return None
        dla = config.default_device_type == DeviceType.DLA
        eligible = [layer for layer in network.layers if config.can_run_on_DLA(layer)]
        on_dla = bool(dla and eligible and low[0] == opt[0] == high[0])
        if dla and not on_dla and BuilderFlag.GPU_FALLBACK not in config.flags:
            _log(self.logger, Logger.ERROR, 'layer cannot run on DLA and GPU fallback is off')
            return None
        gpu = [layer for layer in network.layers if not on_dla or layer not in eligible]
        if dla:
            _log(self.logger, Logger.INFO, '---------- Layers Running on DLA ----------')
            if on_dla:
                _log(self.logger, Logger.INFO, '[DlaLayer] {ForeignNode['
                     + '...'.join(layer.name for layer in eligible) + ']}')
            _log(self.logger, Logger.INFO, '---------- Layers Running on GPU ----------')
            for layer in gpu:
                _log(self.logger, Logger.INFO, f'[GpuLayer] {layer.type.upper()}: {layer.name}')
        if config._timing_cache is not None:
            config._timing_cache.entries += len(network.layers)
        precision = ('int8' if BuilderFlag.INT8 in config.flags else 'fp16'
                     if BuilderFlag.FP16 in config.flags else 'typed' if strong else 'fp32')
        return IHostMemory(engine_bytes(
            network.onnx_bytes, (low[0], opt[0], high[0]), precision,
            config.DLA_core if dla else None, version=__version__,
            layers={'dla': 1 if on_dla else 0, 'gpu': len(gpu)}))


# ==== installing =========================================================================

def _tensorrt_module() -> types.ModuleType:
    module = types.ModuleType('tensorrt')
    for name in ('Logger', 'ILogger', 'Runtime', 'DataType', 'nptype', 'TensorIOMode',
                 'DeviceType', 'BuilderFlag', 'MemoryPoolType', 'NetworkDefinitionCreationFlag',
                 'LayerInformationFormat', 'ProfilingVerbosity', 'Builder', 'OnnxParser',
                 'IInt8EntropyCalibrator2', 'float32', 'float16'):
        setattr(module, name, globals()[name])
    module.__version__ = __version__
    return module


def _driver_module() -> types.ModuleType:
    module = types.ModuleType('pycuda.driver')
    names = {'Error': CudaError, 'LogicError': LogicError, 'Device': Device,
             'Context': Context, 'Stream': Stream, 'ctx_flags': ctx_flags,
             'device_attribute': device_attribute, 'pagelocked_empty': pagelocked_empty,
             'mem_alloc': mem_alloc, 'memcpy_htod_async': memcpy_htod_async,
             'memcpy_dtoh_async': memcpy_dtoh_async, 'memcpy_htod': memcpy_htod,
             'mem_get_info': mem_get_info, 'init': init, 'get_version': get_version}
    for name, value in names.items():
        setattr(module, name, value)
    return module


__version__ = VERSION


def install(monkeypatch: Any, version: str = VERSION, **gpu: Any) -> types.SimpleNamespace:
    """
    Put the stand-in ``tensorrt`` and ``pycuda.driver`` into ``sys.modules``.

    :param version: the TensorRT version to report.
    :param gpu: overrides of :data:`GPU` (name, compute_capability, sm_count, dla_cores...).
    :returns: the modules and the stand-in's state (``violations``, ``gpu``).
    """
    monkeypatch.setattr(sys.modules[__name__], '__version__', version)
    for key, value in gpu.items():
        monkeypatch.setitem(GPU, key, value)
    VIOLATIONS.clear()
    _PRIMARY.clear()
    trt = _tensorrt_module()
    driver = _driver_module()
    package = types.ModuleType('pycuda')
    package.driver = driver
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    monkeypatch.setitem(sys.modules, 'pycuda', package)
    monkeypatch.setitem(sys.modules, 'pycuda.driver', driver)
    return types.SimpleNamespace(trt=trt, cuda=driver, violations=VIOLATIONS, gpu=GPU,
                                 memory=_MEMORY)


@contextlib.contextmanager
def no_context_current() -> Iterator[None]:
    """Check that the block leaves no context current on this thread."""
    yield
    if current_context() is not None:
        VIOLATIONS.append('a CUDA context was left current on the thread')
