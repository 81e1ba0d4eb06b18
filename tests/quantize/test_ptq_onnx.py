"""INT8 QDQ ONNX from ``quantize.ptq_onnx``: quantized where it should be, float where kept out,
and close to the fp32 model on calibration-like inputs."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgedet.cpu_features import int8_sums_can_clip
from quantize import ptq_onnx
from quantize.calibration import CALIBRATION_SEED, EVAL_SEED
from quantize.int8_scope import find_kept_out_nodes, flatten
from quantize.ptq_onnx import (
    ONNXRUNTIME_CPU,
    TENSORRT,
    activation_bytes_per_image,
    calibration_chunking,
    quantize_onnx,
    quantized_tensor_names,
)
from tests.quantize.ptq_helpers import cosine, synthetic_inputs

# What a conversion on this CPU should build: where ONNX Runtime's INT8 kernels add pairs of
# products in 16 bits (x86 without VNNI), 8-bit weights can clip and make two exact graphs
# differ (seen on an AVX2 EPYC), so the tests that compare outputs use 7-bit weights there.
SCHEME_HERE = replace(ONNXRUNTIME_CPU, weight_bits=7 if int8_sums_can_clip() else 8)


@pytest.fixture(scope="module")
def passd_int8(exported, tmp_path_factory):
    _, input_size, fp32_path = exported("passd_mobilenet")
    kept = find_kept_out_nodes(onnx.load(str(fp32_path)))
    out = tmp_path_factory.mktemp("ptq") / "passd_int8.onnx"
    quantize_onnx(fp32_path, out, synthetic_inputs(input_size, 8, CALIBRATION_SEED),
                  flatten(kept))
    return fp32_path, out, kept, input_size


def test_qdq_nodes_present_and_kept_out_nodes_stay_float(passd_int8):
    _, int8_path, kept, _ = passd_int8
    model = onnx.load(str(int8_path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    quantized = quantized_tensor_names(model)
    outputs_of = {n.name: set(n.output) for n in model.graph.node}
    assert any("/backbone/" in name for name in quantized)
    # Nothing the sampling math, Gathers and tap sums of the P&A head compute is INT8.
    sampling = set(kept["sampling"])
    assert {n for n in sampling if "Gather" in n}
    assert not quantized & set().union(*(outputs_of[n] for n in sampling))
    # The 1x1 projection of the attend stage (the conv it replaces) is quantized.
    assert any(name.endswith("/MatMul_output_0") and "/attend" in name for name in quantized)
    graph_outputs = {o.name for o in model.graph.output}
    assert not quantized & graph_outputs


def test_int8_outputs_close_to_fp32_on_unseen_images(passd_int8):
    fp32_path, int8_path, _, input_size = passd_int8
    fp32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    for images in synthetic_inputs(input_size, 2, EVAL_SEED):
        names = [o.name for o in fp32.get_outputs()]
        for name, a, b in zip(names, fp32.run(None, {"images": images}),
                              int8.run(None, {"images": images}), strict=True):
            assert cosine(a, b) > 0.99, name


def test_onnxruntime_int8_pads_the_input_to_4_channels_with_the_same_outputs(passd_int8,
                                                                            tmp_path):
    fp32_path, int8_path, kept, input_size = passd_int8
    model = onnx.load(str(int8_path))
    weights = {t.name: t for t in model.graph.initializer}
    first = next(n for n in model.graph.node if n.op_type == "Pad")
    assert first.input[0] == "images_QuantizeLinear_Output"
    convs = [n for n in model.graph.node if n.op_type == "Conv"
             and any(i.startswith("images_DequantizeLinear") for i in n.input)]
    weight_dq = {n.output[0]: n.input[0] for n in model.graph.node
                 if n.op_type == "DequantizeLinear"}
    assert convs and all(tuple(weights[weight_dq[c.input[1]]].dims)[1] == 4 for c in convs)
    calibration = synthetic_inputs(input_size, 8, CALIBRATION_SEED)
    if SCHEME_HERE.weight_bits != ONNXRUNTIME_CPU.weight_bits:
        int8_path = quantize_onnx(fp32_path, tmp_path / "padded.onnx", calibration,
                                  flatten(kept), scheme=SCHEME_HERE)
    unpadded = quantize_onnx(fp32_path, tmp_path / "unpadded.onnx", calibration, flatten(kept),
                             scheme=replace(SCHEME_HERE, input_channel_multiple=0))
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (int8_path, unpadded)]
    for images in synthetic_inputs(input_size, 2, EVAL_SEED):
        padded_out, plain_out = (s.run(None, {"images": images}) for s in sessions)
        for a, b in zip(padded_out, plain_out, strict=True):
            np.testing.assert_array_equal(a, b)


def test_rejects_unknown_excluded_node_and_empty_calibration(exported, tmp_path):
    _, input_size, fp32_path = exported("passd_mobilenet")
    images = synthetic_inputs(input_size, 1, CALIBRATION_SEED)
    with pytest.raises(ValueError, match="not in the graph"):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", images, ["/no/such/node"])
    with pytest.raises(ValueError, match="at least one image"):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", [], [])


def test_quantizer_advice_is_silenced_but_other_warnings_pass(exported, tmp_path, caplog):
    _, input_size, fp32_path = exported("passd_mobilenet")
    images = synthetic_inputs(input_size, 1, CALIBRATION_SEED)
    with caplog.at_level(logging.WARNING):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", images, [])
        logging.getLogger().warning("an unrelated warning")
    messages = [record.getMessage() for record in caplog.records]
    assert not any("pre-processing" in m for m in messages), messages
    assert "an unrelated warning" in messages


def _tiny_conv_model(path) -> None:
    """(1, 3, 32, 32) -> Conv 3->8 -> Relu -> Conv 8->4: 32768 + 32768 + 16384 float bytes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), name)
               for name, s in (("w1", (8, 3, 3, 3)), ("w2", (4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["images", "w1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["out"], name="conv2")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _activation_scales(path) -> dict[str, float]:
    model = onnx.load(str(path))
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: float(consts[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and consts[n.input[1]].ndim == 0}


def test_activation_bytes_per_image_counts_every_float_tensor(tmp_path):
    _tiny_conv_model(tmp_path / "tiny.onnx")
    assert activation_bytes_per_image(onnx.load(str(tmp_path / "tiny.onnx"))) == 81920


@pytest.mark.parametrize(("budget", "expected"), [
    (1200, {}),  # 12 x 100 fits
    (500, {"CalibStridedMinMax": 4}),  # 5 fit; 4 divides 12
    (50, {"CalibStridedMinMax": 1}),  # not even one image fits
])
def test_calibration_chunking_picks_the_largest_dividing_chunk_that_fits(budget, expected):
    assert calibration_chunking(100, 12, budget_bytes=budget) == expected


@pytest.mark.parametrize("scheme", [ONNXRUNTIME_CPU, TENSORRT], ids=["minmax", "percentile"])
def test_chunked_calibration_matches_one_pass(tmp_path, monkeypatch, caplog, scheme):
    """MinMax in chunks gives the one-pass ranges exactly; the percentile histogram in chunks
    (bins set by the first chunk) stays within a few percent of them."""
    _tiny_conv_model(tmp_path / "tiny.onnx")
    images = synthetic_inputs((32, 32), 6, CALIBRATION_SEED)
    one_pass = quantize_onnx(tmp_path / "tiny.onnx", tmp_path / "one.onnx", images, scheme=scheme)
    monkeypatch.setattr(ptq_onnx, "CALIBRATION_ACTIVATION_BUDGET_BYTES", 2 * 81920)
    with caplog.at_level(logging.INFO, logger="quantize.ptq_onnx"):
        chunked = quantize_onnx(tmp_path / "tiny.onnx", tmp_path / "chunked.onnx", images,
                                scheme=scheme)
    assert "chunks of 2 images" in caplog.text
    expected, got = _activation_scales(one_pass), _activation_scales(chunked)
    assert expected.keys() == got.keys() and expected
    for name, scale in expected.items():
        if scheme is ONNXRUNTIME_CPU:
            assert got[name] == scale, name
        else:
            assert got[name] == pytest.approx(scale, rel=0.05), name


def test_excluded_input_pools_pool_the_float_input(tmp_path):
    """An image pyramid: images -> MaxPool -> MaxPool -> Conv, and images -> Conv. With the
    pools excluded they read float tensors (no DequantizeLinear before a MaxPool, which ONNX
    Runtime would otherwise fuse into a uint8 pool); the convs stay INT8 and the outputs stay
    close to fp32."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [helper.make_node("Conv", ["images", "w"], ["full"], name="conv_full", pads=[1] * 4),
             helper.make_node("MaxPool", ["images"], ["half"], name="pool0", **pool),
             helper.make_node("MaxPool", ["half"], ["quarter"], name="pool1", **pool),
             helper.make_node("Conv", ["half", "w"], ["c_half"], name="conv_half", pads=[1] * 4),
             helper.make_node("Conv", ["quarter", "w"], ["c_quarter"], name="conv_quarter",
                              pads=[1] * 4)]
    graph = helper.make_graph(
        nodes, "pyramid",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("full", "c_half", "c_quarter")], weights)
    fp32_path = tmp_path / "pyramid.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(fp32_path))
    kept = flatten(find_kept_out_nodes(onnx.load(str(fp32_path)), ["input_pools"]))
    assert kept == ["pool0", "pool1"]
    images = synthetic_inputs((32, 32), 4, CALIBRATION_SEED)
    int8_path = quantize_onnx(fp32_path, tmp_path / "int8.onnx", images, kept,
                              scheme=SCHEME_HERE)
    model = onnx.load(str(int8_path))
    by_output = {o: n for n in model.graph.node for o in n.output}
    pools = {n.name: n for n in model.graph.node if n.op_type == "MaxPool"}
    assert pools["pool0"].input[0] == "images"
    assert pools["pool1"].input[0] == "half"
    assert all(by_output.get(p.input[0]) is None or by_output[p.input[0]].op_type == "MaxPool"
               for p in pools.values())
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3  # each conv's input is still quantized
    fp32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    for x in synthetic_inputs((32, 32), 2, EVAL_SEED):
        for a, b in zip(fp32.run(None, {"images": x}), int8.run(None, {"images": x}),
                        strict=True):
            assert cosine(a, b) > 0.99


def test_a_float_layer_sharing_its_weight_with_int8_layers_reads_the_float_weight(tmp_path):
    """Two convs share one weight (like a RetinaNet head's levels); one is kept in float. The
    quantizer rounds the shared weight once for both; the float conv must get the fp32 model's
    weight and bias back, not the dequantized INT8 ones."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=(4,)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["y_int8"], name="conv_int8",
                              pads=[1] * 4),
             helper.make_node("Conv", ["images", "w", "b"], ["y_float"], name="conv_float",
                              pads=[1] * 4)]
    graph = helper.make_graph(
        nodes, "shared",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y_int8", "y_float")],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    fp32_path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(fp32_path))
    int8_path = quantize_onnx(fp32_path, tmp_path / "int8.onnx",
                              synthetic_inputs((32, 32), 4, CALIBRATION_SEED), ["conv_float"])
    model = onnx.load(str(int8_path))
    nodes_by_name = {n.name: n for n in model.graph.node}
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    float_conv, int8_conv = nodes_by_name["conv_float"], nodes_by_name["conv_int8"]
    np.testing.assert_array_equal(constants[float_conv.input[1]], weight)
    np.testing.assert_array_equal(constants[float_conv.input[2]], bias)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers.get(int8_conv.input[1]) == "DequantizeLinear"  # still INT8
    fp32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    x = synthetic_inputs((32, 32), 1, EVAL_SEED)[0]
    (_, float_out), (_, kept_out) = fp32.run(None, {"images": x}), int8.run(None, {"images": x})
    # The float conv reads the INT8-rounded image (the other conv quantizes it) but computes
    # with the exact weights: far closer than a rounded weight would leave it.
    assert cosine(float_out, kept_out) > 0.9999


@pytest.mark.parametrize("bits", [8, 7])
def test_weight_bits_set_the_range_of_every_int8_weight(passd_int8, tmp_path, bits):
    fp32_path, out, kept, input_size = passd_int8  # built with the default, 8 bits
    if bits != 8:
        out = quantize_onnx(fp32_path, tmp_path / "int8.onnx",
                            synthetic_inputs(input_size, 2, CALIBRATION_SEED), flatten(kept),
                            scheme=replace(ONNXRUNTIME_CPU, weight_bits=bits))
    model = onnx.load(str(out))
    weight_dq = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [arrays[name] for name in weight_dq
               if name in arrays and arrays[name].dtype == np.int8 and arrays[name].ndim == 4]
    assert len(weights) > 10
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    # Symmetric per-channel: each channel's largest weight maps to the end of the range.
    assert largest == (127 if bits == 8 else 64)


def test_weight_bits_other_than_8_or_7_and_7_bits_without_int8_are_refused():
    from quantize.convert import ConvertConfig

    with pytest.raises(ValueError, match="8 or 7 bits"):
        replace(ONNXRUNTIME_CPU, weight_bits=6)
    with pytest.raises(ValueError, match="builds none"):
        ConvertConfig(checkpoint="c", target="cpu", out="o", precisions=("fp32",),
                      int8_weight_bits=7)
    with pytest.raises(ValueError, match="INT8 weights of 8 bits"):
        ConvertConfig(checkpoint="c", target="openvino", out="o", int8_weight_bits=7)
    ConvertConfig(checkpoint="c", target="cpu", out="o", int8_weight_bits=7)  # fp32 + int8
    # The other INT8-only settings, likewise (they were accepted and ignored).
    for changes in ({"float_precision": "bf16"}, {"keep_float": ()},
                    {"calib_data": "coco:/nowhere"}):
        with pytest.raises(ValueError, match="shape INT8 artifacts, and precisions"):
            ConvertConfig(checkpoint="c", target="openvino", out="o", precisions=("fp32",),
                          **changes)
        ConvertConfig(checkpoint="c", target="openvino", out="o", **changes)
