"""``TorchBackend``: a PyTorch detector behind the SDK's ``InferenceBackend`` interface.

The conversion pipeline's accuracy check runs the full-precision reference as
``Detector(artifact, backend=TorchBackend(model))``: the same pre-processing, decoding and NMS
as every deployed artifact, only the model differs. Training-time evaluation decodes with the
same ``edgedet.decoder.HeadDecoder``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from edgedet.models.contract import DetectionModel, as_detection_model


class TorchBackend:
    """Runs ``model.forward_export`` (eval mode, no grad) on ``device``.

    Args:
        model: a detector meeting ``edgedet.models.contract.DetectionModel``.
        input_size: ``(width, height)`` the model is fed.
        device: torch device; default CUDA when available, else CPU.
        model_path: where the weights came from (for messages only).
    """

    name = "torch"
    input_name = "images"

    def __init__(self, model: DetectionModel, input_size: tuple[int, int],
                 device: str | torch.device | None = None,
                 model_path: str | Path = "<in memory>") -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = as_detection_model(model)
        first = next(model.parameters(), None)  # type: ignore[attr-defined]
        moves = first is not None and (first.device.type != self.device.type or (
            self.device.index is not None and first.device.index != self.device.index))
        if moves:  # ("cuda" is wherever "cuda:0" already is)
            # A copy on the device: the caller's model stays where it is (the conversion
            # pipeline exports and calibrates the same model on the CPU after this check).
            model = copy.deepcopy(model)
        self.model = model
        self.model.eval().to(self.device)  # type: ignore[attr-defined]
        self.model_path = Path(model_path)
        self.output_names: tuple[str, ...] = tuple(self.model.export_output_names)
        width, height = input_size
        self.input_shape: tuple[int | None, ...] = (None, 3, int(height), int(width))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` → ``{output name: float32 array (N, A, k)}``."""
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with torch.no_grad():
            raw = self.model.forward_export(batch.to(self.device))
        return {name: tensor.float().cpu().numpy()
                for name, tensor in zip(self.output_names, raw, strict=True)}
