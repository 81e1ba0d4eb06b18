"""Target ``cpu``: ONNX for ONNX Runtime — the fp32 export as it is, INT8 as QDQ ONNX
(``quantize.ptq_onnx``)."""

from __future__ import annotations

from edgedet.artifact import MODEL_STEM
from quantize.int8_scope import DEFAULT_KEEP_FLOAT
from quantize.targets import BuildRequest, BuiltModel, Target


def build(request: BuildRequest) -> BuiltModel:
    name = f"{MODEL_STEM}.onnx"
    if request.precision == "fp32":
        return BuiltModel({name: request.onnx_fp32}, [])
    from quantize.ptq_onnx import quantize_onnx

    assert request.calibration is not None, "INT8 needs calibration images"
    path = quantize_onnx(request.onnx_fp32, request.work_dir / "model_int8.onnx",
                         request.calibration, request.keep_float)
    return BuiltModel({name: path}, list(request.keep_float))


TARGET = Target(
    name="cpu",
    backend="onnxruntime",
    summary="ONNX for ONNX Runtime (fp32, INT8 QDQ)",
    precisions=("fp32", "int8"),
    # ONNX Runtime's QDQ quantizer also rounds each quantized conv's OUTPUT to INT8 (so that
    # it runs as one integer kernel), which for the head means the raw logits and box deltas
    # themselves, per tensor. Measured on the zoo's passd_mobilenet (AP 29.9): ORT INT8 with
    # the head quantized ΔAP -1.09, with it in float -0.79.
    default_keep_float=(*DEFAULT_KEEP_FLOAT, "head"),
    build=build,
)
