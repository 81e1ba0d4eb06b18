"""Which nodes of an exported detector stay in float when the rest goes to INT8.

Found on the ONNX graph by its structure, not by model-specific names, so the same rules cover
all four detectors (and any graph made of the ``quantize.rewrites`` building blocks):

``sampling``   the sampling-point math of the P&A and deformable-conv rewrites: everything
               that computes the ``Gather`` row indices and the bilinear weights (offsets,
               box decoding, floor, corner masks) or the ``GridSample`` grid, and what
               follows the tap sum up to the next weight layer or graph output; in a graph
               that leaves the tap sum to the SDK (``edgedet.attend_tail``), everything
               computing the ``propose_deltas`` the SDK computes the points from (the
               ``attend_points_*`` outputs of artifacts before that). An INT8
               step of a box coordinate (1/255 of its range) moves every sample; these
               nodes are cheap element-wise math, so float costs little.
``sampling_reads``  what the sampling reads and sums: the projected table on its way (layout
               ops only) from the projection to the ``Gather`` or ``GridSample``, the read
               itself, and the tap-sum ``MatMul`` of the ``gather`` form (samples x bilinear
               weights). In INT8 the table values are rounded per tensor and the tap sum
               takes its bilinear weights in steps of 1/255, while the coordinates stay in
               float. Worth it where the runtime then reads and sums in INT8: OpenVINO
               (``quantize.targets.openvino``).
``attention``  DSA self-attention: ``Softmax`` and the ``MatMul`` s between two activations
               (query-key and attention-value products). The attention map spans H*W
               positions whose weights are mostly tiny; 8 bits of it is mostly zeros.
``masks``      sigmoid masks (HAR-Net spatial attention, CLSE channel weights): ``Sigmoid``
               and the ``Mul`` that applies it; a mask in [0, 1] multiplies whole feature maps.
``norms``      (off by default; on for ONNX Runtime and TFLite) normalisations whose
               statistics are computed at run time (HAR-Net's cross-level group norm: an
               ``InstanceNormalization`` over the joined levels in ONNX; in TFLite, which has
               no such op, the mean, variance, ``Rsqrt``, scale and shift written out) with
               the ops that join the levels before them (Reshape, Concat) and split them
               after, including the per-channel affine (``Mul`` / ``Add`` by a constant). In
               INT8 ONNX Runtime re-quantizes the joined map between each of these data
               moves; in float they cost less, and the statistics are exact. Written out,
               each step of the statistics is rounded to INT8 on its own scale.
``input_pools``  (off by default; on for ONNX Runtime) max pools of the input image itself
               (DAIPNet's image pyramid): a max commutes with INT8's rounding, so pooling in
               float changes no value, and ONNX Runtime runs a uint8 ``MaxPool`` on the
               channels-first input without its fast kernel (1.1 of DAIPNet's 12.4 ms).
``head``       (off by default) the last weight layers before each graph output, i.e. the
               convs producing the raw logits and box deltas, and the layout ops
               (Reshape, Transpose, Concat) between them and the outputs: kept float, the
               convs alone would hand their output straight back to an INT8 Reshape.
``outputs``    (off by default; on for TFLite) only that layout tail: the Reshape /
               Transpose / Concat that flatten every pyramid level into one output tensor.
               TFLite's INT8 Concat gives all its inputs the output's single scale, so one
               level's extreme logits (a P7 map of -500) coarsen every level's scores.

A weight layer (``Conv``, ``ConvTranspose``, ``Gemm``, a ``MatMul`` with a constant operand)
ends every search: it is the part INT8 speeds up, and the 1x1 projection of the rewrites is
exactly the conv it replaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx

from edgedet.attend_tail import POINTS_PREFIX, PROPOSE_DELTAS, TABLE_PREFIX
from quantize.scope_graph import LAYOUT_OPS, ScopeGraph, ScopeNode, onnx_scope_nodes
from quantize.scope_norms import norm_nodes

__all__ = ["CATEGORIES", "DEFAULT_KEEP_FLOAT", "ScopeNode", "find_kept_out",
           "find_kept_out_nodes", "flatten", "layer_units", "onnx_scope_nodes"]

CATEGORIES: dict[str, str] = {
    "sampling": "P&A / deformable sampling math (sampling points, Gather indices, bilinear "
                "weights): an INT8 step of a coordinate moves every sample, and this "
                "element-wise math is cheap in float",
    "sampling_reads": "the values the P&A / deformable sampling reads (the projected tables, "
                      "the Gather / GridSample) and the tap sum over them: float unless the "
                      "runtime reads and sums them in INT8 (OpenVINO does), where the table "
                      "values round per tensor and the bilinear weights to steps of 1/255",
    "attention": "self-attention Softmax and activation-activation MatMuls (DSA): the "
                 "attention map over H*W positions is mostly tiny weights that 8 bits "
                 "round to zero",
    "masks": "sigmoid masks (spatial attention, channel weights) and the Mul that applies "
             "them: a mask in [0, 1] scales whole feature maps",
    "norms": "run-time normalisations (HAR-Net's cross-level group norm; in TFLite written "
             "out as mean, variance, rsqrt, scale and shift) and the ops that join the "
             "pyramid levels for them, split them after and apply the per-channel affine: in "
             "INT8 each of these data moves is another quantize / dequantize, and each "
             "written-out step is rounded on its own scale",
    "input_pools": "max pools of the input image (DAIPNet's image pyramid): a max commutes "
                   "with INT8 rounding, so float pooling changes no value, and ONNX Runtime "
                   "pools uint8 channels-first maps slowly",
    "head": "the final head convs producing the raw logits and box deltas, and the layout "
            "ops carrying them to the outputs: one INT8 scale per tensor over raw logits that "
            "span hundreds leaves a few steps where the scores are decided, and rounds the "
            "box offsets that place P&A's sampling points",
    "outputs": "only the layout ops (Reshape, Transpose, Concat) that flatten the head's "
               "levels into the outputs, and the outputs themselves: an INT8 Concat puts every "
               "pyramid level on one scale, so one level's extreme logits coarsen all scores",
}
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("sampling", "sampling_reads", "attention", "masks")
# Each target (quantize/targets/) starts from these and says why it adds or drops any
# (openvino drops sampling_reads; accuracy control can put a dropped one back).


def _sampling_reads(graph: ScopeGraph) -> tuple[list[ScopeNode], list[ScopeNode], set[str]]:
    """``(reads, tap sums, the "sampling_reads" node names)``.

    A read is a ``Gather`` with computed indices and data (embedding-style Gathers of constant
    tables or shape Gathers with constant indices are not) or a ``GridSample`` (the rewrites'
    other sampler, whose grid input carries the sampling points). A tap sum is the
    activation x activation ``MatMul`` a Gather's samples reach through layout ops; its
    other operand holds the bilinear weights. The category is the reads, the tap sums, and
    the layout ops carrying the table (projected map) to a read and a Gather's samples to
    their tap sum."""
    reads, tap_sums, names = [], [], set()
    for node in graph.nodes:
        gather = node.op_type == "Gather" and not (
            graph.is_constant(node.inputs[1]) or graph.is_constant(node.inputs[0]))
        if not (gather or node.op_type == "GridSample"):
            continue
        reads.append(node)
        names.add(node.name)
        source = graph.producer.get(node.inputs[0])
        while source is not None and source.op_type in LAYOUT_OPS:
            names.add(source.name)
            source = graph.producer.get(source.inputs[0])
        pending = [node] if gather else []
        while pending:
            for consumer in graph.consumers.get(pending.pop().outputs[0], []):
                if consumer.op_type in LAYOUT_OPS:
                    names.add(consumer.name)
                    pending.append(consumer)
                elif (consumer.op_type == "MatMul" and not graph.is_weight_layer(consumer)
                      and consumer.name not in names):
                    tap_sums.append(consumer)
                    names.add(consumer.name)
    return reads, tap_sums, names


def _sampling_nodes(graph: ScopeGraph, reads: list[ScopeNode], tap_sums: list[ScopeNode]
                    ) -> set[str]:
    """The reads and tap sums, everything computing their inputs back to the weight layers
    (the coordinates, row indices and bilinear weights; the tables' layout ops too), and what
    follows them up to the next weight layer. Sampling points that leave the graph for the
    SDK's tap sum count as a read's input, and so do the propose deltas the SDK computes
    them from (the attend tail's graph has neither reads nor points)."""
    seeds = {n.name for n in reads + tap_sums}
    points = [t for t in graph.outputs if t.startswith(POINTS_PREFIX)]
    if not points and PROPOSE_DELTAS in graph.outputs and any(
            t.startswith(TABLE_PREFIX) for t in graph.outputs):
        # The attend tail computes the points from the propose deltas: what makes them
        # (the propose stage's clip) is the points' math and stays float.
        points = [PROPOSE_DELTAS]
    upstream = graph.backward([*(t for n in reads + tap_sums for t in n.inputs), *points])
    return seeds | upstream | graph.forward(seeds | upstream)


def _attention_nodes(graph: ScopeGraph, exclude: set[str]) -> set[str]:
    found = {n.name for n in graph.nodes if n.op_type == "Softmax"}
    found |= {n.name for n in graph.nodes
              if n.op_type == "MatMul" and not graph.is_weight_layer(n) and n.name not in exclude}
    return found


def _mask_nodes(graph: ScopeGraph) -> set[str]:
    found = {n.name for n in graph.nodes if n.op_type == "Sigmoid"}
    found |= {n.name for n in graph.nodes
              if n.op_type == "Mul" and any(graph.comes_from(t, "Sigmoid") for t in n.inputs)}
    return found


def _input_pool_nodes(graph: ScopeGraph) -> set[str]:
    """``MaxPool`` s whose input comes from a graph input through other ``MaxPool`` s and
    layout ops only (not from a constant, not through any other op)."""
    found: set[str] = set()
    for node in graph.nodes:
        if node.op_type != "MaxPool":
            continue
        chain, tensor = [node], node.inputs[0]
        source = graph.producer.get(tensor)
        while source is not None and (source.op_type in LAYOUT_OPS
                                      or source.op_type == "MaxPool"):
            chain.append(source)
            tensor = source.inputs[0]
            source = graph.producer.get(tensor)
        if source is None and not graph.is_constant(tensor):
            found |= {n.name for n in chain if n.op_type == "MaxPool"}
    return found


def _head_nodes(graph: ScopeGraph) -> tuple[set[str], set[str]]:
    """``(head layers, output tail)``: the weight layers whose output reaches a graph output
    without another weight layer, and the nodes on those paths after them (the Reshape /
    Transpose / Concat that flatten the levels)."""
    tail = graph.backward(graph.outputs)  # what computes the outputs, back to weight layers
    heads = {n.name for n in graph.nodes if graph.is_weight_layer(n) and (
        set(n.outputs) & graph.outputs
        or any(c.name in tail for o in n.outputs for c in graph.consumers.get(o, [])))}
    return (heads, (tail & graph.forward(heads)) - heads) if heads else (set(), set())


def find_kept_out_nodes(model: onnx.ModelProto,
                        keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT) -> dict[str, list[str]]:
    """The ONNX node names to keep in float, per category (see the module docstring).

    Args:
        model: the fp32 ONNX detector (``quantize.export_onnx``); every node must have a name.
        keep_float: categories to keep out of INT8, a subset of ``CATEGORIES``.

    Returns:
        ``{category: sorted node names}`` for each requested category (a node is listed under
        the first category that claims it, in ``CATEGORIES`` order).

    Raises:
        ValueError: an unknown category, or a graph with unnamed nodes.
    """
    nodes, constants, outputs = onnx_scope_nodes(model)
    if any(not n.name for n in nodes):
        raise ValueError("every ONNX node needs a name to be kept out of INT8 by name "
                         "(quantize.export_onnx names them all)")
    return find_kept_out(nodes, constants, outputs, keep_float)


def find_kept_out(nodes: Sequence[ScopeNode], constants: set[str], outputs: set[str],
                  keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT) -> dict[str, list[str]]:
    """``find_kept_out_nodes`` for any graph given as ``ScopeNode`` s with ONNX op types
    (``nodes`` with unique names, the constant tensors, the graph's output tensors)."""
    unknown = sorted(set(keep_float) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown keep-float categories {unknown}; choose from "
                         f"{', '.join(CATEGORIES)}")
    graph = ScopeGraph(nodes, constants, outputs)
    sampling_reads, tap_sums, reads = _sampling_reads(graph)
    sampling = _sampling_nodes(graph, sampling_reads, tap_sums)
    heads, output_tail = _head_nodes(graph)
    found = {
        "sampling": sampling - reads,
        "sampling_reads": reads,
        "attention": _attention_nodes(graph, exclude=sampling),
        "masks": _mask_nodes(graph),
        "norms": norm_nodes(graph),
        "input_pools": _input_pool_nodes(graph),
        "head": heads | output_tail,
        "outputs": output_tail,
    }
    result: dict[str, list[str]] = {}
    claimed: set[str] = set()
    for category in CATEGORIES:
        if category in keep_float:
            names = found[category] - claimed
            result[category] = sorted(names)
            claimed |= names
    return result


def layer_units(model: onnx.ModelProto, kept_float: Iterable[str] = ()) -> dict[str, list[str]]:
    """The weight layers INT8 quantizes, each with the nodes that go back to float with it.

    A unit is one weight layer (``Conv``, ``Gemm``, a ``MatMul`` with a constant operand) that
    is not in ``kept_float``, plus the element-wise tail it feeds up to the next weight layer
    (bias ``Add``, activation, ``Resize``, the FPN's ``Add``...), minus ``kept_float``.
    Returning only the conv to float is not enough where a runtime quantizes op outputs
    (ONNX Runtime's QDQ): its tail would round the same tensor to INT8 one op later.

    Returns:
        ``{weight layer node name: [that name, *tail node names]}`` in graph order.
    """
    nodes, constants, outputs = onnx_scope_nodes(model)
    graph = ScopeGraph(nodes, constants, outputs)
    excluded = set(kept_float)
    units: dict[str, list[str]] = {}
    for node in graph.nodes:
        if graph.is_weight_layer(node) and node.name not in excluded:
            tail = graph.forward([node.name]) - excluded
            units[node.name] = [node.name, *(n.name for n in graph.nodes if n.name in tail)]
    return units


def flatten(kept_out: dict[str, list[str]]) -> list[str]:
    """All node names of ``find_kept_out_nodes``'s result, in category order."""
    return [name for names in kept_out.values() for name in names]
