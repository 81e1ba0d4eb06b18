"""What lets ``Detector.close()`` release the runtimes safely while other threads detect."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgedet.backends import InferenceBackend


class RunGate:
    """Counts the model runs in progress; ``close`` waits for them and refuses new ones.

    A run holds the gate only while it is inside a runtime (a lock and a counter: about a
    microsecond), so ``close`` from one thread never frees a session another thread is
    running (a TensorRT context, GPU buffers) and returns once the last such run is out.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._changed = threading.Condition()
        self._running = 0
        self._closed = False

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hold the gate for one run; ``RuntimeError`` once closed."""
        with self._changed:
            if self._closed:
                raise RuntimeError(f"{self._name}: this Detector is closed")
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def close(self) -> bool:
        """Refuse new runs and wait for those in progress; False if it was closed already."""
        with self._changed:
            if self._closed:
                return False
            self._closed = True
            self._changed.wait_for(lambda: self._running == 0)
            return True


class ClosedBackend:
    """What a closed Detector keeps of a backend: its description, not its session."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.name: str = backend.name
        self.model_path: Path = backend.model_path
        self.input_name: str = backend.input_name
        self.output_names: tuple[str, ...] = backend.output_names
        self.input_shape: tuple[int | None, ...] = backend.input_shape

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError(f"{self.model_path}: its Detector is closed")
