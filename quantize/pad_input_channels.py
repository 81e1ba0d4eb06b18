"""Pad a QDQ model's quantized images to 4 channels in front of the convolutions reading them.

ONNX Runtime runs an INT8 convolution (``QLinearConv``, channels-last) over a 3-channel image
on a slow path: the first conv of the zoo's INT8 DAIPNet (3 -> 16 channels, 3x3, 300x300)
took 1.30 of the model's 7.8 kernel-ms. With the input padded to 4 channels the same conv
runs its faster path (measured on this repository's 2-core CPU, one interleaved run of the
zoo's INT8 files, model alone: DAIPNet 6.43 -> 5.83 ms, PASSD 8.01 -> 7.76, DSANet 8.59 ->
8.45, pruned HAR-Net 6.55 -> 6.43; 8 or 16 channels were slower than 4 again, and a float
model gains nothing, so only INT8 graphs get this).

The rewrite is exact. The quantized input is padded with its own zero point (so the new
channel dequantizes to 0) and every conv that reads it gets weights for the new channel equal
to the weights' zero point: ``(x_q - x_zp) * (w_q - w_zp)`` is 0 for each new term, so the
integer sums, and the outputs, are bit for bit those of the unpadded graph (the tests run
both). Other readers of the float input (DAIPNet's input pools) keep reading it unpadded.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

CHANNEL_MULTIPLE = 4


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == name),
                default)


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Channels (dim 1) of every 4-D tensor whose shape is static there: the graph inputs, and
    the rest as ONNX shape inference finds them (none where inference fails)."""
    infos = list(model.graph.input)
    with contextlib.suppress(ValueError, onnx.shape_inference.InferenceError):
        inferred = onnx.shape_inference.infer_shapes(model).graph
        infos += [*inferred.value_info, *inferred.output]
    counts = {}
    for info in infos:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            counts[info.name] = int(dims[1].dim_value)
    return counts


def pad_input_channels(model: onnx.ModelProto, multiple: int = CHANNEL_MULTIPLE) -> int:
    """Pad each quantized image of fewer than ``multiple`` channels to ``multiple``, in place.

    An image here is a 4-D tensor of 1 to ``multiple - 1`` channels that one
    ``QuantizeLinear`` quantizes: the graph input, and where shape inference knows their
    shapes, the others (DAIPNet's pooled pyramid images, 38x38 and smaller: 0.04-0.09 ms
    more, bit-identical). Each is rewritten only where that is exact: its ``DequantizeLinear``
    copies feed nothing but ungrouped ``Conv`` data inputs, each with its own constant INT8
    weights (per tensor or per output channel). Anything else (a float first layer, a
    grouped conv, a weight shared with another node) stays as it is.

    Returns:
        The number of convolutions that now read a padded image (0: model unchanged).
    """
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    channels_of = _channel_counts(model)
    padded = 0
    for quantize in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        channels = channels_of.get(quantize.input[0])
        if channels is not None and 0 < channels < multiple:
            padded += _pad_image(graph, quantize, channels, multiple - channels, readers,
                                 producer, initializers)
    return padded


