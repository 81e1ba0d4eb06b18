"""The TensorRT QDQ rules checker: each violation kind on a hand-built graph, and the real
detectors quantized in the TensorRT scheme (clean) and in ONNX Runtime's CPU scheme (not)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantize.int8_scope import find_kept_out_nodes, flatten
from quantize.ptq_onnx import ONNXRUNTIME_CPU, TENSORRT, quantize_onnx
from quantize.tensorrt_rules import (
    RULES,
    QdqRulesError,
    Violation,
    check_qdq_graph,
    int8_coverage,
)

OUT_CHANNELS = 3
INT8_ZERO = np.int8(0)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def qdq_conv_graph(*, act_zp: np.generic | None = INT8_ZERO, act_scale: float | list = 0.1,
                   weight_scale: np.ndarray | None = None, weight_axis: int = 0,
                   quantize_activation: bool = True, after: str | None = None,
                   extra_nodes: tuple = (), opset: int = 17) -> onnx.ModelProto:
    """images -> Q -> DQ -> Conv(DQ(int8 weights)) -> [after op] -> out.

    The defaults follow every rule; each keyword breaks one of them.
    """
    weights = np.ones((OUT_CHANNELS, 2, 1, 1), np.int8)
    if weight_scale is None:
        weight_scale = np.full(OUT_CHANNELS, 0.01, np.float32)
    inits = [_init("w_q", weights), _init("w_scale", np.asarray(weight_scale, np.float32)),
             _init("w_zp", np.zeros(np.asarray(weight_scale).shape, np.int8)),
             _init("a_scale", np.asarray(act_scale, np.float32))]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"],
                              name="w_dq", axis=weight_axis)]
    conv_input = "images"
    if quantize_activation:
        zp_inputs = ["a_scale"]
        if act_zp is not None:
            inits.append(_init("a_zp", np.asarray(act_zp)))
            zp_inputs.append("a_zp")
        nodes += [helper.make_node("QuantizeLinear", ["images", *zp_inputs], ["x_q"], name="x_q",
                                   axis=1),
                  helper.make_node("DequantizeLinear", ["x_q", *zp_inputs], ["x_dq"],
                                   name="x_dq", axis=1)]
        conv_input = "x_dq"
    nodes.append(helper.make_node("Conv", [conv_input, "w"], ["conv"], name="conv"))
    last = "conv"
    if after is not None:
        nodes.append(helper.make_node(after, ["conv"], ["after"], name="after"))
        last = "after"
    nodes += list(extra_nodes)
    nodes.append(helper.make_node("Identity", [last], ["out"], name="out_identity"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, OUT_CHANNELS, 4, 4])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def rules_of(violations: list[Violation]) -> set[str]:
    return {v.rule for v in violations}


def test_a_graph_that_follows_the_rules_has_no_violations():
    model = qdq_conv_graph()
    onnx.checker.check_model(model)
    assert check_qdq_graph(model) == []
    assert int8_coverage(model) == (1, 1)


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"act_zp": np.uint8(0)}, "not-int8"),
    ({"act_zp": None}, "not-int8"),                    # no zero-point: ONNX means uint8
    ({"act_zp": np.int8(3)}, "zero-point"),
    ({"act_scale": -0.1}, "scale"),
    ({"act_scale": [0.1, 0.2]}, "per-channel-activation"),
    ({"weight_scale": np.float32(0.01)}, "per-tensor-weight"),
    ({"weight_scale": np.full(2, 0.01, np.float32), "weight_axis": 1}, "weight-axis"),
    ({"quantize_activation": False}, "half-quantized"),
    ({"opset": 18}, "unsupported-op"),                 # TensorRT 8.6 parses opsets <= 17
])
def test_each_rule_is_caught(kwargs, rule):
    violations = check_qdq_graph(qdq_conv_graph(**kwargs))
    assert rule in rules_of(violations), violations
    assert all(v.rule in RULES for v in violations)


def test_a_dq_feeding_an_op_tensorrt_cannot_fuse():
    extra = helper.make_node("Sigmoid", ["x_dq"], ["sig"], name="sigmoid")
    model = qdq_conv_graph(extra_nodes=(extra,))
    assert [(v.rule, v.node) for v in check_qdq_graph(model)] == [("unfused-dq", "x_dq")]


def test_a_dq_read_by_the_float_scope():
    extra = helper.make_node("Softmax", ["x_dq"], ["attention"], name="softmax")
    model = qdq_conv_graph(extra_nodes=(extra,))
    assert "float-scope" in rules_of(check_qdq_graph(model, float_scope={"softmax"}))


def test_a_dq_that_reaches_an_output_without_a_weighted_layer():
    extra = helper.make_node("Reshape", ["x_dq", "shape"], ["flat"], name="reshape")
    model = qdq_conv_graph(extra_nodes=(extra,))
    model.graph.initializer.append(_init("shape", np.array([1, -1], np.int64)))
    model.graph.output.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, None))
    assert [v.rule for v in check_qdq_graph(model)] == ["output-quantized"]


def test_an_int32_bias_dq_is_not_int8():
    model = qdq_conv_graph()
    model.graph.initializer.extend([_init("b_q", np.zeros(OUT_CHANNELS, np.int32)),
                                    _init("b_scale", np.float32(0.001)),
                                    _init("b_zp", np.int32(0))])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"],
                                                ["b"], name="b_dq"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input.append("b")
    assert ("not-int8", "b_dq") in {(v.rule, v.node) for v in check_qdq_graph(model)}


def test_operators_outside_tensorrts_parser():
    model = qdq_conv_graph(after="MatMulInteger")  # parsed by neither version
    found = [v for v in check_qdq_graph(model) if v.rule == "unsupported-op"]
    assert [v.node for v in found] == ["after"] and "8.6, 10.1" in found[0].detail
    deform = qdq_conv_graph(after="DeformConv")     # parsed by 10.x, not by 8.6
    found = [v for v in check_qdq_graph(deform) if v.rule == "unsupported-op"]
    assert len(found) == 1 and found[0].detail.endswith("TensorRT 8.6")
    assert check_qdq_graph(deform, versions=("10.1",)) == []


def test_the_error_lists_every_violation():
    violations = check_qdq_graph(qdq_conv_graph(act_zp=np.uint8(5)))
    error = QdqRulesError("model.onnx", violations)
    assert error.violations == violations
    assert all(str(v) in str(error) for v in violations)


@pytest.fixture(scope="module")
def calibration() -> dict[tuple[int, int], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return {size: [rng.normal(size=(1, 3, size[1], size[0])).astype(np.float32)
                   for _ in range(2)] for size in ((320, 320), (160, 128), (300, 300))}


@pytest.mark.parametrize("name", ["passd_mobilenet", "harnet_resnet18_small",
                                  pytest.param("dsanet_resnet18", marks=pytest.mark.slow),
                                  pytest.param("daipnet_vgg16", marks=pytest.mark.slow)])
def test_detectors_in_the_tensorrt_scheme_follow_the_rules(name, exported, calibration,
                                                           tmp_path):
    _, input_size, fp32_path = exported(name)
    float_scope = flatten(find_kept_out_nodes(onnx.load(str(fp32_path))))
    trt = onnx.load(str(quantize_onnx(fp32_path, tmp_path / "trt.onnx",
                                      calibration[input_size], float_scope, TENSORRT)))
    assert check_qdq_graph(trt, float_scope) == []
    int8_layers, weighted = int8_coverage(trt)
    assert int8_layers == weighted > 0
    # ONNX Runtime's CPU scheme (uint8 activations, quantized outputs, shared Q/DQ pairs) is
    # what TensorRT would reject: the checker must say so.
    cpu = onnx.load(str(quantize_onnx(fp32_path, tmp_path / "cpu.onnx",
                                      calibration[input_size], float_scope, ONNXRUNTIME_CPU)))
    found = Counter(v.rule for v in check_qdq_graph(cpu, float_scope))
    assert found["not-int8"] > 0 and found["unfused-dq"] + found["float-scope"] > 0, found
    assert found["weight-axis"] == 0  # both schemes scale MatMul weights per output column
    # Both run on ONNX Runtime (the accuracy check of every target does).
    for path in (tmp_path / "trt.onnx", tmp_path / "cpu.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: calibration[input_size][0]})
