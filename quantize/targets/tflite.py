"""Target ``tflite``: LiteRT / TFLite flatbuffers converted from the rewritten PyTorch model
without TensorFlow — fp32 by litert-torch (``quantize.export_tflite``), INT8 by
ai-edge-quantizer's static recipe on that file (``quantize.ptq_tflite``).

Needs ``pip install "edgedet[tflite-export]"`` to convert; the artifacts run with only
``edgedet[tflite]`` (LiteRT, no torch).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from quantize.export_tflite import export_tflite
from quantize.int8_scope import DEFAULT_KEEP_FLOAT
from quantize.ptq_tflite import CALIBRATION_METHODS, quantize_tflite
from quantize.targets import BuildRequest, BuiltModel, Target

MODEL_FILE = "model.tflite"
LAYOUT_NOTE = ("input NCHW (1, 3, H, W) float32, as every target; litert-torch runs the graph "
               "in NHWC inside")


def _fp32_file(request: BuildRequest) -> Path:
    """The fp32 conversion, made once per run and shared by both precisions."""
    path = request.work_dir / "tflite_fp32" / MODEL_FILE
    if not path.is_file():
        export_tflite(request.model, path, request.input_size)
    return path


def build(request: BuildRequest) -> BuiltModel:
    fp32 = _fp32_file(request)
    if request.precision == "fp32":
        return BuiltModel({MODEL_FILE: fp32}, [], notes=(LAYOUT_NOTE,))
    assert request.calibration is not None, "INT8 needs calibration images"
    method = request.calibration_method or CALIBRATION_METHODS[0]
    path, kept = quantize_tflite(fp32, request.work_dir / "tflite_int8" / MODEL_FILE,
                                 request.calibration, request.keep_float_categories,
                                 request.float_layers, request.onnx_fp32, method)
    kept_names = [name for names in kept.values() for name in names]
    # Kept op names are "i:OPCODE" (quantize.ptq_tflite.TFLiteGraph).
    summary = "; ".join(
        f"{category}: {len(names)} ops ("
        + ", ".join(f"{n} {op}"
                    for op, n in Counter(x.split(":", 1)[1] for x in names).most_common())
        + ")" for category, names in kept.items())
    notes = (LAYOUT_NOTE,
             "weights INT8 symmetric per output channel, activations INT8 per tensor "
             f"(ai-edge-quantizer static_wi8_ai8, ranges: {method} of the calibration "
             "images); the image input is an int8 tensor the backend quantizes, the outputs "
             "are float when the layout ops before them are (the outputs category)",
             f"kept in float: {summary or 'nothing'}")
    return BuiltModel({MODEL_FILE: path}, kept_names, notes=notes)


TARGET = Target(
    name="tflite",
    backend="tflite",
    summary="LiteRT / TFLite flatbuffers (fp32 by litert-torch, INT8 by ai-edge-quantizer)",
    precisions=("fp32", "int8"),
    # TFLite's INT8 Concat (and Reshape) share one scale between inputs and output, so the
    # tensor that joins every pyramid level's logits would quantize P3's scores with the
    # step of P7's extremes: on the trained DSANet edge model that alone cost 1.5 AP.
    # HAR-Net's cross-level group norm, written out as ops in TFLite (mean, variance, rsqrt,
    # scale), in INT8 rounds each step's result per tensor: on the pruned HAR-Net's 2x model
    # (double-scale testing) its outputs moved 0.2-0.6 of their RMS, the scores 0.03 on
    # average (0.003 with the norms in float), and double-scale AP fell 3.4 points.
    default_keep_float=(*DEFAULT_KEEP_FLOAT, "norms", "outputs"),
    build=build,
    calibration_methods=CALIBRATION_METHODS,
)
