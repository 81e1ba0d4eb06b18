"""Inference backends: a table of one-file entries, each runtime imported only in its own file.

A backend loads one model file and runs it: ``run(images (N, 3, H, W) float32)`` returns the
model's outputs by name. Everything before (pre-processing) and after (decoding, NMS) is the
``Detector``'s, shared by all backends. A backend may also offer ``frame_runner``
(``FrameInputBackend``): a run on the resized uint8 frames that normalises inside the runtime,
which ``detect()`` then uses instead of numpy's normalisation (OpenVINO's PrePostProcessor).

Adding a backend is one file in this folder (a class meeting ``InferenceBackend`` whose
constructor takes ``(model_path, threads=None, device=None, contents=None)``, ``contents``
being the artifact's checked file bytes by name, which it loads instead of reading
``model_path`` again where its runtime can) plus one ``BackendSpec`` in
``BACKENDS``. Which model file a backend loads from an artifact is the first of its
``suffixes`` found there (``model_file_for``): OpenVINO reads its IR and also ONNX, so an ONNX
artifact runs on either.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from edgedet.preprocess import PreprocessConfig


class BackendError(RuntimeError):
    """A backend that cannot run this artifact (unavailable runtime, unreadable model file)."""


class BackendUnavailableError(BackendError):
    """The runtime library of a backend is not installed (the message says what to install)."""


class InferenceBackend(Protocol):
    """What ``Detector`` needs from a backend."""

    name: str
    model_path: Path
    input_name: str
    output_names: tuple[str, ...]
    # Static model input (N, 3, H, W) with None for a dynamic axis.
    input_shape: tuple[int | None, ...]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` → ``{output name: array (N, ...)}``."""
        ...


FrameRunner = Callable[[np.ndarray], dict[str, np.ndarray]]
"""``frames_bgr (N, H, W, 3) uint8`` (``resize_to_input``'s output) → the model's outputs."""


@runtime_checkable
class FrameInputBackend(Protocol):
    """A backend that can also normalise inside its runtime (optional; OpenVINO does).

    ``Detector`` then hands it the resized uint8 frames and skips ``normalize_to_nchw``.
    """

    def frame_runner(self, config: PreprocessConfig) -> FrameRunner:
        """A runner giving what ``run(normalize_to_nchw(frames, config))`` gives."""
        ...


@dataclass(frozen=True)
class BackendSpec:
    """One entry of the backend table.

    Attributes:
        name: what manifests and ``Detector(backend=...)`` call it.
        module: the runtime's import name (checked without importing it).
        pip_package: what to install for it.
        implementation: ``"package.module:Class"`` of the backend class.
        suffixes: model file suffixes it reads, in order of preference.
        session_per_thread: its sessions must not be shared between threads, so a ``Detector``
            used from several threads gets one per thread (False where the class itself is
            thread-safe).
        device_help: what ``device`` means for it (for errors and ``--help``).
        fallback: the backend ``Detector(backend="auto")`` runs this one's artifacts on when
            this runtime is not installed (None: none, the missing runtime is an error). It
            must read the artifact's model file, and it gets ``device="auto"`` (its best
            available devices) unless the user chose a device.
        alternative_modules: other import names that provide the same runtime (the backend
            is available when ``module`` or any of these is installed; its file picks the
            one it finds first).
    """

    name: str
    module: str
    pip_package: str
    implementation: str
    suffixes: tuple[str, ...]
    session_per_thread: bool
    device_help: str
    fallback: str | None = None
    alternative_modules: tuple[str, ...] = ()


BACKENDS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("onnxruntime", "onnxruntime", "onnxruntime",
                "edgedet.backends.onnxruntime:OnnxRuntimeBackend", (".onnx",),
                session_per_thread=False,
                device_help="execution providers, comma-separated, in order of preference: "
                            "cpu, cuda (or gpu), tensorrt, openvino, dml, coreml or full provider "
                            "names, or auto (TensorRT, CUDA, CPU: those this build has; "
                            "default cpu)"),
    BackendSpec("openvino", "openvino", "openvino",
                "edgedet.backends.openvino:OpenVinoBackend", (".xml", ".onnx"),
                session_per_thread=False,
                device_help="an OpenVINO device: CPU, GPU, NPU, AUTO, ... (default CPU)"),
    # TensorRT builds an engine for the GPU it runs on (cached: edgedet.engine_cache) from the
    # artifact's ONNX file; where it is missing, ONNX Runtime runs that file on its best
    # providers. On Jetson, TensorRT comes with JetPack (python3-libnvinfer), not from pip.
    BackendSpec("tensorrt", "tensorrt",
                "tensorrt cuda-python (on Jetson: JetPack's python3-libnvinfer + cuda-python)",
                "edgedet.backends.tensorrt:TensorRTBackend", (".onnx",),
                session_per_thread=True,
                device_help="a CUDA GPU: cuda:N or N (default GPU 0)",
                fallback="onnxruntime"),
    # LiteRT (ai-edge-litert); boards that ship the older tflite-runtime package run it too.
    BackendSpec("tflite", "ai_edge_litert", "ai-edge-litert",
                "edgedet.backends.tflite:TFLiteBackend", (".tflite",),
                session_per_thread=True,
                device_help="cpu (XNNPACK; --threads sets its threads)",
                alternative_modules=("tflite_runtime",)),
)}


