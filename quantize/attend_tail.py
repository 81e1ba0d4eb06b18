"""The conversion side of the attend tail (``edgedet.attend_tail``): its manifest section, and
the INT8 model's tables handed over as uint8.

A target with ``attend_tail=True`` (``quantize.targets``) exports PASSD with
``rewrite_for_export(..., attend_tail=True)``: the graph ends at each level's projected table
and sampling points. ``tail_spec`` describes that split for the manifest (the attend convs'
bias is added by the SDK, so it is stored there). In an INT8 QDQ model ONNX Runtime already
rounds the table to uint8 (the projection runs as one integer conv, its output quantized);
``expose_uint8_tables`` drops the final ``DequantizeLinear`` so the SDK reads those bytes and
their scale instead of a float copy four times the size (paper-width PASSD, P3: 3.5 M values,
1.6 ms of ``DequantizeLinear`` in ONNX Runtime on the AMX CPU).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from edgedet._io import write_bytes_atomic
from edgedet.attend_tail import POINTS_PREFIX, TABLE_PREFIX, AttendTailSpec, TailLevel


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
        levels.append(TailLevel(table, f"{POINTS_PREFIX}{level}", int(height), int(width),
                                scale, zero))
    return AttendTailSpec(packed.num_anchors, packed.num_taps, outputs,  # type: ignore[arg-type]
                          packed.bias.detach().numpy().astype(np.float32), tuple(levels))


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
