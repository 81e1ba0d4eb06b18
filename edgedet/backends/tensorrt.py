"""TensorRT backend: runs an artifact's ``model.onnx`` as an engine built for this GPU.

TensorRT does not load ONNX directly: it builds an engine for one GPU and one TensorRT version,
which takes seconds on a desktop GPU and minutes on a Jetson. The first load builds it and
caches it (``edgedet.engine_cache``, also ``edgedet build-engine ARTIFACT``); later loads
deserialize the cached engine. Builder flags come from the graph
(``edgedet.tensorrt_config.builder_flags_for``): a QDQ graph is built with INT8 + FP16, a float
graph with FP16.

Install: ``pip install tensorrt cuda-python`` on x86; on Jetson, TensorRT's Python package
comes with JetPack (``python3-libnvinfer``; give the venv ``--system-site-packages``) and
``pip install cuda-python`` matching its CUDA. Written against the name-based tensor API
(``num_io_tensors``, ``set_tensor_address``, ``execute_async_v3``) of TensorRT 8.5+ and 10.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorrt as trt

from edgedet.artifact import sha256_file
from edgedet.backends import BackendError, BackendUnavailableError
from edgedet.engine_cache import (
    EngineKey,
    StaleEngineError,
    default_cache_dir,
    find_or_load,
)
from edgedet.tensorrt_config import (
    builder_flags_for,
    builder_flags_of,
    cuda_device_index,
    workspace_mb,
)

try:  # cuda-python >= 12.6 moved the runtime bindings; older releases have cuda.cudart
    from cuda.bindings import runtime as cudart
except ImportError:
    try:
        from cuda import cudart
    except ImportError as exc:
        raise BackendUnavailableError(
            "the tensorrt backend also needs cuda-python: pip install cuda-python "
            "(a release matching this machine's CUDA)") from exc

# One logger per process, as TensorRT expects; WARNING keeps its build chatter out of logs.
_LOGGER = trt.Logger(trt.Logger.WARNING)
_TRT_MAJOR = int(trt.__version__.split(".")[0])


def _cuda(result: Any, what: str) -> Any:
    """Unpack a cuda-python call's ``(error, *values)``; BackendError on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA {what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else tuple(values)


def use_device(device_index: int) -> None:
    """Make GPU ``device_index`` this host thread's current CUDA device (builds, engines and
    buffers live on the current device, and it is a per-thread setting)."""
    _cuda(cudart.cudaSetDevice(device_index), f"cudaSetDevice({device_index})")


