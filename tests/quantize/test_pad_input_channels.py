"""``quantize.pad_input_channels``: the quantized input padded to 4 channels in front of the
first convs, outputs bit for bit those of the unpadded graph; anything else left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantize.pad_input_channels import pad_input_channels

SIZE = 9


def _qdq_model(*, conv_b_group: int = 1, share_weight: bool = False, channels: int = 3,
               dequantized_also_to_relu: bool = False, dynamic: bool = False,
               quantized_pool: bool = False) -> onnx.ModelProto:
    """``images (1, C, 9, 9)`` -> Q -> two DQ copies -> conv A (5 out, 3x3, int8 per channel)
    and conv B (int8 per tensor with zero point 3); the float input also max-pooled (as
    DAIPNet's pyramid pools it), with ``quantized_pool`` the pooled image quantized for a
    conv of its own (conv P, as DAIPNet's pyramid levels)."""
    rng = np.random.default_rng(0)
    weight_a = rng.integers(-127, 128, (5, channels, 3, 3)).astype(np.int8)
    b_in = channels // conv_b_group
    weight_b = rng.integers(-60, 60, (6 if conv_b_group == 1 else channels, b_in, 1, 1)
                            ).astype(np.int8)
    initializers = [
        numpy_helper.from_array(np.float32(0.03), "x_scale"),
        numpy_helper.from_array(np.uint8(120), "x_zero"),
        numpy_helper.from_array(weight_a, "w_a"),
        numpy_helper.from_array(rng.uniform(0.001, 0.01, 5).astype(np.float32), "w_a_scale"),
        numpy_helper.from_array(np.zeros(5, np.int8), "w_a_zero"),
        numpy_helper.from_array(weight_b, "w_b"),
        numpy_helper.from_array(np.float32(0.004), "w_b_scale"),
        numpy_helper.from_array(np.int8(3), "w_b_zero"),
        numpy_helper.from_array(np.float32(0.05), "y_scale"),
        numpy_helper.from_array(np.uint8(10), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zero"], ["x_q"], name="q_in"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_a"], name="dq_a"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_b"], name="dq_b"),
        helper.make_node("DequantizeLinear", ["w_a", "w_a_scale", "w_a_zero"], ["w_a_f"],
                         axis=0, name="dq_w_a"),
        helper.make_node("DequantizeLinear", ["w_b", "w_b_scale", "w_b_zero"], ["w_b_f"],
                         name="dq_w_b"),
        helper.make_node("Conv", ["x_a", "w_a_f"], ["y_a"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], name="conv_a"),
        helper.make_node("Conv", ["x_b", "w_b_f"], ["y_b"], kernel_shape=[1, 1],
                         group=conv_b_group, name="conv_b"),
        helper.make_node("Relu", ["y_a"], ["r_a"]),
        helper.make_node("QuantizeLinear", ["r_a", "y_scale", "y_zero"], ["r_a_q"]),
        helper.make_node("DequantizeLinear", ["r_a_q", "y_scale", "y_zero"], ["out_a"]),
        helper.make_node("MaxPool", ["images"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    outputs = ["out_a", "y_b", "pooled"]
    if quantized_pool:
        initializers += [numpy_helper.from_array(rng.integers(-127, 128, (4, channels, 3, 3))
                                                 .astype(np.int8), "w_p"),
                         numpy_helper.from_array(np.float32(0.01), "w_p_scale"),
                         numpy_helper.from_array(np.float32(0.04), "p_scale"),
                         numpy_helper.from_array(np.uint8(100), "p_zero")]
        nodes += [
            helper.make_node("QuantizeLinear", ["pooled", "p_scale", "p_zero"], ["p_q"],
                             name="q_pool"),
            helper.make_node("DequantizeLinear", ["p_q", "p_scale", "p_zero"], ["p_f"]),
            helper.make_node("DequantizeLinear", ["w_p", "w_p_scale"], ["w_p_f"]),
            helper.make_node("Conv", ["p_f", "w_p_f"], ["y_p"], kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1], name="conv_p")]
        outputs.append("y_p")
    if share_weight:  # a third conv, on another tensor, reads conv A's weights
        nodes.append(helper.make_node("Conv", ["pooled", "w_a_f"], ["y_c"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], name="conv_c"))
        outputs.append("y_c")
    if dequantized_also_to_relu:
        nodes.append(helper.make_node("Relu", ["x_a"], ["x_a_relu"]))
        outputs.append("x_a_relu")
    dims: list[int | str] = [1, "channels" if dynamic else channels, SIZE, SIZE]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", "c", "h", "w"])
         for name in outputs],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, images: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def test_padded_model_gives_the_same_bits():
    model = _qdq_model()
    padded = _qdq_model()
    assert pad_input_channels(padded) == 2
    onnx.checker.check_model(padded)
    rng = np.random.default_rng(1)
    for _ in range(5):
        images = rng.normal(0, 1.5, (1, 3, SIZE, SIZE)).astype(np.float32)
        before, after = _run(model, images), _run(padded, images)
        for old, new in zip(before, after, strict=True):
            np.testing.assert_array_equal(old, new)


def test_a_quantized_pooled_image_is_padded_too_with_the_same_bits():
    model = _qdq_model(quantized_pool=True)
    padded = _qdq_model(quantized_pool=True)
    assert pad_input_channels(padded) == 3
    weights = {t.name: numpy_helper.to_array(t) for t in padded.graph.initializer}
    assert weights["w_p"].shape == (4, 4, 3, 3) and not weights["w_p"][:, 3].any()
    pads = [list(n.input) for n in padded.graph.node if n.op_type == "Pad"]
    assert ["p_q", "p_q/channel_pads", "p_q/channel_fill"] in pads
    images = np.random.default_rng(2).normal(0, 1.5, (1, 3, SIZE, SIZE)).astype(np.float32)
    for old, new in zip(_run(model, images), _run(padded, images), strict=True):
        np.testing.assert_array_equal(old, new)


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
    assert readers[next(n.name for n in padded.graph.node if n.op_type == "MaxPool")] == [
        "images"]  # the float input's other reader stays on 3 channels


@pytest.mark.parametrize("variant", [
    {"conv_b_group": 3},  # depthwise over the 3 channels: no padding to give it
    {"share_weight": True},  # conv A's weights are also another conv's
    {"dequantized_also_to_relu": True},  # the dequantized input feeds a non-conv
    {"channels": 4},  # already a multiple of 4
    {"dynamic": True},  # channel count unknown
])
def test_patterns_it_cannot_rewrite_exactly_are_left_alone(variant):
    model = _qdq_model(**variant)
    before = model.SerializeToString()
    assert pad_input_channels(model) == 0
    assert model.SerializeToString() == before


def test_an_input_quantized_per_channel_is_left_alone():
    model = _qdq_model()
    for tensor in model.graph.initializer:
        if tensor.name in ("x_scale", "x_zero"):
            values = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.full(3, values, values.dtype), tensor.name))
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] == "x_scale":
            node.attribute.append(helper.make_attribute("axis", 1))
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
