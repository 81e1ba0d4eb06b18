"""Export a detector's ``forward_export`` to ONNX: static shapes, checked, simplified, atomic.

The graph has one input ``images`` ``(batch, 3, H, W)`` float32 (already preprocessed, see the
manifest's ``preprocess``) and the raw head tensors as outputs, named by the model's
``export_output_names``; decoding and NMS stay outside (the SDK does them, ``edgedet.decoder``).
Detectors are rewritten first (``quantize.rewrites.rewrite_for_export``) unless they already
were, so the graph holds only standard ops that ONNX Runtime, OpenVINO and TensorRT run.

Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs
``onnxscript``, which the quantize environment does not require. Simplification uses
``onnxsim`` when installed, else ``onnxslim``, else is skipped; what happened is recorded in
the model's metadata (``edgedet.simplifier``) and logged.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from edgedet._io import write_bytes_atomic
from edgedet.artifact import INPUT_NAME
from edgedet.models.contract import DetectionModel, as_detection_model
from quantize.rewrites import rewrite_for_export

LOGGER = logging.getLogger(__name__)

# Opset 17: GridSample (16) and LayerNormalization (17) are standard there, and both ONNX
# Runtime (>= 1.12) and OpenVINO (>= 2022.3) read it. Newer opsets add nothing these graphs use.
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The model could not be exported (the message says which model / file and why)."""


class _ExportForward(nn.Module):
    """Wraps a detector so that ``forward`` is its ``forward_export`` (what gets traced)."""

    def __init__(self, detector: DetectionModel) -> None:
        super().__init__()
        self.detector = detector  # an nn.Module in practice: registered as a submodule

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.detector.forward_export(images))


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """``(model, note)``: the simplified model and which tool did it (or why none did)."""
    try:
        import onnxsim
    except ImportError:
        onnxsim = None
    if onnxsim is not None:
        simplified, ok = onnxsim.simplify(model)
        if ok:
            return simplified, f"onnxsim {onnxsim.__version__}"
        return model, "skipped: onnxsim could not validate the simplified model"
    try:
        import onnxslim
    except ImportError:
        return model, "skipped: neither onnxsim nor onnxslim is installed"
    return onnxslim.slim(model), f"onnxslim {onnxslim.__version__}"


def export_onnx(
    model: nn.Module,
    out_path: str | os.PathLike[str],
    input_size: tuple[int, int],
    opset: int = DEFAULT_OPSET,
    batch_size: int = 1,
    simplify: bool = True,
    rewrite: bool = True,
) -> Path:
    """Write ``model.forward_export`` as an ONNX file with static shapes.

    Args:
        model: a detector meeting ``edgedet.models.contract.DetectionModel``.
        out_path: the ``.onnx`` file to write; replaced atomically (a failed export leaves any
            previous file untouched).
        input_size: ``(width, height)`` of the network input in pixels.
        opset: ONNX opset (default 17).
        batch_size: the fixed batch dimension of ``images``.
        simplify: run onnxsim / onnxslim when installed.
        rewrite: apply ``rewrite_for_export`` first (skipped for a model it already returned).

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        ExportError: the model does not meet the contract, tracing failed, or the graph's
            outputs do not match ``export_output_names``.
    """
    out_path = Path(out_path)
    try:
        detector = as_detection_model(model, purpose=f"cannot export {type(model).__name__}")
    except TypeError as error:
        raise ExportError(str(error)) from None
    output_names = detector.export_output_names
    width, height = (int(v) for v in input_size)
    # ``export_rewrites`` is not part of the model contract: ``rewrite_for_export`` sets it on
    # the copy it returns, so its presence means "already rewritten".
    if rewrite and not hasattr(model, "export_rewrites"):
        detector = as_detection_model(rewrite_for_export(model))
    wrapper = _ExportForward(detector).eval()
    images = torch.zeros(batch_size, 3, height, width)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        traced_path = Path(tmp) / "traced.onnx"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # The legacy exporter's deprecation notice and the tracer's "converting a
                # tensor to a Python int" warnings are expected: shapes are static on purpose.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper, (images,), str(traced_path), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=list(output_names),
                    do_constant_folding=True,
                )
        except Exception as error:
            raise ExportError(f"exporting {type(model).__name__} to {out_path} failed: "
                              f"{error}") from error
        onnx_model = onnx.load(str(traced_path))
    onnx.checker.check_model(onnx_model)
    note = "skipped: simplify=False"
    if simplify:
        onnx_model, note = _simplify(onnx_model)
        onnx.checker.check_model(onnx_model)
    LOGGER.info("%s: simplification %s", out_path, note)
    graph_outputs = tuple(output.name for output in onnx_model.graph.output)
    if graph_outputs != output_names:
        raise ExportError(f"{out_path}: graph outputs {graph_outputs} differ from "
                          f"export_output_names {output_names}")
    onnx.helper.set_model_props(onnx_model, {
        "edgedet.architecture": detector.config["architecture"],
        "edgedet.simplifier": note,
    })
    write_bytes_atomic(out_path, onnx_model.SerializeToString())
    return out_path
