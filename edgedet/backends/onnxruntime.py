"""ONNX Runtime backend (``pip install onnxruntime``): runs ``*.onnx`` on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgedet.backends import BackendError


class OnnxRuntimeBackend:
    """One ``InferenceSession`` on the CPU execution provider.

    ``InferenceSession.run`` is thread-safe, so one session serves every thread.
    """

    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise BackendError(f"onnxruntime cannot load {self.model_path}: {exc}") from exc
        model_input = self._session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.input_shape: tuple[int | None, ...] = tuple(
            d if isinstance(d, int) else None for d in model_input.shape
        )
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` → ``{output name: array}``."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        outputs = self._session.run(list(self.output_names), {self.input_name: images})
        return dict(zip(self.output_names, outputs, strict=True))
