"""Pad a QDQ model's quantized images to 4 channels in front of the convolutions reading them
(and fold a large strided first conv into a space-to-depth image).

ONNX Runtime runs an INT8 convolution (``QLinearConv``, channels-last) over a 3-channel image
on a slow path: the first conv of the zoo's INT8 DAIPNet (3 -> 16 channels, 3x3, 300x300)
took 1.30 of the model's 7.8 kernel-ms. With the input padded to 4 channels the same conv
runs its faster path (measured on this repository's 2-core CPU, one interleaved run of the
zoo's INT8 files, model alone: DAIPNet 6.43 -> 5.83 ms, PASSD 8.01 -> 7.76, DSANet 8.59 ->
8.45, pruned HAR-Net 6.55 -> 6.43; 8 or 16 channels were slower than 4 again, and a float
model gains nothing, so only INT8 graphs get this).

The rewrite is exact where the convs run as integer kernels, which the pass makes sure of
(uint8 images, int8 weights, each conv's output quantized again, so that ONNX Runtime fuses
it into one ``QLinearConv``). The image is padded with its own zero point (so the new
channel dequantizes to 0) and every conv that reads it gets weights for the new channel
equal to the weights' zero point: ``(x_q - x_zp) * (w_q - w_zp)`` is 0 for each new term, so
the integer sums, and the outputs, are bit for bit those of the unpadded graph (the tests
run both). A conv left in float would not be: its float sum of the same products can round
differently. One caveat off this machine: without VNNI, ONNX Runtime's AVX2 u8s8 kernels add
pairs of products in int16 with saturation, and the padding changes which products pair up,
so where those sums saturate the two graphs can differ (as either differs from exact
integer arithmetic). Other readers of the float input (DAIPNet's input pools) keep
reading it unpadded.

Where the padded image feeds one conv with a large odd kernel at stride 2 (ResNet's 7x7
conv1 in HAR-Net and DSANet), that conv also becomes a stride-1 conv on ``SpaceToDepth(2)``
of the image (``_space_to_depth``): the same products in another order, an integer sum
again, 0.12-0.16 ms less on ONNX Runtime.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantize.scope_graph import subgraph_reads

CHANNEL_MULTIPLE = 4


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == name),
                default)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """The dims of every 4-D tensor (None where not static): the graph inputs, and the rest as
    ONNX shape inference finds them (none where inference fails)."""
    infos = list(model.graph.input)
    with contextlib.suppress(ValueError, onnx.shape_inference.InferenceError):
        inferred = onnx.shape_inference.infer_shapes(model).graph
        infos += [*inferred.value_info, *inferred.output]
    shapes = {}
    for info in infos:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4:
            shapes[info.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None
                                      for d in dims)
    return shapes


def pad_input_channels(model: onnx.ModelProto, multiple: int = CHANNEL_MULTIPLE) -> int:
    """Pad each quantized image of fewer than ``multiple`` channels to ``multiple``, in place.

    An image here is a 4-D uint8 tensor of 1 to ``multiple - 1`` channels that one
    ``QuantizeLinear`` quantizes per tensor: the graph input, and where shape inference knows
    their shapes, the others (DAIPNet's pooled pyramid images, 38x38 and smaller: 0.04-0.09
    ms more, bit-identical). Each is rewritten only where that is exact: its
    ``DequantizeLinear`` copies feed nothing but ungrouped ``Conv`` data inputs, each with its
    own constant int8 weights (per tensor or per output channel) and its output quantized
    again to 8 bits (directly, or through a ``Relu`` ONNX Runtime drops: ``_requantized``),
    the pattern ONNX Runtime runs as one integer kernel; a lone reader with a 5x5 or larger
    odd kernel at stride 2 also gets the stride folded into the channels. Anything else (a
    float first layer, a grouped conv, a weight shared with another node, a tensor that is a
    graph input or output or that a subgraph reads, an opset before 13) stays as it is.

    Returns:
        The number of convolutions that now read a padded image (0: model unchanged).
    """
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:  # Pad takes its pads as an input from opset 11, per-axis Q/DQ from 13
        return 0
    rewrite = _Rewrite(graph, multiple)
    shapes = _static_shapes(model)
    padded = 0
    for quantize in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        shape = shapes.get(quantize.input[0])
        if shape is not None and shape[1] is not None and 0 < shape[1] < multiple:
            padded += rewrite.pad_image(quantize, shape)
    return padded


class _Rewrite:
    """The graph's reader / producer maps and the names it holds, for ``pad_image``."""

    def __init__(self, graph: onnx.GraphProto, multiple: int) -> None:
        self.graph = graph
        self.multiple = multiple
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.producer = {out: node for node in graph.node for out in node.output}
        self.initializers = {t.name: t for t in graph.initializer}
        # Tensors read or exposed outside the top-level nodes: never changed.
        self.external = ({v.name for v in graph.input} | {v.name for v in graph.output}
                         | subgraph_reads(graph))
        self.taken = (set(self.initializers) | set(self.producer) | self.external
                      | {n.name for n in graph.node} | set(self.readers))

    def _fresh(self, name: str) -> str:
        candidate, index = name, 1
        while candidate in self.taken:
            candidate, index = f"{name}_{index}", index + 1
        self.taken.add(candidate)
        return candidate

    def _only_read_by(self, name: str, node: onnx.NodeProto) -> bool:
        readers = self.readers.get(name, [])
        return name not in self.external and len(readers) == 1 and readers[0] is node

    def pad_image(self, quantize: onnx.NodeProto, shape: tuple[int | None, ...]) -> int:
        """Pad ``quantize``'s output with its zero point to ``multiple`` channels and the
        weights of the convs reading it (and where ``_foldable_padding`` allows, fold a
        strided conv's stride into the channels); the number of convs, 0 where the pattern
        does not hold."""
        channels = int(shape[1])  # type: ignore[arg-type]
        extra = self.multiple - channels
        zero_point = self._image_zero_point(quantize)
        dequantizers = self.readers.get(quantize.output[0], [])
        if zero_point is None or quantize.output[0] in self.external or not dequantizers or any(
                d.op_type != "DequantizeLinear" or d.input[0] != quantize.output[0]
                or d.output[0] in self.external for d in dequantizers):
            return 0
        dequantized = {d.output[0] for d in dequantizers}
        convs = [c for d in dequantizers for c in self.readers.get(d.output[0], [])]
        weights = [self._padded_weight(c, channels, extra, dequantized) for c in convs]
        if not convs or any(w is None for w in weights):
            return 0
        graph = self.graph
        pads = [0, 0, 0, 0, 0, extra, 0, 0]
        padding = (_foldable_padding(convs[0], shape)
                   if len(convs) == 1 and len(dequantizers) == 1 else None)
        stale = set(dequantized)
        for conv, padded in zip(convs, weights, strict=True):
            assert padded is not None
            if padding is not None:
                padded, pads = _space_to_depth(conv, padded, padding, shape, pads)
            self.initializers[padded.name].CopyFrom(padded)
            stale.add(conv.input[1])
        pads_name = self._fresh(f"{quantize.output[0]}/channel_pads")
        fill_name = self._fresh(f"{quantize.output[0]}/channel_fill")
        padded_name = self._fresh(f"{quantize.output[0]}/channels_padded")
        graph.initializer.append(numpy_helper.from_array(np.array(pads, dtype=np.int64),
                                                         pads_name))
        # The zero point as Pad's scalar fill: the new channels (and rows and columns, which
        # a conv's own padding would have read as the zero point) dequantize to 0.
        graph.initializer.append(numpy_helper.from_array(zero_point, fill_name))
        at = list(graph.node).index(quantize) + 1
        graph.node.insert(at, helper.make_node(
            "Pad", [quantize.output[0], pads_name, fill_name], [padded_name], mode="constant",
            name=self._fresh(f"{quantize.name or quantize.output[0]}/pad_channels")))
        if padding is not None:
            folded_name = self._fresh(f"{quantize.output[0]}/space_to_depth")
            graph.node.insert(at + 1, helper.make_node(
                "SpaceToDepth", [padded_name], [folded_name], blocksize=2,
                name=self._fresh(f"{quantize.name or quantize.output[0]}/space_to_depth")))
            padded_name = folded_name
        for dequantize in dequantizers:
            dequantize.input[0] = padded_name
        # The dequantized image and weights now have more channels: drop their recorded shapes.
        for info in [v for v in graph.value_info if v.name in stale]:
            graph.value_info.remove(info)
        return len(convs)

    def _per_tensor_zero_point(self, quantize: onnx.NodeProto) -> np.ndarray | None:
        """``quantize``'s zero point as a 0-d array where its scale and zero point are
        constant scalars (a per-tensor quantizer), else None."""
        if len(quantize.input) < 3:
            return None
        scale = self.initializers.get(quantize.input[1])
        zero_point = self.initializers.get(quantize.input[2])
        if scale is None or zero_point is None or numpy_helper.to_array(scale).size != 1:
            return None
        values = numpy_helper.to_array(zero_point)
        return values.reshape(()) if values.size == 1 else None

    def _image_zero_point(self, quantize: onnx.NodeProto) -> np.ndarray | None:
        """``quantize``'s uint8 zero point as a 0-d array, or None unless it quantizes per
        tensor to uint8 with constant scale and zero point (a per-channel scale would have no
        value for the new channel; ONNX Runtime's integer convs take uint8 images)."""
        if any(a.name == "axis" for a in quantize.attribute):
            return None
        zero_point = self._per_tensor_zero_point(quantize)
        return zero_point if zero_point is not None and zero_point.dtype == np.uint8 else None

    def _requantized(self, conv: onnx.NodeProto) -> bool:
        """Whether ONNX Runtime fuses the conv into an integer ``QLinearConv``: its output
        read only by a ``QuantizeLinear`` to 8 bits (per tensor), or by a ``Relu`` read only
        by one whose zero point is the type's minimum (ONNX Runtime drops such a Relu; with
        any other zero point it keeps a float conv + Relu)."""
        readers = self.readers.get(conv.output[0], [])
        if conv.output[0] in self.external or len(readers) != 1:
            return False
        reader = readers[0]
        through_relu = reader.op_type == "Relu"
        if through_relu:
            relu_readers = self.readers.get(reader.output[0], [])
            if reader.output[0] in self.external or len(relu_readers) != 1:
                return False
            reader = relu_readers[0]
        if reader.op_type != "QuantizeLinear":
            return False
        zero_point = self._per_tensor_zero_point(reader)
        if zero_point is None or zero_point.dtype not in (np.uint8, np.int8):
            return False
        return not through_relu or int(zero_point) == np.iinfo(zero_point.dtype).min

    def _padded_weight(self, conv: onnx.NodeProto, channels: int, extra: int,
                       padded_inputs: set[str]) -> onnx.TensorProto | None:
        """The conv's int8 weight initializer with ``extra`` input channels of its zero
        point, or None where the conv is not one this pass may rewrite."""
        if (conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[0] not in padded_inputs
                or any(name in padded_inputs for name in conv.input[1:])
                or _attribute(conv, "group", 1) != 1 or not self._requantized(conv)):
            return None
        dequantize = self.producer.get(conv.input[1])
        if (dequantize is None or dequantize.op_type != "DequantizeLinear"
                or not self._only_read_by(conv.input[1], conv)):  # weights another node reads
            return None
        weight = self.initializers.get(dequantize.input[0])
        if weight is None or not self._only_read_by(weight.name, dequantize):
            return None
        values = numpy_helper.to_array(weight)
        if values.dtype != np.int8 or values.ndim != 4 or values.shape[1] != channels:
            return None
        parameters = [self.initializers.get(name) for name in dequantize.input[1:3] if name]
        if any(t is None for t in parameters):
            return None
        scale, *rest = (numpy_helper.to_array(t) for t in parameters if t is not None)
        zero_point = rest[0] if rest else np.zeros((), dtype=values.dtype)
        if scale.size != 1:  # per channel: only along the output channels
            if (_attribute(dequantize, "axis", 1) != 0 or scale.shape != (values.shape[0],)
                    or zero_point.size not in (1, values.shape[0])):
                return None
        elif zero_point.size != 1:
            return None
        fill = np.broadcast_to(zero_point.reshape(-1, 1, 1, 1) if zero_point.size > 1
                               else zero_point.reshape(()),
                               (values.shape[0], extra, *values.shape[2:]))
        return numpy_helper.from_array(
            np.concatenate([values, fill.astype(values.dtype)], axis=1), weight.name)


