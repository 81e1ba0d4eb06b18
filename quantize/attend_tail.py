"""The conversion side of the attend tail (``edgedet.attend_tail``): its manifest section, and the
INT8 model's tables handed over as uint8.

A target with ``attend_tail=True`` (``quantize.targets``) exports PASSD with
``rewrite_for_export(..., attend_tail=True)``: the graph ends at each level's projected table,
and the SDK computes the sampling points from the ``propose_deltas`` output. ``tail_spec``
describes that split for the manifest (the attend convs' bias is added by the SDK, and the
points' strides, kernel and box coder weights are stored there too). In an INT8 QDQ model ONNX
Runtime already rounds the table to uint8 (the projection runs as one integer conv, its output
quantized); ``expose_uint8_tables`` drops the final ``DequantizeLinear`` so the SDK reads those
bytes and their scale instead of a float copy four times the size (paper-width PASSD, P3: 3.5 M
values, 1.6 ms of ``DequantizeLinear`` in ONNX Runtime on the AMX CPU). A float model's tables
are better computed as a channels-last ``MatMul`` than as the export's 1x1 conv and transpose
(``tables_as_matmul``); an INT8 one's are not.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from edgedet._io import write_bytes_atomic
from edgedet.attend_tail import (
    PROPOSE_DELTAS,
    TABLE_PREFIX,
    AttendTailSpec,
    PointsFromDeltas,
    TailLevel,
)
from quantize.scope_graph import subgraph_reads


def tail_head(model: nn.Module) -> nn.Module | None:
    """The rewritten P&A head of ``model`` that leaves its tap sum to the SDK, or None."""
    from quantize.rewrites.pa_head import ExportProposeAttendHead

    heads = [m for m in model.modules() if isinstance(m, ExportProposeAttendHead) and m.tail]
    return heads[0] if heads else None


def tail_spec(model: nn.Module, feature_sizes: Sequence[Sequence[int]],
              table_quantization: Mapping[str, tuple[float, float]] | None = None
              ) -> AttendTailSpec | None:
    """The ``attend_tail`` spec of a model rewritten with ``attend_tail=True`` (None for any
    other model).

    Args:
        model: ``rewrite_for_export``'s copy.
        feature_sizes: ``(H, W)`` of each pyramid level at the export's input size
            (``model.anchor_spec(size).feature_sizes``).
        table_quantization: ``{table output: (scale, zero point)}`` of the tables an INT8
            model hands over as uint8 (``expose_uint8_tables``).
    """
    head = tail_head(model)
    if head is None:
        return None
    quantization = table_quantization or {}
    packed = head.attend
    outputs = tuple(zip(("cls_logits", "box_deltas"), packed.split_sizes, strict=True))
    levels = []
    for level, (height, width) in enumerate(feature_sizes):
        table = f"{TABLE_PREFIX}{level}"
        scale, zero = quantization.get(table, (None, None))
        levels.append(TailLevel(table, None, int(height), int(width), scale, zero))
    kernel = round(packed.num_taps ** 0.5)
    points = PointsFromDeltas(PROPOSE_DELTAS, kernel, tuple(float(s) for s in model.strides),
                              tuple(float(w) for w in head.box_coder_weights))  # type: ignore[arg-type]
    return AttendTailSpec(packed.num_anchors, packed.num_taps, outputs,  # type: ignore[arg-type]
                          packed.bias.detach().numpy().astype(np.float32), tuple(levels),
                          points)


def expose_uint8_tables(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
                        ) -> dict[str, tuple[float, float]]:
    """Rewrite a QDQ model so that each ``attend_table_*`` output is the uint8 tensor its
    final ``DequantizeLinear`` read (that node removed); write it to ``out_path`` atomically.

    Returns:
        ``{table output: (scale, zero point)}`` of the tables changed; a table computed in
        float (its projection kept out of INT8) is left as it is and not listed.

    Raises:
        ValueError: a table's ``DequantizeLinear`` is not per tensor or not uint8.
    """
    model = onnx.load(str(onnx_path))
    graph = model.graph
    producer = {t: node for node in graph.node for t in node.output}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    found: dict[str, tuple[float, float]] = {}
    for output in graph.output:
        node = producer.get(output.name)
        if not output.name.startswith(TABLE_PREFIX) or node is None or (
                node.op_type != "DequantizeLinear"):
            continue
        scale, zero = (constants.get(name) for name in (*node.input[1:3], "", "")[:2])
        if scale is None or zero is None or scale.size != 1 or zero.dtype != np.uint8:
            raise ValueError(f"{output.name}: its DequantizeLinear is not per-tensor uint8 "
                             f"(scale {scale}, zero point {zero}); the SDK reads uint8 tables")
        quantized = node.input[0]
        graph.node.remove(node)
        for other in graph.node:  # the quantized tensor takes the output's name
            other.output[:] = [output.name if t == quantized else t for t in other.output]
            other.input[:] = [output.name if t == quantized else t for t in other.input]
        output.type.tensor_type.elem_type = onnx.TensorProto.UINT8
        found[output.name] = (float(scale.reshape(())), float(zero.reshape(())))
    onnx.checker.check_model(model)
    write_bytes_atomic(Path(out_path), model.SerializeToString())
    return found


def _is_plain_1x1_conv(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]) -> bool:
    """A bias-free 1x1 ``Conv`` (stride 1, no padding, one group) of a constant weight."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weight = constants.get(node.input[1]) if len(node.input) > 1 else None
    return (node.op_type == "Conv" and weight is not None and weight.ndim == 4
            and weight.shape[2:] == (1, 1) and (len(node.input) < 3 or not node.input[2])
            and attributes.get("group", 1) == 1
            and all(v == 1 for v in attributes.get("strides", [1, 1]))
            and all(v == 1 for v in attributes.get("dilations", [1, 1]))
            and all(v == 0 for v in attributes.get("pads", [0, 0, 0, 0]))
            and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def tables_as_matmul(model: onnx.ModelProto, table_outputs: Sequence[str]) -> int:
    """Compute each float table of ``table_outputs`` as ``Transpose(features) @ W^T``
    instead of ``Transpose(Conv1x1(features, W))``, in place; the same values.

    Why: ONNX Runtime runs the 1x1 conv in its blocked layout and then reorders the table
    (14 MB at the paper-width P3) to channels-last; a ``MatMul`` of the channels-last
    features (1.6 MB to reorder) writes the table in its final layout. The paper-width PASSD
    in fp32, one interleaved run on the AMX CPU: 32.3 -> 29.3 ms. In INT8 the conv is faster
    (its ``QLinearConv`` runs channels-last already; ``QLinearMatMul`` 12.99 -> 13.45 ms), so
    only float builds take this.

    Returns:
        how many tables were rewritten (a table that is not such a conv's transpose, e.g. an
        INT8 model's ``DequantizeLinear``, is left as it is).
    """
    graph = model.graph
    producer = {t: node for node in graph.node for t in node.output}
    readers = Counter(name for node in graph.node for name in node.input)
    # Tensors read or exposed outside the top-level nodes: never removed.
    external = {o.name for o in graph.output} | subgraph_reads(graph)
    # A weight that is also a graph input can be fed at run time: not a constant.
    inputs = {i.name for i in graph.input}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                 if t.name not in inputs}
    matrices: dict[str, str] = {}  # conv weight -> its (C, O) matrix, made once
    removed: set[str] = set()  # the convs' outputs
    for output in table_outputs:
        transpose = producer.get(output)
        if transpose is None or transpose.op_type != "Transpose":
            continue
        perm = [a for a in transpose.attribute if a.name == "perm"]
        conv = producer.get(transpose.input[0])
        if (not perm or list(perm[0].ints) != [0, 2, 3, 1] or conv is None
                or not _is_plain_1x1_conv(conv, constants) or conv.output[0] in external
                or readers[conv.output[0]] != 1):
            continue
        weight_name = conv.input[1]
        if weight_name not in matrices:
            matrices[weight_name] = f"{weight_name}_as_matrix"
            weight = constants[weight_name]
            graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(weight.reshape(weight.shape[:2]).T),
                matrices[weight_name]))
        features_last = f"{output}_features_channels_last"
        position = list(graph.node).index(conv)
        new_nodes = [
            onnx.helper.make_node("Transpose", [conv.input[0]], [features_last],
                                  name=f"{conv.name}_features_to_channels_last",
                                  perm=[0, 2, 3, 1]),
            onnx.helper.make_node("MatMul", [features_last, matrices[weight_name]], [output],
                                  name=f"{conv.name}_as_matmul")]
        graph.node.remove(transpose)
        graph.node.remove(conv)
        for offset, node in enumerate(new_nodes):
            graph.node.insert(position + offset, node)
        readers[weight_name] -= 1
        removed.add(conv.output[0])
    unused = {name for name in matrices if readers[name] == 0 and name not in external}
    for initializer in [t for t in graph.initializer if t.name in unused]:
        graph.initializer.remove(initializer)
    for info in [v for v in graph.value_info if v.name in removed]:
        graph.value_info.remove(info)
    if removed:
        onnx.checker.check_model(model)
    return len(removed)


def write_tables_as_matmul(onnx_path: Path, out_path: Path) -> Path:
    """``tables_as_matmul`` of every ``attend_table_*`` output of the model at ``onnx_path``,
    written atomically to ``out_path``; returns ``out_path``, or ``onnx_path`` where no table
    changed (nothing written)."""
    model = onnx.load(str(onnx_path))
    tables = [o.name for o in model.graph.output if o.name.startswith(TABLE_PREFIX)]
    if not tables_as_matmul(model, tables):
        return onnx_path
    write_bytes_atomic(out_path, model.SerializeToString())
    return out_path
