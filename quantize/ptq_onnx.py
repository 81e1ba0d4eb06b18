"""INT8 post-training quantization for ONNX Runtime: a QDQ ONNX model.

Uses ``onnxruntime.quantization.quantize_static``: QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantized op, which ONNX Runtime fuses into integer kernels
and TensorRT reads as explicit INT8), weights int8 per output channel (symmetric),
activations uint8 per tensor (asymmetric, min/max calibrated). It was chosen over NNCF's ONNX
backend because it is ONNX Runtime's own quantizer: on the small PASSD test model both gave
the same latency, ORT's raw outputs were slightly closer to fp32 (cosine 0.996-0.998 vs
0.995-0.997) and calibration was faster. Nodes named in ``nodes_to_exclude`` (see
``quantize.int8_scope``) compute in float; they may read the dequantized INT8 output of a
quantized conv before them (ONNX Runtime quantizes a conv's output so that it runs as one
integer kernel), but what they compute is never rounded to INT8.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edgedet._io import write_bytes_atomic
from edgedet.artifact import INPUT_NAME


class _ImagesReader(CalibrationDataReader):
    """Feeds preprocessed calibration images, one ``(1, 3, H, W)`` batch at a time."""

    def __init__(self, images: Sequence[np.ndarray], input_name: str) -> None:
        self._images = list(images)
        self._input_name = input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._images):
            return None
        images = np.ascontiguousarray(self._images[self._next], dtype=np.float32)
        self._next += 1
        return {self._input_name: images}


def quantize_onnx(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: Sequence[np.ndarray],
    nodes_to_exclude: Sequence[str] = (),
) -> Path:
    """Write the INT8 QDQ version of the fp32 ONNX model ``fp32_path`` to ``out_path``.

    Args:
        fp32_path: the fp32 ONNX detector from ``quantize.export_onnx``.
        out_path: the QDQ ``.onnx`` to write (atomically).
        calibration_images: preprocessed inputs, each ``(1, 3, H, W)`` float32
            (``quantize.calibration.calibration_inputs``).
        nodes_to_exclude: ONNX node names to keep in float.

    Raises:
        ValueError: no calibration images, or a node name that is not in the graph.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not calibration_images:
        raise ValueError("INT8 calibration needs at least one image")
    model = onnx.load(str(fp32_path))
    node_names = {node.name for node in model.graph.node}
    missing = sorted(set(nodes_to_exclude) - node_names)
    if missing:
        raise ValueError(f"{fp32_path}: nodes to keep in float not in the graph: {missing[:5]}")
    input_name = model.graph.input[0].name if model.graph.input else INPUT_NAME
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        tmp_path = Path(tmp) / "model_int8.onnx"
        with _without_pre_processing_advice():
            quantize_static(
                str(fp32_path), str(tmp_path), _ImagesReader(calibration_images, input_name),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=list(nodes_to_exclude),
                # The calibration copy of the model goes to the temporary directory too.
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        quantized = onnx.load(str(tmp_path))
    onnx.checker.check_model(quantized)
    write_bytes_atomic(out_path, quantized.SerializeToString())
    return out_path


class _DropPreProcessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_pre_processing_advice() -> Iterator[None]:
    """Silence ``quantize_static``'s advice to run its pre-processing first.

    That pre-processing (shape inference plus ONNX Runtime's graph optimisations) is not run
    on purpose: our exports are already simplified by onnxsim, and its optimiser renames or
    removes nodes (e.g. the head's Transposes), which would break ``nodes_to_exclude``.
    """
    advice_filter = _DropPreProcessingAdvice()
    root = logging.getLogger()
    root.addFilter(advice_filter)
    try:
        yield
    finally:
        root.removeFilter(advice_filter)


def quantized_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of the float tensors that go through a ``QuantizeLinear`` (held in INT8).

    A kept-out node may still read a dequantized tensor (the INT8 output of the conv before
    it); what it must not do is produce one.
    """
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