def backend_spec(name: str) -> BackendSpec:
    """The table entry of backend ``name`` (ValueError listing the known ones)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} "
                         "or 'auto'") from None


def is_available(name: str) -> bool:
    """Whether the runtime library of backend ``name`` (its ``module`` or one of its
    ``alternative_modules``) is importable, without importing it."""
    spec = backend_spec(name)
    return any(importlib.util.find_spec(module) is not None
               for module in (spec.module, *spec.alternative_modules))


def available_backends() -> list[str]:
    """Names of the backends whose runtime is installed."""
    return [name for name in BACKENDS if is_available(name)]


def pip_package(name: str) -> str:
    """The pip package that provides backend ``name``."""
    return backend_spec(name).pip_package


def model_file_for(backend: str, files: list[str]) -> str:
    """The file among ``files`` (artifact-relative names) that ``backend`` loads.

    Raises:
        BackendError: no file of a kind the backend reads.
    """
    suffixes = backend_spec(backend).suffixes
    for suffix in suffixes:
        for name in files:
            if PurePosixPath(name).suffix.lower() == suffix:
                return name
    raise BackendError(f"backend {backend!r} reads {' or '.join(suffixes)} model files; this "
                       f"artifact has {sorted(files)}")


def create_backend(name: str, model_path: Path, threads: int | None = None,
                   device: str | None = None,
                   contents: Mapping[str, bytes] | None = None) -> InferenceBackend:
    """Load ``model_path`` with backend ``name``.

    Args:
        threads: intra-op threads (None = the runtime's default, usually all cores).
        device: where the runtime runs the model (``BackendSpec.device_help``; None = its CPU).
        contents: the artifact's files as checked (``Artifact.contents``, by file name):
            the runtime loads these, not the file again, so the model it runs (in every
            thread of a per-thread backend too) is the one checked, even if the file is
            replaced or rewritten meanwhile; None reads ``model_path``.

    Raises:
        BackendUnavailableError: the runtime is not installed.
        BackendError: the runtime cannot load the file or use the device (the message says).
    """
    spec = backend_spec(name)
    if not is_available(name):
        raise BackendUnavailableError(
            f"backend {name!r} is not installed: pip install {spec.pip_package} "
            f"(or pip install 'edgedet[{name}]')")
    module_name, _, class_name = spec.implementation.partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    model_path = Path(model_path)
    # Only the model file and the weights beside it (an OpenVINO IR's .bin): a per-thread
    # backend keeps these for its threads' sessions, not the whole artifact (a 2x model).
    needed = (model_path.name, model_path.with_suffix(".bin").name)
    extra = {}
    if contents is not None and "contents" in inspect.signature(backend_class).parameters:
        extra["contents"] = {name: contents[name] for name in needed if name in contents}

    def load() -> InferenceBackend:
        return backend_class(model_path, threads=threads, device=device, **extra)

    return _PerThread(load) if spec.session_per_thread else load()


class _PerThread:
    """One session per calling thread, for runtimes whose sessions are not thread-safe.

    The first session is made at once (so load errors surface in the constructor and the
    model's input / outputs are known); other threads make theirs on their first ``run``.
    """

    def __init__(self, load: Callable[[], InferenceBackend]) -> None:
        self._load = load
        self._local = threading.local()
        first = load()
        self._local.session = first
        # Every live thread's, for close(); weak, so a thread that ends frees its session.
        self._sessions: weakref.WeakSet[InferenceBackend] = weakref.WeakSet([first])
        self._lock = threading.Lock()
        self._closed = False
        self.name: str = first.name
        self.model_path: Path = first.model_path
        self.input_name: str = first.input_name
        self.output_names: tuple[str, ...] = first.output_names
        self.input_shape: tuple[int | None, ...] = first.input_shape

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError(f"{self.model_path}: the backend is closed")
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._load()
            with self._lock:
                self._sessions.add(session)
        return session.run(images)

    def close(self) -> None:
        """Close every live thread's session (those with a ``close``) and let them go; later
        runs raise ``RuntimeError``."""
        with self._lock:
            self._closed = True
            sessions = list(self._sessions)
            self._sessions.clear()
        self._local = threading.local()
        for session in sessions:
            close = getattr(session, "close", None)
            if callable(close):
                close()
