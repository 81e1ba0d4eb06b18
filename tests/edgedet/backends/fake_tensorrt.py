# ruff: noqa: N801, N815 - the stand-ins keep cuda-python's names (cudaError_t.cudaSuccess, ...)
"""Stand-ins for ``tensorrt`` and cuda-python's runtime bindings, for machines with neither.

They implement only the calls ``edgedet.backends.tensorrt`` makes, with the documented
signatures and return conventions (cuda-python: ``(error, *values)`` tuples; TensorRT: None
from a failed build or deserialization), so that the backend's own logic runs here: the engine
key and cache, building once, per-thread contexts, buffers and copies. "Device memory" is host
memory, and an "engine" runs its ONNX file on ONNX Runtime. They prove nothing about TensorRT
itself; the ``gpu`` tests do that.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import threading
import types
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort

ENGINE_MAGIC = b"FAKETRT1"


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    # importlib.util.find_spec (edgedet.backends.is_available) needs a spec on a module that
    # is already in sys.modules.
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


# ------------------------------------------------------------------------------ cuda-python


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInvalidDevice = 101


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class _Stream:
    def __init__(self, handle: int) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


class FakeCudaRuntime:
    """The ``cudaXxx`` functions the backend calls, on host memory."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self, gpu_name: bytes = b"Fake GPU", capability: tuple[int, int] = (8, 7),
                 count: int = 1) -> None:
        self.gpu_name, self.capability, self.count = gpu_name, capability, count
        self.allocations: dict[int, ctypes.Array] = {}
        self.streams = 0
        # The CUDA runtime is thread-safe; a plain dict read in one thread while another
        # allocates is not ("dictionary changed size during iteration" in a fresh-clone run).
        self._lock = threading.Lock()

    def cudaGetDeviceCount(self) -> tuple:
        return cudaError_t.cudaSuccess, self.count

    def cudaGetDeviceProperties(self, index: int) -> tuple:
        if not 0 <= index < self.count:
            return cudaError_t.cudaErrorInvalidDevice, None
        props = types.SimpleNamespace(name=self.gpu_name + b"\0" * 8,
                                      major=self.capability[0], minor=self.capability[1])
        return cudaError_t.cudaSuccess, props

    def cudaSetDevice(self, index: int) -> tuple:
        ok = 0 <= index < self.count
        return (cudaError_t.cudaSuccess if ok else cudaError_t.cudaErrorInvalidDevice,)

    def cudaMalloc(self, size: int) -> tuple:
        buffer = (ctypes.c_char * size)()
        pointer = ctypes.addressof(buffer)
        with self._lock:
            self.allocations[pointer] = buffer
        return cudaError_t.cudaSuccess, pointer

    def cudaFree(self, pointer: int) -> tuple:
        with self._lock:
            found = self.allocations.pop(pointer, None) is not None
        return (cudaError_t.cudaSuccess if found else cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamCreate(self) -> tuple:
        with self._lock:
            self.streams += 1
            return cudaError_t.cudaSuccess, _Stream(1000 + self.streams)

    def cudaStreamDestroy(self, stream: _Stream) -> tuple:
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: _Stream) -> tuple:
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: cudaMemcpyKind,
                        stream: _Stream) -> tuple:
        device = dst if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else src
        with self._lock:
            allocations = list(self.allocations.items())
        if not isinstance(dst, int) or not isinstance(src, int) or not any(
            start <= device and device + count <= start + len(buffer)
            for start, buffer in allocations
        ):
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(dst, src, count)
        return (cudaError_t.cudaSuccess,)


# ------------------------------------------------------------------------------- tensorrt


class _Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class _Tensor:
    def __init__(self, name: str, shape: list) -> None:
        self.name = name
        self.shape = [d if isinstance(d, int) else -1 for d in shape]


class _Network:
    def __init__(self) -> None:
        self.path: str | None = None
        self.inputs: list[_Tensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> _Tensor:
        return self.inputs[index]


class _Parser:
    def __init__(self, network: _Network, logger: _Logger) -> None:
        self.network, self.errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]

    def parse_from_file(self, path: str) -> bool:
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.errors.append(f"ModelImporter: {exc.__class__.__name__}")
            return False
        self.network.path = path
        self.network.inputs = [_Tensor(i.name, i.shape) for i in session.get_inputs()]
        return True


class _Config:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.workspace = 0

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.workspace = size

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)


class _Builder:
    builds = 0

    def __init__(self, logger: _Logger) -> None:
        pass

    def create_network(self, flags: int = 0) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def build_serialized_network(self, network: _Network, config: _Config) -> memoryview | None:
        _Builder.builds += 1
        description = {"onnx": network.path, "flags": config.flags,
                       "workspace": config.workspace}
        return memoryview(ENGINE_MAGIC + json.dumps(description).encode())  # as IHostMemory


class _Engine:
    def __init__(self, onnx_path: str) -> None:
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.io = [(t.name, "INPUT", t.shape) for t in self.session.get_inputs()] + [
            (t.name, "OUTPUT", t.shape) for t in self.session.get_outputs()]

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def _find(self, name: str) -> tuple:
        return next(t for t in self.io if t[0] == name)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_shape(self, name: str) -> Iterator[int]:
        return iter([d if isinstance(d, int) else -1 for d in self._find(name)[2]])

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_mode(self, name: str) -> str:
        return self._find(name)[1]

    def create_execution_context(self) -> _Context:
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine, self.addresses = engine, {}

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int):
            raise TypeError("stream_handle must be an int")
        feeds = {}
        for name, mode, shape in self.engine.io:
            if mode == "INPUT":
                size = int(np.prod(shape)) * 4
                raw = (ctypes.c_char * size).from_address(self.addresses[name])
                feeds[name] = np.frombuffer(raw, np.float32).reshape(shape).copy()
        names = [n for n, mode, _ in self.engine.io if mode == "OUTPUT"]
        for name, value in zip(names, self.engine.session.run(names, feeds), strict=True):
            value = np.ascontiguousarray(value, np.float32)
            ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
        return True


class _Runtime:
    def __init__(self, logger: _Logger) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        if not bytes(data).startswith(ENGINE_MAGIC):
            return None  # TensorRT logs an error and returns None
        return _Engine(json.loads(bytes(data)[len(ENGINE_MAGIC):])["onnx"])


def make_modules(version: str = "10.3.0",
                 cuda: FakeCudaRuntime | None = None) -> dict[str, types.ModuleType]:
    """``{module name: module}`` to put in ``sys.modules``: ``tensorrt``, ``cuda``,
    ``cuda.bindings``, ``cuda.bindings.runtime``."""
    trt = _module("tensorrt")
    trt.__version__ = version
    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = _Logger, _Builder, _Parser, _Runtime
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dtype: np.dtype(dtype).type
    runtime = cuda or FakeCudaRuntime()
    cudart = _module("cuda.bindings.runtime")
    for name in dir(runtime):
        if name.startswith("cuda"):
            setattr(cudart, name, getattr(runtime, name))
    package, bindings = _module("cuda"), _module("cuda.bindings")
    bindings.runtime, package.bindings = cudart, bindings
    return {"tensorrt": trt, "cuda": package, "cuda.bindings": bindings,
            "cuda.bindings.runtime": cudart}
