"""INT8 post-training quantization of a float ``.tflite`` detector with ai-edge-quantizer.

The recipe is ai-edge-quantizer's static INT8 one (``static_wi8_ai8``: weights symmetric per
output channel, activations per tensor, calibrated min/max), with the float scope of every
other target carried over: the same structural rules (``quantize.int8_scope``) run on the
TFLite graph, its ops translated to ONNX op types (``CONV_2D`` -> ``Conv``, ``GATHER_ND`` ->
``Gather``, ``LOGISTIC`` -> ``Sigmoid``, ...), and each op they keep in float gets a
``NO_QUANTIZE`` entry that names it exactly (its scope, i.e. its output tensor names, as
ai-edge-quantizer matches them). ai-edge-quantizer inserts the quantize / dequantize ops at
the float boundaries; the image input and the outputs of an INT8 file are int8 tensors with a
scale and zero point, which ``edgedet.backends.tflite`` handles.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgedet._io import write_bytes_atomic
from edgedet.artifact import INPUT_NAME
from quantize.export_tflite import captured_output
from quantize.int8_scope import ScopeNode, find_kept_out

# TFLite builtin op -> the ONNX op type the scope rules know; others keep their own name.
ONNX_OP_TYPE = {
    "CONV_2D": "Conv", "DEPTHWISE_CONV_2D": "Conv", "TRANSPOSE_CONV": "ConvTranspose",
    "FULLY_CONNECTED": "Gemm", "BATCH_MATMUL": "MatMul", "GATHER": "Gather",
    "GATHER_ND": "Gather", "LOGISTIC": "Sigmoid", "SOFTMAX": "Softmax", "MUL": "Mul",
    "RESHAPE": "Reshape", "TRANSPOSE": "Transpose", "EXPAND_DIMS": "Unsqueeze",
    "SQUEEZE": "Squeeze", "BROADCAST_TO": "Expand",
}
SIGNATURE = "serving_default"


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

        self.nodes: list[ScopeNode] = []
        self.scopes: dict[str, str] = {}
        self.opcodes: dict[str, str] = {}
        for i, op in enumerate(graph.operators):
            code = model.operatorCodes[op.opcodeIndex]
            opcode = code_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            name = f"{i}:{opcode}"
            inputs = tuple(f"t{t}" for t in op.inputs if t >= 0)
            outputs = tuple(f"t{t}" for t in op.outputs if t >= 0)
            self.nodes.append(ScopeNode(name, ONNX_OP_TYPE.get(opcode, opcode), inputs, outputs))
            self.scopes[name] = flatbuffer.get_op_scope(op, graph.tensors)
            self.opcodes[name] = opcode
        self.constants = {f"t{i}" for i in range(len(graph.tensors)) if is_constant(i)}
        self.outputs = {f"t{i}" for i in graph.outputs}
        self.tensor_names = {f"t{i}": tensor_name(i) for i in range(len(graph.tensors))}

    def kept_out(self, keep_float: Sequence[str]) -> dict[str, list[str]]:
        """``{category: op names}`` of the ops the scope rules keep in float."""
        return find_kept_out(self.nodes, self.constants, self.outputs, keep_float)


def scope_regex(scopes: Sequence[str]) -> str:
    """One regex matching exactly these op scopes and nothing else."""
    return "^(?:" + "|".join(re.escape(s) for s in sorted(set(scopes))) + ")$"


def quantize_tflite(fp32_path: Path, out_path: Path, calibration: Sequence[np.ndarray],
                    keep_float: Sequence[str]) -> tuple[Path, dict[str, list[str]]]:
    """Write the INT8 version of ``fp32_path`` to ``out_path`` (atomically).

    Args:
        fp32_path: a float ``.tflite`` from ``quantize.export_tflite``.
        out_path: where the INT8 file goes.
        calibration: preprocessed images, each ``(1, 3, H, W)`` float32.
        keep_float: ``quantize.int8_scope.CATEGORIES`` to keep in float.

    Returns:
        ``(out_path, {category: names of the TFLite ops kept float, "i:OPCODE"})``.
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    if not calibration:
        raise ValueError("INT8 needs at least one calibration image")
    graph = TFLiteGraph(fp32_path)
    kept = {category: names for category, names in graph.kept_out(keep_float).items()
            if names}
    engine = quantizer.Quantizer(str(fp32_path))
    engine.load_quantization_recipe(recipe.static_wi8_ai8())
    for names in kept.values():
        engine.update_quantization_recipe(
            scope_regex([graph.scopes[n] for n in names]),
            qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    samples = [{INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)}
               for image in calibration]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp, \
            captured_output("ai-edge-quantizer"):
        ranges = engine.calibrate({SIGNATURE: samples}, num_threads=min(2, os.cpu_count() or 1))
        result = engine.quantize(ranges)
        scratch = Path(tmp) / "model.tflite"
        result.export_model(str(scratch))
        write_bytes_atomic(out_path, scratch.read_bytes())
    return out_path, kept
