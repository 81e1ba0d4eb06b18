"""INT8 post-training quantization of a float ``.tflite`` detector with ai-edge-quantizer.

The recipe is ai-edge-quantizer's static INT8 one (``static_wi8_ai8``: weights symmetric per
output channel, activations per tensor), its activation ranges merged over the calibration
images as ``CALIBRATION_METHODS`` says, with the float scope of every
other target carried over: the same structural rules (``quantize.int8_scope``) run on the
TFLite graph, its ops translated to ONNX op types (``CONV_2D`` -> ``Conv``, ``GATHER_ND`` ->
``Gather``, ``LOGISTIC`` -> ``Sigmoid``, ...), and each op they keep in float gets a
``NO_QUANTIZE`` entry that names it exactly (its scope, i.e. its output tensor names, as
ai-edge-quantizer matches them). ai-edge-quantizer inserts the quantize / dequantize ops at
the float boundaries; the image input and the outputs of an INT8 file are int8 tensors with a
scale and zero point, which ``edgedet.backends.tflite`` handles; when the ops producing the
outputs stay in float (the ``outputs`` or ``head`` category), so do the outputs.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgedet._io import write_bytes_atomic
from edgedet.artifact import INPUT_NAME
from edgedet.backends import xnnpack_int8
from quantize.export_tflite import captured_output
from quantize.int8_scope import ScopeNode, find_kept_out

# TFLite builtin op -> the ONNX op type the scope rules know; others keep their own name.
ONNX_OP_TYPE = {
    "CONV_2D": "Conv", "DEPTHWISE_CONV_2D": "Conv", "TRANSPOSE_CONV": "ConvTranspose",
    "FULLY_CONNECTED": "Gemm", "BATCH_MATMUL": "MatMul", "GATHER": "Gather",
    "GATHER_ND": "Gather", "LOGISTIC": "Sigmoid", "SOFTMAX": "Softmax", "MUL": "Mul",
    "RESHAPE": "Reshape", "TRANSPOSE": "Transpose", "EXPAND_DIMS": "Unsqueeze",
    "SQUEEZE": "Squeeze", "BROADCAST_TO": "Expand",
    # a group norm, written out (quantize.scope_norms finds it from its RSQRT or SQRT), and
    # the joins and splits of the pyramid levels around it
    "MEAN": "ReduceMean", "SUM": "ReduceSum", "SUB": "Sub", "ADD": "Add", "DIV": "Div",
    "POW": "Pow", "SQUARED_DIFFERENCE": "SquaredDifference", "RSQRT": "Rsqrt", "SQRT": "Sqrt",
    "CONCATENATION": "Concat", "SLICE": "Slice", "STRIDED_SLICE": "Slice", "SPLIT": "Split",
    "SPLIT_V": "Split",
}
SIGNATURE = "serving_default"
# How one activation range comes from the calibration images' ranges (the default first).
# ai-edge-quantizer's own calibration keeps an exponential moving average (weight 0.95 on
# the past) of each image's min and max, i.e. mostly the last ~20 images, and clips the
# rest; the min and max over every image is what the other targets use. Neither wins on
# every model (plain PTQ, outputs in float): the DSANet edge model loses 0.61 AP with the
# moving average and 0.17 with min/max, the pruned HAR-Net 1.53 with min/max. The moving
# average stays the default; accuracy control tries min/max when it misses.
CALIBRATION_METHODS = ("moving-average", "minmax")
# TFLite ops whose second input is a weight tensor.
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
# Ops kept in float because XNNPACK computes them wrong in INT8
# (``edgedet.backends.xnnpack_int8``): the report's and manifest's name for them.
LONG_REDUCTIONS = "long reductions"


class TFLiteGraph:
    """The ops of a ``.tflite`` file's main graph as ``ScopeNode`` s (named ``"i:OPCODE"``),
    with each op's quantizer scope."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_quantizer.utils import tfl_flatbuffer_utils as flatbuffer

        model = flatbuffer.read_model(str(path))
        graph = model.subgraphs[0]
        code_names = {v: k for k, v in vars(schema.BuiltinOperator).items()
                      if not k.startswith("_")}

        def tensor_name(index: int) -> str:
            name = graph.tensors[index].name
            return name.decode() if isinstance(name, bytes) else str(name)

        def is_constant(index: int) -> bool:
            buffer = model.buffers[graph.tensors[index].buffer]
            return (buffer.data is not None and len(buffer.data) > 0) or \
                bool(getattr(buffer, "offset", 0) > 1)

        def reduction_inputs(op: Any) -> tuple[list[int] | None, np.ndarray | None]:
            """A reduction's input dims (its shape signature's, -1 where dynamic) and its
            constant axes (None where either is missing)."""
            if len(op.inputs) < 2 or min(op.inputs[:2]) < 0:
                return None, None
            data, axes = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
            dims = next((d for d in (getattr(data, "shapeSignature", None), data.shape)
                         if d is not None and len(d) > 0), None)
            values = (flatbuffer.get_tensor_data(axes, model.buffers)
                      if is_constant(op.inputs[1]) else None)
            return (None if dims is None else [int(d) for d in dims],
                    None if values is None else np.asarray(values))

        self.nodes: list[ScopeNode] = []
        self.scopes: dict[str, str] = {}
        self.opcodes: dict[str, str] = {}
        self.weights: dict[str, np.ndarray] = {}
        # Elements each output value of a reduction op sums over (MEAN, SUM; None:
        # unknown, treated as long).
        self.reduction_sizes: dict[str, int | None] = {}
        for i, op in enumerate(graph.operators):
            code = model.operatorCodes[op.opcodeIndex]
            opcode = code_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            name = f"{i}:{opcode}"
            inputs = tuple(f"t{t}" for t in op.inputs if t >= 0)
            outputs = tuple(f"t{t}" for t in op.outputs if t >= 0)
            self.nodes.append(ScopeNode(name, ONNX_OP_TYPE.get(opcode, opcode), inputs, outputs))
            self.scopes[name] = flatbuffer.get_op_scope(op, graph.tensors)
            self.opcodes[name] = opcode
            if opcode in xnnpack_int8.REDUCTION_OPS:
                self.reduction_sizes[name] = xnnpack_int8.reduction_size(
                    *reduction_inputs(op))
            if opcode in WEIGHT_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
                data = flatbuffer.get_tensor_data(graph.tensors[op.inputs[1]], model.buffers)
                if data is not None:
                    self.weights[name] = np.asarray(data)
        self.constants = {f"t{i}" for i in range(len(graph.tensors)) if is_constant(i)}
        self.outputs = {f"t{i}" for i in graph.outputs}
        self.tensor_names = {f"t{i}": tensor_name(i) for i in range(len(graph.tensors))}

    def kept_out(self, keep_float: Sequence[str]) -> dict[str, list[str]]:
        """``{category: op names}`` of the ops the scope rules keep in float."""
        return find_kept_out(self.nodes, self.constants, self.outputs, keep_float)


