"""``quantize.pad_input_channels``: quantized images padded to 4 channels in front of the
integer convs reading them, outputs bit for bit those of the unpadded graph; anything it
cannot rewrite exactly left alone, byte for byte."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedet.cpu_features import int8_sums_can_clip
from quantize.pad_input_channels import pad_input_channels

SIZE = 9
# The hand-made int8 weights use the full 8 bits, except on x86 CPUs without VNNI: there ONNX
# Runtime's u8 x s8 kernels add pairs of products in 16 bits, which clip for 8-bit weights
# (255 x 127 x 2 > 32767), and the 4th, padded channel changes which products pair up, so the
# bits differ where the sums clip (seen on an AVX2 EPYC). With 7-bit weights (-64..63), what a
# conversion for such a CPU builds (--int8-weight-bits 7), no pair clips.
WEIGHT_MAX = 63 if int8_sums_can_clip() else 127


def _int8_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-WEIGHT_MAX, WEIGHT_MAX + 1, shape).astype(np.int8)


def _requantize(tensor: str, name: str, zero: str = "y_zero") -> list[onnx.NodeProto]:
    """``tensor`` -> Q -> DQ as ``name`` (what ONNX Runtime's QDQ quantizer puts after a conv,
    so that the conv runs as one integer kernel; after a Relu, zero point 0 (``relu_zero``),
    which lets ONNX Runtime drop the Relu)."""
    return [helper.make_node("QuantizeLinear", [tensor, "y_scale", zero], [f"{name}_q"]),
            helper.make_node("DequantizeLinear", [f"{name}_q", "y_scale", zero], [name])]


def _qdq_model(*, conv_b_group: int = 1, share_weight: bool = False, channels: int = 3,
               dequantized_also_to_relu: bool = False, dynamic: bool = False,
               quantized_pool: bool = False, float_conv_b: bool = False,
               expose: str | None = None, opset: int = 17, relu_zero: int = 0
               ) -> onnx.ModelProto:
    """``images (1, C, 9, 9)`` -> Q -> two DQ copies -> conv A (5 out, 3x3, int8 per channel,
    then Relu) and conv B (6 out, 1x1, int8 per tensor with zero point 3, int32 bias), each
    quantized again; the float input also max-pooled (as DAIPNet's pyramid pools it), with
    ``quantized_pool`` the pooled image quantized for a conv of its own (conv P). Variants:
    ``float_conv_b`` (conv B's output not quantized again: ONNX Runtime runs it in float),
    ``expose`` (that tensor also a graph output), ``relu_zero`` (the zero point after conv A's
    Relu: ONNX Runtime fuses the conv only with 0), the rest as named."""
    rng = np.random.default_rng(0)
    weight_a = _int8_weights(rng, (5, channels, 3, 3))
    b_in = channels // conv_b_group
    b_out = 6 if conv_b_group == 1 else channels
    weight_b = rng.integers(-60, 60, (b_out, b_in, 1, 1)).astype(np.int8)
    initializers = [
        numpy_helper.from_array(np.float32(0.03), "x_scale"),
        numpy_helper.from_array(np.uint8(120), "x_zero"),
        numpy_helper.from_array(weight_a, "w_a"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, 5).astype(np.float32), "w_a_scale"),
        numpy_helper.from_array(np.zeros(5, np.int8), "w_a_zero"),
        numpy_helper.from_array(weight_b, "w_b"),
        numpy_helper.from_array(np.float32(0.004), "w_b_scale"),
        numpy_helper.from_array(np.int8(3), "w_b_zero"),
        numpy_helper.from_array(rng.integers(-900, 900, b_out).astype(np.int32), "b_b"),
        numpy_helper.from_array(np.float32(0.03 * 0.004), "b_b_scale"),
        numpy_helper.from_array(np.float32(0.05), "y_scale"),
        numpy_helper.from_array(np.uint8(10), "y_zero"),
        numpy_helper.from_array(np.uint8(relu_zero), "relu_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zero"], ["x_q"], name="q_in"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_a"], name="dq_a"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_b"], name="dq_b"),
        helper.make_node("DequantizeLinear", ["w_a", "w_a_scale", "w_a_zero"], ["w_a_f"],
                         axis=0, name="dq_w_a"),
        helper.make_node("DequantizeLinear", ["w_b", "w_b_scale", "w_b_zero"], ["w_b_f"],
                         name="dq_w_b"),
        helper.make_node("DequantizeLinear", ["b_b", "b_b_scale"], ["b_b_f"], name="dq_b_b"),
        helper.make_node("Conv", ["x_a", "w_a_f"], ["y_a"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Conv", ["x_b", "w_b_f", "b_b_f"], ["y_b"], kernel_shape=[1, 1],
                         group=conv_b_group, name="conv_b"),
        helper.make_node("Relu", ["y_a"], ["r_a"]),
        *_requantize("r_a", "out_a", "relu_zero"),
        helper.make_node("MaxPool", ["images"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    outputs = ["out_a", "pooled"]
    if float_conv_b:
        outputs.append("y_b")
    else:
        nodes += _requantize("y_b", "out_b")
        outputs.append("out_b")
    if quantized_pool:
        initializers += [numpy_helper.from_array(_int8_weights(rng, (4, channels, 3, 3)), "w_p"),
                         numpy_helper.from_array(np.float32(0.01), "w_p_scale"),
                         numpy_helper.from_array(np.float32(0.04), "p_scale"),
                         numpy_helper.from_array(np.uint8(100), "p_zero")]
        nodes += [
            helper.make_node("QuantizeLinear", ["pooled", "p_scale", "p_zero"], ["p_q"],
                             name="q_pool"),
            helper.make_node("DequantizeLinear", ["p_q", "p_scale", "p_zero"], ["p_f"]),
            helper.make_node("DequantizeLinear", ["w_p", "w_p_scale"], ["w_p_f"]),
            helper.make_node("Conv", ["p_f", "w_p_f"], ["y_p"], kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1], name="conv_p"),
            *_requantize("y_p", "out_p")]
        outputs.append("out_p")
    if share_weight:  # a third conv, on another tensor, reads conv A's weights
        nodes.append(helper.make_node("Conv", ["pooled", "w_a_f"], ["y_c"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], name="conv_c"))
        outputs.append("y_c")
    if dequantized_also_to_relu:
        nodes.append(helper.make_node("Relu", ["x_a"], ["x_a_relu"]))
        outputs.append("x_a_relu")
    if expose:
        outputs.append(expose)
    dims: list[int | str] = [1, "channels" if dynamic else channels, SIZE, SIZE]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT if name != "x_q"
                                       else TensorProto.UINT8, ["n", "c", "h", "w"])
         for name in outputs],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, images: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def _assert_same_outputs(model: onnx.ModelProto, padded: onnx.ModelProto, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(4):
        images = rng.normal(0, 1.5, (1, 3, SIZE, SIZE)).astype(np.float32)
        for old, new in zip(_run(model, images), _run(padded, images), strict=True):
            np.testing.assert_array_equal(old, new)


def test_padded_model_gives_the_same_bits():
    model, padded = _qdq_model(), _qdq_model()
    assert pad_input_channels(padded) == 2
    onnx.checker.check_model(padded)
    onnx.shape_inference.infer_shapes(padded, strict_mode=True)  # no stale recorded shapes
    _assert_same_outputs(model, padded, seed=1)


def test_a_quantized_pooled_image_is_padded_too_with_the_same_bits():
    model, padded = _qdq_model(quantized_pool=True), _qdq_model(quantized_pool=True)
    assert pad_input_channels(padded) == 3
    weights = {t.name: numpy_helper.to_array(t) for t in padded.graph.initializer}
    assert weights["w_p"].shape == (4, 4, 3, 3) and not weights["w_p"][:, 3].any()
    pads = [list(n.input) for n in padded.graph.node if n.op_type == "Pad"]
    assert ["p_q", "p_q/channel_pads", "p_q/channel_fill"] in pads
    _assert_same_outputs(model, padded, seed=2)


def test_new_channel_weights_are_the_zero_points_and_the_pad_value_the_input_zero_point():
    padded = _qdq_model()
    pad_input_channels(padded)
    weights = {t.name: numpy_helper.to_array(t) for t in padded.graph.initializer}
    assert weights["w_a"].shape == (5, 4, 3, 3) and weights["w_b"].shape == (6, 4, 1, 1)
    assert not weights["w_a"][:, 3].any()  # per-channel zero points 0
    assert (weights["w_b"][:, 3] == 3).all()  # the per-tensor zero point, 3
    original = {t.name: numpy_helper.to_array(t) for t in _qdq_model().graph.initializer}
    np.testing.assert_array_equal(weights["w_a"][:, :3], original["w_a"])
    pad = next(n for n in padded.graph.node if n.op_type == "Pad")
    assert list(pad.input) == ["x_q", "x_q/channel_pads", "x_q/channel_fill"]
    assert weights["x_q/channel_pads"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert weights["x_q/channel_fill"].shape == () and weights["x_q/channel_fill"] == 120
    readers = {n.name: list(n.input) for n in padded.graph.node}
    assert readers["dq_a"][0] == readers["dq_b"][0] == "x_q/channels_padded"
    pool = next(n for n in padded.graph.node if n.op_type == "MaxPool")
    assert list(pool.input) == ["images"]  # the float input's other reader: still 3 channels


def test_new_names_never_collide_with_existing_ones():
    model, padded = _qdq_model(), _qdq_model()
    for taken in (model, padded):  # an unrelated initializer already holds the name
        taken.graph.initializer.append(numpy_helper.from_array(np.float32(1), "x_q/channel_fill"))
    assert pad_input_channels(padded) == 2
    onnx.checker.check_model(padded)
    pad = next(n for n in padded.graph.node if n.op_type == "Pad")
    assert pad.input[2] == "x_q/channel_fill_1"
    _assert_same_outputs(model, padded, seed=3)


def _per_channel_input(model: onnx.ModelProto) -> None:
    for tensor in model.graph.initializer:
        if tensor.name in ("x_scale", "x_zero"):
            values = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.full(3, values, values.dtype), tensor.name))
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] == "x_scale":
            node.attribute.append(helper.make_attribute("axis", 1))


def _int8_input(model: onnx.ModelProto) -> None:
    for tensor in model.graph.initializer:
        if tensor.name == "x_zero":
            tensor.CopyFrom(numpy_helper.from_array(np.int8(-8), "x_zero"))


def _weights_per_input_channel(model: onnx.ModelProto) -> None:
    for tensor in model.graph.initializer:
        if tensor.name == "w_b_scale":
            tensor.CopyFrom(numpy_helper.from_array(np.full(3, 0.004, np.float32), "w_b_scale"))
        if tensor.name == "w_b_zero":
            tensor.CopyFrom(numpy_helper.from_array(np.zeros(3, np.int8), "w_b_zero"))
    for node in model.graph.node:
        if node.name == "dq_w_b":
            node.attribute.append(helper.make_attribute("axis", 1))


def _weight_also_a_graph_input(model: onnx.ModelProto) -> None:
    model.graph.input.append(helper.make_tensor_value_info("w_a", TensorProto.INT8,
                                                           [5, 3, 3, 3]))


def _dequantized_read_by_a_subgraph(model: onnx.ModelProto) -> None:
    body = helper.make_graph([helper.make_node("Relu", ["x_a"], ["inner"])], "then", [],
                             [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "flag"))
    model.graph.node.append(helper.make_node("If", ["flag"], ["branch"], then_branch=body,
                                             else_branch=body))
    model.graph.output.append(helper.make_tensor_value_info("branch", TensorProto.FLOAT, None))


@pytest.mark.parametrize("variant", [
    {"conv_b_group": 3},  # depthwise over the 3 channels: no padding to give it
    {"share_weight": True},  # conv A's weights are also another conv's
    {"dequantized_also_to_relu": True},  # the dequantized input feeds a non-conv
    {"channels": 4},  # already a multiple of 4
    {"dynamic": True},  # channel count unknown
    {"float_conv_b": True},  # conv B's sum would be a float one: rounding could differ
    {"expose": "x_a"},  # the dequantized image is also a graph output
    {"expose": "w_b_f"},  # a dequantized weight is also a graph output
    {"expose": "x_q"},  # the quantized image is also a graph output
    {"opset": 10},  # Pad took its pads as an attribute then
    {"relu_zero": 10},  # conv A + Relu stay float: ONNX Runtime drops the Relu only for 0
])
def test_patterns_it_cannot_rewrite_exactly_are_left_alone(variant):
    model = _qdq_model(**variant)
    before = model.SerializeToString()
    assert pad_input_channels(model) == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize("change", [_per_channel_input, _int8_input, _weights_per_input_channel,
                                    _weight_also_a_graph_input,
                                    _dequantized_read_by_a_subgraph])
def test_other_graphs_it_cannot_rewrite_exactly_are_left_alone(change):
    model = _qdq_model()
    change(model)
    before = model.SerializeToString()
    assert pad_input_channels(model) == 0
    assert model.SerializeToString() == before


def test_a_float_model_is_left_alone():
    weight = np.ones((2, 3, 1, 1), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"], kernel_shape=[1, 1])], "f",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert pad_input_channels(model) == 0


def test_applying_it_twice_changes_nothing_more():
    padded = _qdq_model(quantized_pool=True)
    pad_input_channels(padded)
    once = padded.SerializeToString()
    assert pad_input_channels(padded) == 0
    assert padded.SerializeToString() == once


def _strided_model(kernel: int, stride: int, pads: list[int], height: int, width: int,
                   weight_zero: int = 0, relu_zero: int = 0) -> onnx.ModelProto:
    """``images (1, 3, H, W)`` -> Q -> DQ -> one conv (8 out, int8 weights per channel) ->
    Relu -> Q -> DQ: the shape of ResNet's conv1 when ``kernel`` is 7 and ``stride`` 2."""
    rng = np.random.default_rng(kernel * 100 + height)
    initializers = [
        numpy_helper.from_array(np.float32(0.03), "x_scale"),
        numpy_helper.from_array(np.uint8(77), "x_zero"),
        numpy_helper.from_array(_int8_weights(rng, (8, 3, kernel, kernel)), "w"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, 8).astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.full(8, weight_zero, np.int8), "w_zero"),
        numpy_helper.from_array(np.float32(0.05), "y_scale"),
        numpy_helper.from_array(np.uint8(relu_zero), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_f"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_f"], axis=0),
        helper.make_node("Conv", ["x_f", "w_f"], ["y"], kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=pads, name="conv"),
        helper.make_node("Relu", ["y"], ["r"]),
        *_requantize("r", "out"),
    ]
    graph = helper.make_graph(
        nodes, "strided",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", "c", "h", "w"])],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("kernel", "pad", "height", "width", "weight_zero"), [
    (7, 3, 64, 64, 0),  # big enough for a float sum's rounding to show, were it one
    (7, 3, 16, 20, 0),  # ResNet's conv1 on an even image
    (7, 3, 9, 11, 0),  # odd sizes: one more zero-point row and column before the fold
    (5, 2, 12, 10, 0),
    (7, 3, 10, 10, 5),  # a weight zero point: the taps past 7 hold it
    (7, 0, 15, 15, 0),
])
def test_a_large_strided_kernel_runs_on_a_space_to_depth_image_with_the_same_bits(
        kernel, pad, height, width, weight_zero):
    model = _strided_model(kernel, 2, [pad] * 4, height, width, weight_zero)
    folded = _strided_model(kernel, 2, [pad] * 4, height, width, weight_zero)
    assert pad_input_channels(folded) == 1
    onnx.checker.check_model(folded)
    ops = [n.op_type for n in folded.graph.node]
    assert ops[1:3] == ["Pad", "SpaceToDepth"]
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    half = (kernel + 1) // 2
    assert attributes == {"kernel_shape": [half, half], "strides": [1, 1]}
    weights = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    assert weights["w"].shape == (8, 16, half, half)
    rng = np.random.default_rng(5)
    for _ in range(4):
        images = rng.normal(0, 1.5, (1, 3, height, width)).astype(np.float32)
        np.testing.assert_array_equal(_run(model, images)[0], _run(folded, images)[0])


