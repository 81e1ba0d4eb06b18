"""A test-only backend: proves that a backend is one file plus one ``BackendSpec``.

It reads ``*.toy`` files (an ONNX model under another suffix, as the toy target writes them)
with a private ONNX Runtime session, and declares ``session_per_thread=True`` so that the
table's per-thread wrapper is exercised: ``SESSIONS`` counts the sessions made.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgedet.backends import BackendError, BackendSpec
from edgedet.backends.onnxruntime import OnnxRuntimeBackend

SPEC = BackendSpec("toy", module="onnxruntime", pip_package="onnxruntime",
                   implementation="tests.edgedet.backends.toy_backend:ToyBackend",
                   suffixes=(".toy",), session_per_thread=True,
                   device_help="cpu only")
SESSIONS = itertools.count()
LOCK = threading.Lock()


class ToyBackend:
    """One single-threaded ONNX Runtime session; refuses to be shared between threads."""

    name = "toy"

    def __init__(self, model_path: Path, threads: int | None = None,
                 device: str | None = None, contents: Mapping[str, bytes] | None = None
                 ) -> None:
        if device not in (None, "cpu"):
            raise BackendError(f"toy backend runs on cpu only, not {device!r}")
        self.model_path = Path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        model = (contents or {}).get(self.model_path.name, str(model_path))
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._owner = threading.get_ident()
        with LOCK:
            self.number = next(SESSIONS)
        model_input = self._session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in model_input.shape)
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if threading.get_ident() != self._owner:
            raise RuntimeError("a toy session was shared between threads")
        outputs = self._session.run(list(self.output_names), {self.input_name: images})
        return dict(zip(self.output_names, outputs, strict=True))


CLOSED: list[int] = []


class ClosableOrtBackend(OnnxRuntimeBackend):
    """ONNX Runtime with a ``close`` that records itself (as TensorRT's frees its context)."""

    def close(self) -> None:
        CLOSED.append(id(self))


class LegacyOrtBackend:
    """A backend written before ``contents`` (its constructor does not take it)."""

    name = "legacy"

    def __init__(self, model_path: Path, threads: int | None = None,
                 device: str | None = None) -> None:
        inner = OnnxRuntimeBackend(model_path, threads, device)
        self.model_path, self.run = inner.model_path, inner.run
        self.input_name, self.output_names = inner.input_name, inner.output_names
        self.input_shape = inner.input_shape


class BlockingOrtBackend(ClosableOrtBackend):
    """Its runs wait for ``RELEASE`` once ``ENTERED`` is set (a run still in progress)."""

    ENTERED = threading.Event()
    RELEASE = threading.Event()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        BlockingOrtBackend.ENTERED.set()
        BlockingOrtBackend.RELEASE.wait(60)
        return super().run(images)