def _signature(weight: np.ndarray) -> tuple[int, float, float]:
    """What identifies a weight tensor whatever its layout (OIHW, OHWI, 1HWC, transposed):
    its size, sum of squares and sum of absolute values."""
    values = np.asarray(weight, dtype=np.float64)
    return values.size, float(np.square(values).sum()), float(np.abs(values).sum())


def _same(a: tuple[int, float, float], b: tuple[int, float, float]) -> bool:
    return a[0] == b[0] and all(abs(x - y) <= 1e-4 * max(abs(x), abs(y), 1e-12)
                                for x, y in zip(a[1:], b[1:], strict=True))


def tflite_ops_for(graph: TFLiteGraph, onnx_path: Path, layers: Sequence[str]) -> dict[str, str]:
    """The TFLite op of each ONNX weight layer in ``layers``, matched by weights.

    Both files come from the same PyTorch model (BatchNorm folded into the conv by both
    converters), so a layer's weights hold the same numbers in another layout; layers that
    share one weight tensor (a head applied to every pyramid level) match in graph order.

    Raises:
        ValueError: a layer with no matching TFLite op.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    initializers = {t.name: t for t in model.graph.initializer}
    wanted = set(layers)
    onnx_order = []
    for node in model.graph.node:
        constant = next((t for t in node.input[:2] if t in initializers), None)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and constant:
            onnx_order.append((node.name, _signature(numpy_helper.to_array(
                initializers[constant]))))
    candidates = [(name, _signature(weight)) for name, weight in graph.weights.items()]
    used: set[str] = set()
    found: dict[str, str] = {}
    for name, signature in onnx_order:
        match = next((op for op, other in candidates
                      if op not in used and _same(signature, other)), None)
        if match is not None:
            used.add(match)
            if name in wanted:
                found[name] = match
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"no TFLite op with the weights of ONNX layer(s) {missing}")
    return found


def scope_regex(scopes: Sequence[str]) -> str:
    """One regex matching exactly these op scopes and nothing else."""
    return "^(?:" + "|".join(re.escape(s) for s in sorted(set(scopes))) + ")$"


# The range given to a tensor calibration saw zero everywhere, e.g. a ReLU dead on every
# image (`harnet_pruned_distilled`'s spatial attention had one): ai-edge-quantizer gives such a
# tensor a scale of 1e-9 / 255, and XNNPACK refuses the whole file ("failed to create XNNPACK
# runtime"), since the conv reading it then requantizes by input scale x weight scale /
# output scale ~ 1e-13, outside the [2^-32, 256) its kernels take. Any normal scale holds
# zero exactly; [0, 1] (scale 1/255) keeps both convs' ratios in range. Only values within
# ZERO_BELOW of zero count: a tensor with a real range, however small, keeps it.
ZERO_BELOW = 1e-6
ZERO_TENSOR_RANGE = (0.0, 1.0)


def widen_zero_ranges(ranges: dict[str, dict[str, Any]]) -> list[str]:
    """Give each tensor (or channel) whose range lies within ``ZERO_BELOW`` of zero the range
    ``ZERO_TENSOR_RANGE``, in place; returns the names of the tensors widened."""
    widened = []
    for name, qsv in ranges.items():
        if not qsv or "min" not in qsv or "max" not in qsv:
            continue
        low, high = np.asarray(qsv["min"]), np.asarray(qsv["max"])
        zero = np.maximum(np.abs(low), np.abs(high)) < ZERO_BELOW
        if np.any(zero):
            qsv["min"] = np.where(zero, np.minimum(low, ZERO_TENSOR_RANGE[0]), low)
            qsv["max"] = np.where(zero, np.maximum(high, ZERO_TENSOR_RANGE[1]), high)
            widened.append(name)
    return widened


def calibrate(engine: Any, samples: Sequence[dict[str, np.ndarray]], method: str
              ) -> dict[str, dict[str, Any]]:
    """Activation ranges ``{tensor name: {"min", "max", ...}}`` of ``engine`` (an
    ai-edge-quantizer ``Quantizer``) over ``samples``, merged by ``method``; an all-zero
    tensor's range widened (``widen_zero_ranges``)."""
    threads = min(2, os.cpu_count() or 1)
    if method == "moving-average":
        ranges = engine.calibrate({SIGNATURE: list(samples)}, num_threads=threads)
        widen_zero_ranges(ranges)
        return ranges
    if method != "minmax":
        raise ValueError(f"unknown calibration method {method!r}; choose from "
                         f"{', '.join(CALIBRATION_METHODS)}")
    merged: dict[str, dict[str, Any]] = {}
    for sample in samples:  # one image per call: its own min and max, then the extremes
        for name, qsv in engine.calibrate({SIGNATURE: [sample]}, num_threads=threads).items():
            seen = merged.get(name)
            if not seen or not qsv:
                merged[name] = seen or qsv
                continue
            merged[name] = {**seen, "min": np.minimum(seen["min"], qsv["min"]),
                            "max": np.maximum(seen["max"], qsv["max"])}
    widen_zero_ranges(merged)
    return merged