@pytest.mark.parametrize(("kernel", "stride", "pads"), [
    (3, 2, [1, 1, 1, 1]),  # small kernels measured slower folded: only padded
    (6, 2, [2, 2, 2, 2]),  # an even kernel
    (7, 1, [3, 3, 3, 3]),  # no stride to fold
    (7, 2, [3, 2, 3, 2]),  # uneven padding
])
def test_other_convs_keep_their_stride_and_only_get_the_channel(kernel, stride, pads):
    model = _strided_model(kernel, stride, pads, 12, 14)
    padded = _strided_model(kernel, stride, pads, 12, 14)
    assert pad_input_channels(padded) == 1
    assert "SpaceToDepth" not in [n.op_type for n in padded.graph.node]
    conv = next(n for n in padded.graph.node if n.op_type == "Conv")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute}["strides"] == [
        stride, stride]
    images = np.random.default_rng(6).normal(0, 1.5, (1, 3, 12, 14)).astype(np.float32)
    np.testing.assert_array_equal(_run(model, images)[0], _run(padded, images)[0])


def test_a_conv_onnx_runtime_keeps_in_float_is_not_folded():
    model = _strided_model(7, 2, [3] * 4, 16, 16, relu_zero=10)
    before = model.SerializeToString()
    assert pad_input_channels(model) == 0
    assert model.SerializeToString() == before
