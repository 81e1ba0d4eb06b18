"""Target ``jetson``: ONNX for TensorRT — fp16 (the plain export, which TensorRT builds with
FP16 kernels) and INT8 as explicit-quantization QDQ ONNX that follows TensorRT's rules.

Explicit quantization means the device never calibrates: the scales are in the graph
(calibrated here, on the CPU, with ONNX Runtime's quantizer in the ``TENSORRT`` scheme of
``quantize.ptq_onnx``), and TensorRT only builds an engine from it. Every model is checked
against the rules (``quantize.tensorrt_rules``) before it can become an artifact; a model
that breaks one stops the run with the list of violations.

The accuracy check runs the artifacts here with ONNX Runtime on the CPU: it executes the QDQ
arithmetic (INT8-rounded activations and weights, float accumulation), which is what
TensorRT's INT8 kernels compute up to the order of float operations; the ops kept out of INT8
run in fp32 there and in FP16 on TensorRT, which the check does not measure (no GPU here).
"""

from __future__ import annotations

import onnx

from edgedet.artifact import MODEL_STEM
from quantize.int8_scope import DEFAULT_KEEP_FLOAT, find_kept_out_nodes, flatten
from quantize.targets import BuildRequest, BuiltModel, Target
from quantize.tensorrt_rules import (
    MAX_OPSET,
    TENSORRT_VERSIONS,
    QdqRulesError,
    check_qdq_graph,
    int8_coverage,
)

MODEL_FILE = f"{MODEL_STEM}.onnx"
# The float scope TensorRT's rules require (sampling math, attention softmax, masks); the
# user's --keep-float may add categories, never remove these.
REQUIRED_FLOAT: tuple[str, ...] = DEFAULT_KEEP_FLOAT
BUILDER_FLAGS = {"fp16": ["fp16"], "int8": ["fp16", "int8"]}

CHECK_NOTES = {
    "fp16": "checked in fp32 with ONNX Runtime on the CPU; TensorRT builds this model with "
            "FP16 kernels, whose rounding (about 3 significant digits) this check does not "
            "measure",
    "int8": "checked with ONNX Runtime on the CPU, which executes the QDQ arithmetic "
            "(INT8-rounded activations and weights, float accumulation) and the ops kept out "
            "of INT8 in fp32; TensorRT runs those ops with FP16 kernels, whose rounding (about "
            "3 significant digits) and range (up to 65 504: a normalisation's squared "
            "deviations can exceed it unless TensorRT accumulates them in fp32) this check "
            "does not measure",
}


def build(request: BuildRequest) -> BuiltModel:
    fp32 = onnx.load(str(request.onnx_fp32))
    if request.precision == "fp16":
        _require_rules(check_qdq_graph(fp32), "the fp16 ONNX model")
        return BuiltModel({MODEL_FILE: request.onnx_fp32}, [],
                          manifest_extra={"tensorrt": engine_section("fp16", fp32)},
                          notes=(CHECK_NOTES["fp16"],))
    from quantize.ptq_onnx import TENSORRT, quantize_onnx, with_calibration

    assert request.calibration is not None, "INT8 needs calibration images"
    required = flatten(find_kept_out_nodes(fp32, REQUIRED_FLOAT))
    keep_float = [*request.keep_float, *sorted(set(required) - set(request.keep_float))]
    path = quantize_onnx(request.onnx_fp32, request.work_dir / "model_trt_int8.onnx",
                         request.calibration, keep_float,
                         scheme=with_calibration(TENSORRT, request.calibration_method))
    quantized = onnx.load(str(path))
    _require_rules(check_qdq_graph(quantized, float_scope=keep_float), "the INT8 QDQ model")
    section = engine_section("int8", quantized)
    return BuiltModel({MODEL_FILE: path}, keep_float, manifest_extra={"tensorrt": section},
                      notes=(CHECK_NOTES["int8"],
                             f"{section['int8_layers']} of {section['weighted_layers']} "
                             "weighted layers run INT8 on TensorRT; the rest, the float scope "
                             "and every graph output stay FP16/FP32"))


def _require_rules(violations: list, what: str) -> None:
    if violations:
        raise QdqRulesError(f"jetson target: {what}", violations)


def engine_section(precision: str, model: onnx.ModelProto) -> dict:
    """The manifest's ``tensorrt`` section: how to build the engine and what was checked."""
    flags = BUILDER_FLAGS[precision]
    int8_layers, weighted_layers = int8_coverage(model)
    precision_flags = " ".join(f"--{flag}" for flag in flags)
    return {
        "builder_flags": flags,
        "trtexec": f"trtexec --onnx={MODEL_FILE} {precision_flags} --saveEngine=model.engine",
        # TensorRT 10 also builds QDQ models strongly typed (types from the graph: float
        # parts then run in FP32, slower but closer to this check).
        "trtexec_strongly_typed": (f"trtexec --onnx={MODEL_FILE} --stronglyTyped "
                                   "--saveEngine=model.engine") if precision == "int8" else None,
        "checked_against": list(TENSORRT_VERSIONS),
        "max_opset": min(MAX_OPSET.values()),
        "qdq_rule_violations": 0,
        "weighted_layers": weighted_layers,
        "int8_layers": int8_layers,
        "calibration": "none on the device: explicit quantization (scales are in the graph)"
                       if precision == "int8" else None,
    }


TARGET = Target(
    name="jetson",
    backend="tensorrt",
    summary="ONNX for TensorRT on NVIDIA Jetson (fp16, INT8 explicit QDQ: no calibration on "
            "the device)",
    precisions=("fp16", "int8"),
    # Only the inputs of weighted layers are quantized and their outputs stay float, so the
    # head's raw logits and box deltas are never rounded to INT8 (no need to keep the head).
    default_keep_float=REQUIRED_FLOAT,
    required_keep_float=REQUIRED_FLOAT,
    build=build,
    # TensorRT cannot run without an NVIDIA GPU: the check runs the same ONNX on ONNX Runtime.
    check_backend="onnxruntime",
    # quantize.ptq_onnx.TENSORRT's default first (percentile: measured best on the zoo model).
    # No "entropy": see the cpu target.
    calibration_methods=("percentile", "minmax"),
)