def quantize_tflite(fp32_path: Path, out_path: Path, calibration: Sequence[np.ndarray],
                    keep_float: Sequence[str], float_layers: Sequence[str] = (),
                    onnx_path: Path | None = None, calibration_method: str | None = None
                    ) -> tuple[Path, dict[str, list[str]]]:
    """Write the INT8 version of ``fp32_path`` to ``out_path`` (atomically).

    Args:
        fp32_path: a float ``.tflite`` from ``quantize.export_tflite``.
        out_path: where the INT8 file goes.
        calibration: preprocessed images, each ``(1, 3, H, W)`` float32.
        keep_float: ``quantize.int8_scope.CATEGORIES`` to keep in float.
        float_layers: ONNX weight layers accuracy control returned to float (found in this
            file by their weights, ``tflite_ops_for``; needs ``onnx_path``).
        onnx_path: the fp32 ONNX export of the same model.
        calibration_method: one of ``CALIBRATION_METHODS`` (None: the first).

    Returns:
        ``(out_path, {category: names of the TFLite ops kept float, "i:OPCODE"})``: the
        ``keep_float`` categories, ``LONG_REDUCTIONS`` and ``"accuracy control"``.
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    if not calibration:
        raise ValueError("INT8 needs at least one calibration image")
    graph = TFLiteGraph(fp32_path)
    kept = {category: names for category, names in graph.kept_out(keep_float).items()
            if names}
    claimed = {n for names in kept.values() for n in names}
    long_reductions = [name for name, size in graph.reduction_sizes.items()
                       if xnnpack_int8.is_long(size) and name not in claimed]
    if long_reductions:
        kept[LONG_REDUCTIONS] = long_reductions
    if float_layers:
        if onnx_path is None:
            raise ValueError("float_layers needs the ONNX export to find them in the file")
        claimed = {n for names in kept.values() for n in names}
        ops = tflite_ops_for(graph, onnx_path, float_layers)
        kept["accuracy control"] = [op for op in ops.values() if op not in claimed]
    engine = quantizer.Quantizer(str(fp32_path))
    engine.load_quantization_recipe(recipe.static_wi8_ai8())
    for names in kept.values():
        engine.update_quantization_recipe(
            scope_regex([graph.scopes[n] for n in names]),
            qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    float_nodes = {n for names in kept.values() for n in names}
    if any(set(node.outputs) & graph.outputs for node in graph.nodes if node.name in float_nodes):
        # Else the quantizer appends an INT8 Quantize to a float output, with one scale.
        engine.update_quantization_recipe(
            ".*", qtyping.TFLOperationName.OUTPUT,
            algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    samples = [{INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)}
               for image in calibration]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp, \
            captured_output("ai-edge-quantizer"):
        ranges = calibrate(engine, samples, calibration_method or CALIBRATION_METHODS[0])
        result = engine.quantize(ranges)
        scratch = Path(tmp) / "model.tflite"
        result.export_model(str(scratch))
        write_bytes_atomic(out_path, scratch.read_bytes())
    return out_path, kept
