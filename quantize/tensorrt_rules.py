"""TensorRT's explicit-quantization rules, checked on a QDQ ONNX graph before it ships.

A QDQ model that breaks these rules either fails to build on the device or builds an engine
that silently runs layers in float (or quantizes what must stay float). ``check_qdq_graph``
lists every violation so that ``quantize/run.py --target jetson`` can refuse the artifact.

What is checked, and where it comes from:

* NVIDIA TensorRT Developer Guide, "Working with Quantized Types" / "Explicit Quantization"
  (TensorRT 8.6 and 10.x): INT8 quantization is symmetric and signed — Q/DQ zero-points must
  be 0 and of type int8 (ONNX's default zero-point type is uint8, which TensorRT rejects);
  activations are quantized per tensor; weights per channel along the output-channel axis
  (``K``: axis 0 of a Conv / Gemm(transB=1) weight, axis 1 of a ConvTranspose weight and of a
  MatMul or Gemm(transB=0) right-hand matrix); scales are positive.
* The same guide's "Q/DQ layer-placement recommendations": quantize the inputs of the weighted
  layers (convolution, deconvolution, GEMM / MatMul) — both the activation and the weights, or
  the layer cannot run an INT8 kernel — and the residual input of an element-wise Add so that
  TensorRT fuses it into the convolution before it; do not quantize the outputs of weighted
  layers. A DequantizeLinear that feeds an op TensorRT cannot fuse it into or propagate it
  through becomes a stand-alone dequantize kernel (and that op runs in float anyway).
* onnx-tensorrt ``docs/operators.md`` at release/8.6-GA and 10.1-GA: the ONNX operators the
  parser supports (8.6: opsets up to 17; 10.x: opsets 9-20); ``DequantizeLinear`` only reads
  INT8 (so an INT32 bias DQ, as ONNX Runtime's quantizer writes by default, does not parse).
* edgedet's float scope (``quantize.int8_scope``): the sampling math, attention softmax and
  masks stay float with no Q/DQ on what they read or write, and nothing that reaches a graph
  output (the raw logits and box deltas) passes through a Q/DQ after its last weighted layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

# The ONNX operators onnx-tensorrt parses (operators.md, "Supported: Y").
_PARSED_BY_BOTH = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
Floor GRU Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish
Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization
LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool
Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or
PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Trilu Unsqueeze Upsample Where Xor
"""
_COMMON_OPS = frozenset(_PARSED_BY_BOTH.split())
SUPPORTED_OPS: dict[str, frozenset[str]] = {
    "8.6": _COMMON_OPS,
    "10.1": _COMMON_OPS | {"CastLike", "DeformConv", "Gelu", "Hardmax", "Mish"},
}
MAX_OPSET: dict[str, int] = {"8.6": 17, "10.1": 20}
TENSORRT_VERSIONS: tuple[str, ...] = tuple(SUPPORTED_OPS)

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Where a DequantizeLinear may lead: the weighted layers and the residual Add (fused into an
# INT8 kernel), and the data-movement / pooling ops TensorRT moves a DQ across.
_DQ_CONSUMERS = frozenset({
    *WEIGHTED_OPS, "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split",
    "Pad", "Identity", "QuantizeLinear",
})
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

RULES: dict[str, str] = {
    "unsupported-op": "an operator (or opset) the TensorRT ONNX parser does not support",
    "not-int8": "a Q/DQ that is not signed INT8 (uint8, int32, or no zero-point: uint8)",
    "zero-point": "a non-zero zero-point (TensorRT quantization is symmetric)",
    "scale": "a scale that is not positive and finite",
    "per-channel-activation": "an activation quantized per channel (TensorRT: per tensor)",
    "per-tensor-weight": "weights quantized per tensor (per output channel expected)",
    "weight-axis": "weights quantized per channel on an axis other than the output channels",
    "half-quantized": "a weighted layer with only one of activation / weights quantized",
    "unfused-dq": "a DequantizeLinear feeding an op TensorRT cannot fuse or move it through",
    "float-scope": "a float-scope node (sampling, attention, masks) reading a DequantizeLinear",
    "output-quantized": "a Q/DQ between the last weighted layer and a graph output",
}


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``rule`` (a ``RULES`` key), the node, and what is wrong."""

    rule: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.node}: {self.detail}"


class QdqRulesError(ValueError):
    """A QDQ model that breaks TensorRT's rules; ``violations`` lists them all."""

    def __init__(self, source: str, violations: list[Violation]) -> None:
        self.violations = violations
        shown = "\n  ".join(str(v) for v in violations[:40])
        more = f"\n  ... and {len(violations) - 40} more" if len(violations) > 40 else ""
        super().__init__(f"{source} breaks {len(violations)} TensorRT explicit-quantization "
                         f"rule(s); it would fail or misbehave on the device:\n  {shown}{more}")


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {t.name: t for t in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute:
                self.initializers.setdefault(node.output[0], node.attribute[0].t)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.initializers.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def is_constant(self, name: str) -> bool:
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        # A DequantizeLinear of a constant (stored INT8 weights) is a constant too.
        return node is not None and node.op_type == "DequantizeLinear" and \
            node.input[0] in self.initializers

    def is_weighted(self, node: onnx.NodeProto) -> bool:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            return True
        return node.op_type == "MatMul" and any(self.is_constant(t) for t in node.input)


def _weight_axis(node: onnx.NodeProto, input_index: int) -> int | None:
    """The output-channel axis of the weight read at ``input_index`` (None: not a weight)."""
    if node.op_type == "Conv" and input_index == 1:
        return 0
    if node.op_type == "ConvTranspose" and input_index == 1:
        return 1
    if node.op_type == "Gemm" and input_index == 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":  # (..., M, K) @ (..., K, N): rows of a constant A, columns of B
        return -2 if input_index == 0 else -1
    return None


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _check_qdq_node(graph: _Graph, node: onnx.NodeProto) -> list[Violation]:
    found = []
    scale = graph.array(node.input[1])
    if scale is None:
        return [Violation("scale", node.name, "the scale is not a constant")]
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        found.append(Violation("scale", node.name, f"scale values {scale.ravel()[:4]} "
                               "are not all positive and finite"))
    zero_point = graph.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "DequantizeLinear" and node.input[0] in graph.initializers:
        stored = graph.array(node.input[0])
        dtype = stored.dtype if stored is not None else None
    else:
        dtype = zero_point.dtype if zero_point is not None else np.dtype(np.uint8)
    if dtype != np.int8:
        what = "no zero-point (ONNX then means uint8)" if zero_point is None and \
            node.op_type == "QuantizeLinear" else f"type {dtype}"
        found.append(Violation("not-int8", node.name, f"{what}; TensorRT reads signed int8 only"))
    if zero_point is not None and np.any(zero_point != 0):
        found.append(Violation("zero-point", node.name,
                               f"zero-point {zero_point.ravel()[:4]} is not 0"))
    return found


def _check_weighted(graph: _Graph, node: onnx.NodeProto) -> list[Violation]:
    """Both inputs quantized, the weights per output channel on the right axis."""
    # MatMul may hold its constant on either side; the other operands hold the weights at 1.
    weight_index = 0 if node.op_type == "MatMul" and graph.is_constant(node.input[0]) else 1
    activation = graph.producer.get(node.input[1 - weight_index])
    weight_dq = graph.producer.get(node.input[weight_index])
    activation_q = activation is not None and activation.op_type == "DequantizeLinear"
    weight_q = weight_dq is not None and weight_dq.op_type == "DequantizeLinear"
    if activation_q != weight_q:
        quantized = "activation" if activation_q else "weights"
        return [Violation("half-quantized", node.name,
                          f"only its {quantized} are quantized; TensorRT needs both for an "
                          "INT8 kernel")]
    if not weight_q:
        return []
    assert weight_dq is not None
    scale = graph.array(weight_dq.input[1])
    stored = graph.array(weight_dq.input[0])
    if scale is None or stored is None:
        return []
    axis = _weight_axis(node, weight_index)
    channels = stored.shape[axis] if axis is not None and stored.ndim else 0
    if scale.size == 1 and channels != 1:
        return [Violation("per-tensor-weight", node.name,
                          f"one scale for all {channels} output channels")]
    dq_axis = _int_attr(weight_dq, "axis", 1)
    rank = stored.ndim
    if scale.size == 1:
        return []  # a single output channel: per channel and per tensor are the same
    if axis is None or dq_axis % rank != axis % rank or scale.size != channels:
        return [Violation("weight-axis", node.name,
                          f"scales on axis {dq_axis} of weights {list(stored.shape)}; "
                          f"output channels are axis {axis % rank if axis is not None else '?'}"
                          )]
    return []


def _reaches_output(graph: _Graph, tensor: str) -> bool:
    """Whether ``tensor`` flows into a graph output without passing a weighted layer."""
    stack, seen = [tensor], set()
    while stack:
        name = stack.pop()
        if name in graph.outputs:
            return True
        if name in seen:
            continue
        seen.add(name)
        for consumer in graph.consumers.get(name, []):
            if not graph.is_weighted(consumer):
                stack.extend(consumer.output)
    return False


def check_qdq_graph(model: onnx.ModelProto, float_scope: Iterable[str] = (),
                    versions: Iterable[str] = TENSORRT_VERSIONS) -> list[Violation]:
    """Every violation of TensorRT's explicit-quantization rules in ``model`` (see above).

    Args:
        model: a QDQ ONNX model (a float model passes with no Q/DQ to check).
        float_scope: names of the nodes that must stay float (``quantize.int8_scope``,
            computed on the float graph; a quantizer keeps node names).
        versions: TensorRT versions whose op support is checked (keys of ``SUPPORTED_OPS``).

    Returns:
        The violations, in graph order (empty: the model follows the rules).
    """
    graph = _Graph(model)
    scope = set(float_scope)
    found: list[Violation] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    for version in versions:
        if opset > MAX_OPSET[version]:
            found.append(Violation("unsupported-op", "(model)", f"opset {opset}; TensorRT "
                                   f"{version} parses opsets up to {MAX_OPSET[version]}"))
    for node in graph.nodes:
        missing = [v for v in versions if node.op_type not in SUPPORTED_OPS[v] or node.domain
                   not in ("", "ai.onnx")]
        if missing:
            found.append(Violation("unsupported-op", node.name, f"{node.domain or ''}"
                                   f"{node.op_type} is not parsed by TensorRT "
                                   f"{', '.join(missing)}"))
        if node.op_type in _QDQ_OPS:
            found += _check_qdq_node(graph, node)
            found += _check_placement(graph, node, scope)
        elif graph.is_weighted(node):
            found += _check_weighted(graph, node)
    return found


def _check_placement(graph: _Graph, node: onnx.NodeProto, scope: set[str]) -> list[Violation]:
    found = []
    if node.op_type == "DequantizeLinear" and node.input[0] in graph.initializers:
        return []  # stored INT8 weights: checked with their layer
    scale = graph.array(node.input[1])
    if scale is not None and scale.size != 1:
        found.append(Violation("per-channel-activation", node.name,
                               f"{scale.size} scales for an activation"))
    if node.op_type == "QuantizeLinear":
        # A Q on what the float scope computes is its boundary when an INT8 layer reads it;
        # what the float scope must not do is read a DQ (checked below).
        return found
    consumers = graph.consumers.get(node.output[0], [])
    for consumer in consumers:
        if consumer.name in scope:
            found.append(Violation("float-scope", node.name,
                                   f"feeds float-scope node {consumer.name}"))
        elif consumer.op_type not in _DQ_CONSUMERS:
            found.append(Violation("unfused-dq", node.name,
                                   f"feeds {consumer.op_type} {consumer.name}"))
    if node.output[0] in graph.outputs or _reaches_output(graph, node.output[0]):
        found.append(Violation("output-quantized", node.name,
                               "reaches a graph output without a weighted layer between"))
    return found


def int8_coverage(model: onnx.ModelProto) -> tuple[int, int]:
    """``(weighted layers whose activation input is dequantized, all weighted layers)``: how
    many of the layers TensorRT could run in INT8 will."""
    graph = _Graph(model)
    weighted = [n for n in graph.nodes if graph.is_weighted(n)]
    int8 = [n for n in weighted
            if any(graph.producer.get(t) is not None and not graph.is_constant(t)
                   and graph.producer[t].op_type == "DequantizeLinear" for t in n.input)]
    return len(int8), len(weighted)
