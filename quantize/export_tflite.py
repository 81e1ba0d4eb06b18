"""Convert a detector's ``forward_export`` to a float32 ``.tflite`` file, without TensorFlow.

``litert-torch`` (the renamed ai-edge-torch; ``pip install edgedet[tflite-export]``) lowers the
``torch.export`` graph of the rewritten model to TFLite ops. The file has one signature
(``serving_default``) whose input key is ``images`` and whose output keys are the model's
``export_output_names``: the converted module takes ``images`` by keyword and returns a dict,
which is what makes litert-torch name the signature that way (``edgedet.backends.tflite``
reads the names from there).

Layout: the input stays NCHW ``(1, 3, H, W)``, like every other target, so one preprocessing
serves them all. litert-torch rewrites the graph to NHWC internally (its layout pass), so the
only cost is a transpose of the input image: on the four detectors, an NHWC-input variant
measured within noise of NCHW (figures in ``quantize/README.md``;
``benchmarks/tflite_layout.py`` measures a checkpoint).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgedet._io import write_bytes_atomic
from edgedet.artifact import INPUT_NAME
from edgedet.models.contract import DetectionModel, as_detection_model
from quantize.export_onnx import ExportError

LOGGER = logging.getLogger(__name__)
EXPORT_EXTRA = "edgedet[tflite-export]"


class NamedOutputs(nn.Module):
    """``forward(images=...)`` -> ``{output name: tensor}``: the dict keys become the TFLite
    signature's output keys."""

    def __init__(self, detector: DetectionModel) -> None:
        super().__init__()
        self.detector = detector  # an nn.Module in practice: registered as a submodule
        self.names = tuple(detector.export_output_names)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.names, self.detector.forward_export(images), strict=True))


@contextlib.contextmanager
def captured_output(what: str) -> Iterator[None]:
    """Keep a library's prints, progress bars and warnings (litert-torch's stage log,
    ai-edge-quantizer's tqdm bars and size summary) out of the command line's output: they
    go to this module's debug log instead."""
    printed = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(printed), \
            contextlib.redirect_stderr(printed):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            if printed.getvalue().strip():
                LOGGER.debug("%s: %s", what, printed.getvalue().strip())


def import_litert_torch() -> Any:
    """``litert_torch``, or an ``ExportError`` saying what to install."""
    try:
        import litert_torch
    except ImportError as error:
        raise ExportError(f"the tflite target needs litert-torch: pip install "
                          f"\"{EXPORT_EXTRA}\" ({error})") from None
    return litert_torch


def export_tflite(model: nn.Module, out_path: str | os.PathLike[str],
                  input_size: tuple[int, int]) -> Path:
    """Write the rewritten ``model``'s ``forward_export`` as a float32 ``.tflite`` file.

    Args:
        model: a detector already passed through ``quantize.rewrites.rewrite_for_export``
            (the training modules' ``grid_sample`` has no TFLite kernel).
        out_path: the file to write; replaced atomically.
        input_size: ``(width, height)``; the input is ``images (1, 3, H, W)`` float32.

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        ExportError: litert-torch is missing, the model is not rewritten or does not meet the
            contract, or the conversion failed.
    """
    out_path = Path(out_path)
    try:
        detector = as_detection_model(model, purpose=f"cannot export {type(model).__name__}")
    except TypeError as error:
        raise ExportError(str(error)) from None
    if not hasattr(model, "export_rewrites"):
        raise ExportError("export_tflite needs the rewritten model "
                          "(quantize.rewrites.rewrite_for_export)")
    with captured_output("import litert-torch"):
        litert_torch = import_litert_torch()
    width, height = (int(v) for v in input_size)
    wrapper = NamedOutputs(detector).eval()
    sample = torch.zeros(1, 3, height, width)
    try:
        with captured_output("litert-torch"), torch.no_grad():
            converted = litert_torch.convert(wrapper, sample_kwargs={INPUT_NAME: sample})
    except Exception as error:
        raise ExportError(f"litert-torch could not convert {type(model).__name__}: "
                          f"{type(error).__name__}: {error}") from error
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        scratch = Path(tmp) / "model.tflite"
        with captured_output("litert-torch export"):
            converted.export(str(scratch))
        write_bytes_atomic(out_path, scratch.read_bytes())
    LOGGER.info("%s: %.1f MB", out_path, out_path.stat().st_size / 1e6)
    return out_path


def signature_outputs(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run a ``.tflite`` file's signature once (float32 I/O files): ``{output key: array}``.
    For checks; the SDK's backend (``edgedet.backends.tflite``) is what deploys."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return {k: np.asarray(v) for k, v in runner(**{INPUT_NAME: images}).items()}
