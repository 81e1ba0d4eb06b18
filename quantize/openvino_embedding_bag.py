"""The Gather form's float bilinear read as one ``EmbeddingBagPackedSum`` per level (OpenVINO IRs).

The ``gather`` sampler (``quantize.rewrites.sampling.bilinear_tap_sum_xy``) reads each
output's ``4 * taps`` corner rows of a projected table with a ``Gather`` and sums them with
their bilinear weights in a ``MatMul`` of ``(..., 1, 4T)`` weights by the ``(..., 4T, O)``
rows. ONNX has no op that does both, so the rows are written out in between: at the
paper-width PASSD's P3 172 800 rows of 85 floats, 59 MB written and read again per frame.
OpenVINO has one: ``EmbeddingBagPackedSum(table, indices (B, bag), weights (B, bag))`` is
exactly ``sum_j weights[b, j] * table[indices[b, j]]``. This pass puts it in place of each
such ``Gather`` + ``MatMul`` of an ``ov.Model`` whose operands are float (the same sum,
its terms added in another order). The openvino target applies it to its fp32 IRs and to
INT8 IRs whose sampling reads stayed float (``quantize.targets.openvino``): the paper-width
PASSD's fp32 IR with f32 inference (what the SDK runs) 38.43 -> 31.29 and 37.96 -> 30.48 ms,
at OpenVINO's default bf16 13.80 -> 11.90 and 13.26 -> 11.51 (two interleaved runs, AMX CPU;
in an earlier session, before the per-axis corner math, the bf16 default had been slower
with it). A read whose table or weights NNCF quantized keeps its int8 ``Gather`` and INT8
product, faster than the op on float rows (paper-width PASSD 8.28 ms against 8.81 for float
reads summed by this op, and 13.64 for float reads as ``Gather`` + ``MatMul``).

Unlike ``Gather``, which reads zeros for an index out of range, the op's CPU kernel raises on
one; the row indices are clamped into the table first (the graph clamps its coordinates, but
a NaN point, or rows computed in bf16, can still leave the range).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def tap_sums_as_embedding_bags(model: Any) -> int:
    """Replace, in the ``openvino.Model`` ``model``, each ``MatMul(weights, Gather(table,
    indices, axis 0))`` that is a weighted sum of gathered rows by one
    ``EmbeddingBagPackedSum``; returns how many were replaced.

    A product qualifies when it transposes nothing, its weights are ``(..., 1, bag)`` and
    the ``Gather``'s indices ``(..., bag)`` over the same leading axes, the table is 2-D
    ``(rows, O)`` of the weights' element type, neither the table nor the weights come from
    a ``FakeQuantize`` (an INT8 read), the ``Gather`` has ``batch_dims`` 0 and this product
    as its only reader, and every shape is static. Anything else is left as it is (the
    INT8 form's block-diagonal ``(..., G, G*bag)`` weights among them).
    """
    from openvino import opset15 as ops

    replaced = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul" or not _plain_product(node):
            continue
        gather = node.input_value(1).get_node()
        if not _row_gather(gather):
            continue
        weights, table, indices = node.input_value(0), gather.input_value(0), \
            gather.input_value(1)
        if not all(v.get_partial_shape().is_static
                   for v in (weights, table, indices, node.output(0))):
            continue
        weight_shape, index_shape = list(weights.get_shape()), list(indices.get_shape())
        if (len(table.get_shape()) != 2 or len(weight_shape) < 2 or weight_shape[-2] != 1
                or weight_shape[:-2] + weight_shape[-1:] != index_shape
                or table.get_element_type() != weights.get_element_type()
                or _quantized(table) or _quantized(weights)
                or len(gather.output(0).get_target_inputs()) != 1):
            continue
        bags = [int(np.prod(index_shape[:-1])), index_shape[-1]]
        rows = ops.clamp(_reshaped(ops, indices, bags), 0, table.get_shape()[0] - 1)
        summed = ops.embedding_bag_packed_sum(table, rows, _reshaped(ops, weights, bags))
        out = _reshaped(ops, summed.output(0), list(node.output(0).get_shape()))
        out.get_node().set_friendly_name(node.get_friendly_name())
        out.get_tensor().set_names(node.output(0).get_names())
        for reader in list(node.output(0).get_target_inputs()):
            reader.replace_source_output(out)
        replaced += 1
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced


def _plain_product(matmul: Any) -> bool:
    """A ``MatMul`` that transposes neither input."""
    attributes = matmul.get_attributes()
    return not attributes.get("transpose_a") and not attributes.get("transpose_b")


def _row_gather(node: Any) -> bool:
    """A ``Gather`` of whole rows: a constant axis 0 and no batch dimensions."""
    if node.get_type_name() != "Gather" or node.get_attributes().get("batch_dims", 0) != 0:
        return False
    axis = node.input_value(2).get_node()
    return axis.get_type_name() == "Constant" and int(
        np.asarray(axis.get_data()).reshape(-1)[0]) == 0


# Ops that move or relabel values without changing them (how NNCF's quantizers reach a read).
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert"})


def _quantized(value: Any) -> bool:
    """Whether ``value`` (an output port) is a ``FakeQuantize``'s, through layout ops."""
    node = value.get_node()
    while node.get_type_name() in _LAYOUT_OPS:
        node = node.input_value(0).get_node()
    return node.get_type_name() == "FakeQuantize"


def _reshaped(ops: Any, value: Any, shape: list[int]) -> Any:
    """``value`` reshaped to the static ``shape`` (an output port)."""
    return ops.reshape(value, ops.constant(np.asarray(shape, np.int64)), False).output(0)