def gpu_properties(device_index: int) -> tuple[str, str]:
    """``(name, "major.minor" compute capability)`` of CUDA device ``device_index``."""
    count = _cuda(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount (is there a GPU?)")
    if not 0 <= device_index < count:
        raise BackendError(f"no CUDA device {device_index}: this machine has {count}")
    props = _cuda(cudart.cudaGetDeviceProperties(device_index), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes | bytearray):  # a char[256] array in most cuda-python releases
        name = bytes(name).split(b"\0")[0].decode("utf-8", "replace")
    return str(name).strip(), f"{props.major}.{props.minor}"


def engine_key(model_path: str | os.PathLike[str], device_index: int = 0,
               workspace: int | None = None, model_bytes: bytes | None = None) -> EngineKey:
    """The cache key of ``model_path``'s engine on GPU ``device_index`` with this TensorRT.

    Args:
        workspace: builder workspace in MB (None: ``$EDGEDET_TRT_WORKSPACE_MB`` or 1024).
        model_bytes: the file's bytes as its artifact check read them (the key is then
            theirs, whatever the file holds now).
    """
    gpu_name, capability = gpu_properties(device_index)
    if model_bytes is None:
        sha256, flags = sha256_file(model_path), builder_flags_for(model_path)
    else:
        sha256 = hashlib.sha256(model_bytes).hexdigest()
        flags = builder_flags_of(model_bytes, str(model_path))
    return EngineKey(model_sha256=sha256, tensorrt_version=trt.__version__,
                     gpu_name=gpu_name, compute_capability=capability,
                     builder_flags=flags, workspace_mb=workspace_mb(workspace))


def build_engine_bytes(onnx_path: str | os.PathLike[str], flags: tuple[str, ...],
                       workspace_mb: int) -> bytes:
    """Build a serialized engine from ``onnx_path`` on the current CUDA device.

    Args:
        flags: builder flags, a subset of ``("fp16", "int8")``.
        workspace_mb: the workspace memory-pool limit.

    Raises:
        BackendError: the parser's errors, a dynamic input shape, or a failed build (naming
            the file; TensorRT's own log on stderr says more).
    """
    builder = trt.Builder(_LOGGER)
    # TensorRT 10 networks are always explicit-batch (the flag is deprecated); 8.x needs it,
    # as its ONNX parser refuses implicit-batch networks.
    network_flags = 0 if _TRT_MAJOR >= 10 else (
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse_from_file(str(onnx_path)):  # from a file: external data resolves
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors or 'no error given'}")
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(d < 0 for d in tensor.shape):
            raise BackendError(f"{onnx_path}: input {tensor.name!r} has dynamic shape "
                               f"{list(tensor.shape)}; the tensorrt backend needs a fixed "
                               "input shape (export with a fixed batch)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for flag in flags:
        # INT8 on a QDQ graph is explicit quantization: the graph's scales, no calibrator.
        builder_flag = getattr(trt.BuilderFlag, flag.upper(), None)
        if builder_flag is None:  # releases after 10.x may drop weakly typed precision flags
            raise BackendError(f"TensorRT {trt.__version__} has no builder flag "
                               f"{flag.upper()}; edgedet supports TensorRT 8.6 to 10.x")
        config.set_flag(builder_flag)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build an engine from {onnx_path} (flags "
                           f"{'+'.join(flags)}, workspace {workspace_mb} MB); its log above "
                           "says why")
    return bytes(serialized)


class TensorRTBackend:
    """One engine, execution context, CUDA stream and set of device buffers.

    Not thread-safe (one context and one set of buffers): the backend table's
    ``session_per_thread=True`` gives each thread its own instance (each deserializing the
    same cached engine). ``threads`` is ignored.

    Raises:
        BackendError: no such GPU, a failed build; ``StaleEngineError`` for a cached engine
            that does not fit (or does not deserialize), with the command that rebuilds it.
    """

    name = "tensorrt"

    def __init__(self, model_path: Path, threads: int | None = None,
                 device: str | None = None, contents: Mapping[str, bytes] | None = None
                 ) -> None:
        del threads  # TensorRT runs on the GPU; there is no CPU thread pool to size
        self.model_path = Path(model_path)
        self.device_index = cuda_device_index(device)
        self._buffers: dict[str, int] = {}
        self._stream: Any = None
        # The key is the checked bytes' (each thread's instance finds the same engine, even
        # after the file was replaced); it checks the device index too.
        self.key = engine_key(self.model_path, self.device_index,
                              model_bytes=(contents or {}).get(self.model_path.name))
        use_device(self.device_index)
        artifact = self.model_path.parent
        self.engine_path, data = find_or_load(
            default_cache_dir(), self.key,
            self._build, artifact=artifact)
        # The runtime must outlive its engine (TensorRT 8 frees the engine through it).
        self._runtime = trt.Runtime(_LOGGER)
        try:
            self._engine = self._runtime.deserialize_cuda_engine(data)
        except Exception:  # some releases raise instead of returning None
            self._engine = None
        if self._engine is None:
            raise StaleEngineError(f"TensorRT {trt.__version__} cannot deserialize "
                                   f"{self.engine_path} (see its log above); rebuild with: "
                                   f"edgedet build-engine {artifact} --rebuild")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT cannot create an execution context for "
                               f"{self.engine_path} (out of GPU memory?)")
        self._allocate()

    def _build(self) -> bytes:
        """A new engine from the model file, which TensorRT's parser reads itself (external
        data resolves from the file's folder): only while it is still the file the key was
        made of, or the cache would file another model's engine under it."""
        if sha256_file(self.model_path) != self.key.model_sha256:
            raise BackendError(f"{self.model_path} changed after its artifact was checked; "
                               "load the artifact again to build its engine")
        return build_engine_bytes(self.model_path, self.key.builder_flags,
                                  self.key.workspace_mb)

    def _allocate(self) -> None:
        """Device buffers for every I/O tensor (static shapes) and a stream."""
        inputs, self._outputs = [], {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.engine_path}: tensor {name!r} has dynamic shape "
                                   f"{list(shape)}; the tensorrt backend needs fixed shapes")
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            self._buffers[name] = _cuda(cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
            if not self._context.set_tensor_address(name, self._buffers[name]):
                raise BackendError(f"TensorRT refused the address of tensor {name!r}")
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append((name, shape, dtype))
            else:
                self._outputs[name] = (shape, dtype)
        if len(inputs) != 1:
            raise BackendError(f"{self.model_path} has {len(inputs)} inputs; detectors take one")
        self.input_name, self._input_shape, self._input_dtype = inputs[0]
        self.input_shape: tuple[int | None, ...] = self._input_shape
        self.output_names: tuple[str, ...] = tuple(self._outputs)
        self._stream = _cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` (N = the engine's batch) → ``{output name: array}``
        (new arrays, not views of reused buffers)."""
        images = np.ascontiguousarray(images, dtype=self._input_dtype)
        if images.shape != self._input_shape:
            raise BackendError(f"the TensorRT engine of {self.model_path} takes input of shape "
                               f"{list(self._input_shape)}, got {list(images.shape)}")
        use_device(self.device_index)  # this thread may have made another GPU current
        stream = self._stream
        _cuda(cudart.cudaMemcpyAsync(self._buffers[self.input_name], images.ctypes.data,
                                     images.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                     stream), "cudaMemcpyAsync (input)")
        if not self._context.execute_async_v3(int(stream)):
            raise BackendError(f"TensorRT failed to run {self.engine_path} (see its log)")
        outputs = {name: np.empty(shape, dtype) for name, (shape, dtype) in self._outputs.items()}
        for name, array in outputs.items():
            _cuda(cudart.cudaMemcpyAsync(array.ctypes.data, self._buffers[name], array.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                  f"cudaMemcpyAsync ({name})")
        # ``images`` and ``outputs`` stay referenced until the copies are done.
        _cuda(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return outputs

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the object is collected)."""
        for pointer in self._buffers.values():
            with contextlib.suppress(Exception):
                cudart.cudaFree(pointer)
        self._buffers = {}
        if self._stream is not None:
            with contextlib.suppress(Exception):
                cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit, cudart may be gone
            self.close()