def _foldable_padding(conv: onnx.NodeProto, shape: tuple[int | None, ...]) -> int | None:
    """The conv's padding where it may run as a stride-1 conv on a space-to-depth image: an
    odd square kernel of 5 or more at stride 2 (ResNet's 7x7 conv1), no dilation, the same
    padding on every side, a static image size; None otherwise.

    Measured on ONNX Runtime's integer conv (one interleaved run per shape): the pruned
    HAR-Net's 7x7/2 conv1 0.62 -> 0.50 ms, DSANet's 0.86 -> 0.70, whole pruned HAR-Net 5.99 ->
    5.79 and 8.11 -> 7.84 ms; a 3x3/2 conv (PASSD's first) got slower, 0.42 -> 0.50, so
    small kernels keep their stride. Exact like the padding: an integer sum of the same
    products. (An even kernel over an odd padded size would give one more output row.)"""
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    kernel = list(attributes.get("kernel_shape", []))
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    if (len(kernel) != 2 or kernel[0] != kernel[1] or kernel[0] < 5 or kernel[0] % 2 == 0
            or list(attributes.get("strides", [1, 1])) != [2, 2]
            or list(attributes.get("dilations", [1, 1])) != [1, 1]
            or attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or len(set(pads)) != 1 or shape[2] is None or shape[3] is None):
        return None
    return int(pads[0])