def _pad_image(graph: onnx.GraphProto, quantize: onnx.NodeProto, channels: int, extra: int,
               readers: dict[str, list[onnx.NodeProto]], producer: dict[str, onnx.NodeProto],
               initializers: dict[str, onnx.TensorProto]) -> int:
    """Pad ``quantize``'s output by ``extra`` channels of its zero point and the weights of
    the convs reading it; the number of convs, 0 where the pattern does not hold."""
    zero_point = _per_tensor_zero_point(quantize, initializers)
    dequantizers = readers.get(quantize.output[0], [])
    if zero_point is None or not dequantizers or any(
            d.op_type != "DequantizeLinear" or d.input[0] != quantize.output[0]
            for d in dequantizers):
        return 0
    dequantized = {d.output[0] for d in dequantizers}
    convs = [c for d in dequantizers for c in readers.get(d.output[0], [])]
    weights = [_padded_weight(c, producer, initializers, readers, channels, extra, dequantized)
               for c in convs]
    if not convs or any(w is None for w in weights):
        return 0
    for padded in weights:
        assert padded is not None
        initializers[padded.name].CopyFrom(padded)
    pads_name = f"{quantize.output[0]}/channel_pads"
    padded_name = f"{quantize.output[0]}/channels_padded"
    graph.initializer.append(numpy_helper.from_array(
        np.array([0, 0, 0, 0, 0, extra, 0, 0], dtype=np.int64), pads_name))
    # The zero point as Pad's scalar fill: the new channels dequantize to 0.
    fill_name = f"{quantize.output[0]}/channel_fill"
    graph.initializer.append(numpy_helper.from_array(zero_point, fill_name))
    pad = helper.make_node("Pad", [quantize.output[0], pads_name, fill_name], [padded_name],
                           name=f"{quantize.name}/pad_channels", mode="constant")
    graph.node.insert(list(graph.node).index(quantize) + 1, pad)
    for dequantize in dequantizers:
        dequantize.input[0] = padded_name
    # The dequantized tensors now have more channels: drop their recorded shapes.
    for info in [v for v in graph.value_info if v.name in dequantized]:
        graph.value_info.remove(info)
    return len(convs)


def _per_tensor_zero_point(quantize: onnx.NodeProto,
                           initializers: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """``quantize``'s zero point as a 0-d array (uint8 0 when it has none), or None where it
    quantizes per channel or its scale or zero point is not a constant: a per-channel scale
    would have no value for the new channel."""
    scale = initializers.get(quantize.input[1])
    if scale is None or numpy_helper.to_array(scale).size != 1:
        return None
    if len(quantize.input) < 3 or not quantize.input[2]:
        return np.zeros((), dtype=np.uint8)
    zero_point = initializers.get(quantize.input[2])
    if zero_point is None or numpy_helper.to_array(zero_point).size != 1:
        return None
    return numpy_helper.to_array(zero_point).reshape(())


def _padded_weight(conv: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                   initializers: dict[str, onnx.TensorProto],
                   readers: dict[str, list[onnx.NodeProto]], channels: int, extra: int,
                   padded_inputs: set[str]) -> onnx.TensorProto | None:
    """The conv's INT8 weight initializer with ``extra`` input channels of its zero point,
    or None where the conv is not one this pass may rewrite."""
    if (conv.op_type != "Conv" or conv.input[0] not in padded_inputs
            or any(name in padded_inputs for name in conv.input[1:])
            or _attribute(conv, "group", 1) != 1 or len(conv.input) < 2):
        return None
    dequantize = producer.get(conv.input[1])
    if (dequantize is None or dequantize.op_type != "DequantizeLinear"
            or len(readers.get(conv.input[1], [])) != 1):  # weights another node reads too
        return None
    weight = initializers.get(dequantize.input[0])
    if weight is None or len(readers.get(weight.name, [])) != 1:
        return None
    values = numpy_helper.to_array(weight)
    if values.dtype not in (np.int8, np.uint8) or values.ndim != 4 or values.shape[1] != channels:
        return None
    zero_point = np.zeros((), dtype=values.dtype)
    if len(dequantize.input) > 2 and dequantize.input[2]:
        if dequantize.input[2] not in initializers:
            return None
        zero_point = numpy_helper.to_array(initializers[dequantize.input[2]])
    if zero_point.ndim == 1:  # per channel: only along the output channels
        if _attribute(dequantize, "axis", 1) != 0 or len(zero_point) != values.shape[0]:
            return None
        zero_point = zero_point.reshape(-1, 1, 1, 1)
    elif zero_point.ndim != 0:
        return None
    fill = np.broadcast_to(zero_point, (values.shape[0], extra, *values.shape[2:]))
    return numpy_helper.from_array(
        np.concatenate([values, fill.astype(values.dtype)], axis=1), weight.name)
