"""Inference backends: one file each, the runtime library imported only inside that file.

A backend loads one model file and runs it: ``run(images (N, 3, H, W) float32)`` returns the
model's outputs by name. Everything before (pre-processing) and after (decoding, NMS) is the
``Detector``'s, shared by all backends.

Which file a backend loads from an artifact (``model_file_for``): ONNX Runtime reads
``*.onnx``; OpenVINO reads its IR (``*.xml`` + ``*.bin``) and also ONNX directly, so an ONNX
artifact can run on either.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np

BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")

# backend name -> (module to import, pip package that provides it)
_RUNTIME_PACKAGES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "openvino": ("openvino", "openvino"),
}

# Model file suffixes each backend can read, in order of preference.
_READABLE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "onnxruntime": (".onnx",),
    "openvino": (".xml", ".onnx"),
}


class BackendError(RuntimeError):
    """A backend that cannot run this artifact (unavailable runtime, unreadable model file)."""


class BackendUnavailableError(BackendError):
    """The runtime library of a backend is not installed (the message says what to install)."""


class InferenceBackend(Protocol):
    """What ``Detector`` needs from a backend. Implementations must allow concurrent ``run``."""

    name: str
    model_path: Path
    input_name: str
    output_names: tuple[str, ...]
    # Static model input (N, 3, H, W) with None for a dynamic axis.
    input_shape: tuple[int | None, ...]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` → ``{output name: array (N, ...)}``."""
        ...


def is_available(name: str) -> bool:
    """Whether the runtime library of backend ``name`` is importable (without importing it)."""
    module, _ = _RUNTIME_PACKAGES[name]
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """Names of the backends whose runtime is installed."""
    return [name for name in BACKENDS if is_available(name)]


def pip_package(name: str) -> str:
    """The pip package that provides backend ``name``."""
    return _RUNTIME_PACKAGES[name][1]


def model_file_for(backend: str, files: list[str]) -> str:
    """The file among ``files`` (artifact-relative names) that ``backend`` loads.

    Raises:
        BackendError: no file of a kind the backend reads.
    """
    suffixes = _READABLE_SUFFIXES[backend]
    for suffix in suffixes:
        for name in files:
            if PurePosixPath(name).suffix.lower() == suffix:
                return name
    raise BackendError(f"backend {backend!r} reads {' or '.join(suffixes)} model files; this "
                       f"artifact has {sorted(files)}")


def create_backend(name: str, model_path: Path, threads: int | None = None
                   ) -> InferenceBackend:
    """Load ``model_path`` with backend ``name``.

    Float ops always compute in f32, also in INT8 artifacts (see ``OpenVinoBackend``).

    Args:
        threads: intra-op threads (None = the runtime's default, usually all cores).

    Raises:
        BackendUnavailableError: the runtime is not installed.
        BackendError: the runtime cannot load the file (the message names it).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS} or 'auto'")
    if not is_available(name):
        raise BackendUnavailableError(
            f"backend {name!r} is not installed: pip install {pip_package(name)} "
            f"(or pip install 'edgedet[{name}]')")
    if name == "onnxruntime":
        from edgedet.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, threads=threads)
    from edgedet.backends.openvino import OpenVinoBackend

    return OpenVinoBackend(model_path, threads=threads)