def _space_to_depth(conv: onnx.NodeProto, weight: onnx.TensorProto, padding: int,
                    shape: tuple[int | None, ...], pads: list[int]
                    ) -> tuple[onnx.TensorProto, list[int]]:
    """``conv`` (k x k, stride 2, ``padding`` p) as a ceil(k/2) x ceil(k/2) stride-1 conv with
    no padding on ``SpaceToDepth(2)`` of the image padded by p (and one more row / column
    where the padded size is odd): the weights rearranged to the 4x channels, the taps past
    k set to the weights' zero point (read off the padded weight's last input channel, which
    ``_padded_weight`` filled with it), the conv's attributes replaced, the image's ``pads``
    extended. Returns ``(weight, pads)``."""
    values = numpy_helper.to_array(weight)
    out_channels, channels, kernel, _ = values.shape
    half = (kernel + 1) // 2
    zero_point = values[:, -1:, :1, :1]  # the channel _padded_weight added: the zero point
    taps = np.broadcast_to(zero_point, (out_channels, channels, 2 * half, 2 * half)).copy()
    taps[:, :, :kernel, :kernel] = values
    # SpaceToDepth's output channel (dy * 2 + dx) * C + c holds pixel (2y + dy, 2x + dx).
    folded = (taps.reshape(out_channels, channels, half, 2, half, 2)
              .transpose(0, 3, 5, 1, 2, 4).reshape(out_channels, 4 * channels, half, half))
    height, width = int(shape[2]), int(shape[3])  # type: ignore[arg-type]
    grown = list(pads)
    grown[2] += padding
    grown[3] += padding
    grown[6] += padding + (height + 2 * padding) % 2
    grown[7] += padding + (width + 2 * padding) % 2
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("kernel_shape", [half, half]),
                           helper.make_attribute("strides", [1, 1])])
    return numpy_helper.from_array(np.ascontiguousarray(folded), weight.name), grown
