"""``quantize.attend_tail`` and the cpu target's PASSD that leaves its tap sum to the SDK: the
export ends at tables (the SDK computes the points), the SDK's sum equals the in-graph forms,
the INT8 model's uint8 tables are its own QDQ values, and what the sampling points come from
stays out of INT8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgedet.attend_tail import AttendTail, AttendTailSpec
from quantize.attend_tail import (
    expose_uint8_tables,
    tables_as_matmul,
    tail_head,
    tail_spec,
    write_tables_as_matmul,
)
from quantize.export_onnx import export_onnx
from quantize.int8_scope import find_kept_out_nodes
from quantize.rewrites import rewrite_for_export
from tests.quantize.conftest import small_passd

SIZE = (128, 96)  # not square: levels' H and W apart


@pytest.fixture(scope="module")
def models():
    model = small_passd()
    tail = rewrite_for_export(model, "grid_sample", attend_tail=True)
    in_graph = rewrite_for_export(model, "grid_sample")
    images = torch.randn(1, 3, SIZE[1], SIZE[0], generator=torch.Generator().manual_seed(0))
    return model, tail, in_graph, images


def _spec(tail_model, quantization=None) -> AttendTailSpec:
    spec = tail_spec(tail_model, tail_model.anchor_spec(SIZE).feature_sizes, quantization)
    assert spec is not None
    return spec


def test_the_sdk_sum_equals_the_in_graph_head_outputs(models) -> None:
    model, tail_model, in_graph, images = models
    with torch.no_grad():
        raw = dict(zip(tail_model.export_output_names, tail_model.forward_export(images),
                       strict=True))
        expected = dict(zip(in_graph.export_output_names, in_graph.forward_export(images),
                            strict=True))
    # The points are the SDK's (from propose_deltas), no output of the graph.
    assert "cls_logits" not in raw and "attend_table_0" in raw
    assert not any(name.startswith("attend_points_") for name in raw)
    spec = _spec(tail_model)
    # A round trip through the manifest's JSON, as the SDK reads it.
    anchors = tail_model.anchor_spec(SIZE)
    spec = AttendTailSpec.from_section(spec.to_dict(), anchors.feature_sizes)
    for threads in (1, 3):
        finished = AttendTail(spec, threads, anchors.generate())(
            {k: v.numpy() for k, v in raw.items()})
        assert set(finished) == set(model.export_output_names)
        for name in model.export_output_names:
            np.testing.assert_allclose(finished[name], expected[name].numpy(), rtol=0,
                                       atol=2e-5 * float(expected[name].abs().max()))


def test_the_spec_carries_the_attend_convs_bias_and_split(models) -> None:
    model, tail_model, _, _ = models
    spec = _spec(tail_model)
    head = model.head
    assert spec.outputs == (("cls_logits", head.attend_cls.out_channels_per_anchor),
                            ("box_deltas", 4))
    anchors = head.num_anchors
    np.testing.assert_array_equal(spec.bias, torch.cat(
        [head.attend_cls.bias.reshape(anchors, -1), head.attend_box.bias.reshape(anchors, -1)],
        dim=1).detach().numpy())
    assert [(lv.height, lv.width) for lv in spec.levels] == [
        tuple(s) for s in model.anchor_spec(SIZE).feature_sizes]
    assert tail_head(rewrite_for_export(model, "grid_sample")) is None
    assert tail_spec(rewrite_for_export(model, "gather"), [(1, 1)]) is None


def test_what_the_points_come_from_stays_float_and_the_table_does_not(models, tmp_path
                                                                      ) -> None:
    # The SDK computes the points from propose_deltas: the propose stage's clip, which makes
    # them, is the points' math (an INT8 step of a delta would move every sample).
    _, tail_model, _, _ = models
    path = export_onnx(tail_model, tmp_path / "tail.onnx", SIZE)
    graph = onnx.load(str(path))
    sampling = set(find_kept_out_nodes(graph, ("sampling",))["sampling"])
    producer = {t: n for n in graph.graph.node for t in n.output}
    tables = [producer[o.name] for o in graph.graph.output if o.name.startswith("attend_table_")]
    assert not any(o.name.startswith("attend_points_") for o in graph.graph.output)
    assert producer["propose_deltas"].name in sampling
    assert any(n.op_type == "Tanh" for n in graph.graph.node
               if n.name in sampling)  # the clip of Eq. 2
    assert not {n.name for n in tables} & sampling  # the tables go to INT8 with their conv


def test_each_table_is_written_by_its_transpose_not_copied_by_a_reshape(models, tmp_path
                                                                       ) -> None:
    # ONNX Runtime copies a graph output made by a Reshape (2.1 ms of the paper-width fp32
    # model): the table leaves the graph as the Transpose of its conv, (N, H, W, A*T*O).
    _, tail_model, _, _ = models
    graph = onnx.load(str(export_onnx(tail_model, tmp_path / "tail.onnx", SIZE))).graph
    producer = {t: n for n in graph.node for t in n.output}
    spec = _spec(tail_model)
    columns = spec.anchors * spec.taps * spec.bias.shape[1]
    tables = [o for o in graph.output if o.name.startswith("attend_table_")]
    assert len(tables) == len(spec.levels) == 4
    for output, level in zip(tables, spec.levels, strict=True):
        assert producer[output.name].op_type == "Transpose"
        assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [
            1, level.height, level.width, columns]


def test_uint8_tables_are_the_qdq_models_own_values(models, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from quantize.ptq_onnx import quantize_onnx

    _, tail_model, _, images = models
    fp32 = export_onnx(tail_model, tmp_path / "tail.onnx", SIZE)
    keep = find_kept_out_nodes(onnx.load(str(fp32)), ("sampling",))["sampling"]
    calibration = [np.random.default_rng(i).normal(0, 1, (1, 3, SIZE[1], SIZE[0]))
                   .astype(np.float32) for i in range(3)]
    qdq = quantize_onnx(fp32, tmp_path / "qdq.onnx", calibration, keep)
    found = expose_uint8_tables(qdq, tmp_path / "exposed.onnx")
    assert sorted(found) == [f"attend_table_{i}" for i in range(4)]
    feed = {"images": images.numpy()}
    names = [o.name for o in onnx.load(str(qdq)).graph.output]
    before = dict(zip(names, ort.InferenceSession(str(qdq)).run(names, feed), strict=True))
    after = dict(zip(names, ort.InferenceSession(str(tmp_path / "exposed.onnx"))
                     .run(names, feed), strict=True))
    for name, (scale, zero) in found.items():
        assert after[name].dtype == np.uint8
        np.testing.assert_allclose((after[name].astype(np.float32) - zero) * scale,
                                   before[name], rtol=0, atol=1e-6 * scale)
    for name in names:
        if name not in found:
            np.testing.assert_array_equal(after[name], before[name])
    # The SDK's sum of the uint8 tables: that of the dequantized ones.
    spec = _spec(tail_model, found)
    float_spec = _spec(tail_model)
    priors = tail_model.anchor_spec(SIZE).generate()
    ours = AttendTail(spec, 2, priors)(after)
    theirs = AttendTail(float_spec, 2, priors)(before)
    for name in ("cls_logits", "box_deltas"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0,
                                   atol=1e-5 * float(np.abs(theirs[name]).max()))


def test_a_table_that_is_not_per_tensor_uint8_is_refused(tmp_path) -> None:
    from onnx import TensorProto, helper

    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["attend_table_0"], name="dq")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("q", TensorProto.INT8, [1, 4])],
        [helper.make_tensor_value_info("attend_table_0", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("z", TensorProto.INT8, [], [0])])
    path = tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ValueError, match="per-tensor uint8"):
        expose_uint8_tables(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_float_tables_as_matmul_give_the_same_tables(models, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    _, tail_model, _, images = models
    path = export_onnx(tail_model, tmp_path / "tail.onnx", SIZE)
    model = onnx.load(str(path))
    tables = [o.name for o in model.graph.output if o.name.startswith("attend_table_")]
    weights_before = {t.name for t in model.graph.initializer}
    assert tables_as_matmul(model, tables) == 4
    producer = {t: n for n in model.graph.node for t in n.output}
    for name in tables:
        assert producer[name].op_type == "MatMul"
        assert producer[producer[name].input[0]].op_type == "Transpose"
    # The projection's conv weight is gone, its (C, O) matrix stored once for the 4 levels.
    added = {t.name for t in model.graph.initializer} - weights_before
    assert len(added) == 1 and len(weights_before - {t.name for t in model.graph.initializer}) == 1
    written = write_tables_as_matmul(path, tmp_path / "matmul.onnx")
    assert written == tmp_path / "matmul.onnx"
    feed = {"images": images.numpy()}
    names = [o.name for o in model.graph.output]
    before = ort.InferenceSession(str(path)).run(names, feed)
    after = ort.InferenceSession(str(written)).run(names, feed)
    for name, old, new in zip(names, before, after, strict=True):
        assert old.shape == new.shape, name
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-5 * float(np.abs(old).max()))
    # Nothing left to rewrite: the same file back, nothing written.
    assert write_tables_as_matmul(written, tmp_path / "again.onnx") == written
    assert not (tmp_path / "again.onnx").exists()


@pytest.mark.parametrize("change", ["bias", "3x3", "stride", "perm", "group", "pads",
                                    "dilations", "second_reader", "graph_output",
                                    "weight_input"])
def test_a_table_from_another_conv_is_left_as_it_is(change: str) -> None:
    from onnx import TensorProto, helper, numpy_helper

    kernel = 3 if change == "3x3" else 1
    groups = 2 if change == "group" else 1
    weight = np.ones((4, 2 // groups, kernel, kernel), np.float32)
    conv_inputs = ["x", "w", "b"] if change == "bias" else ["x", "w"]
    conv = helper.make_node("Conv", conv_inputs, ["c"], name="conv", group=groups,
                            strides=[2, 2] if change == "stride" else [1, 1],
                            pads=[1, 1, 1, 1] if change == "pads" else [0, 0, 0, 0],
                            dilations=[2, 2] if change == "dilations" else [1, 1])
    perm = [0, 3, 2, 1] if change == "perm" else [0, 2, 3, 1]
    nodes = [conv, helper.make_node("Transpose", ["c"], ["attend_table_0"], perm=perm)]
    outputs = [helper.make_tensor_value_info("attend_table_0", TensorProto.FLOAT, None)]
    if change == "second_reader":  # the conv's output is read by another node too
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    if change == "graph_output":
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])]
    if change == "weight_input":  # an initializer that a feed may replace
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, weight.shape))
    graph = helper.make_graph(
        nodes, "g", inputs, outputs,
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.ones(4, np.float32),
                                                                        "b")])
    model = helper.make_model(graph)
    before = model.SerializeToString()
    assert tables_as_matmul(model, ["attend_table_0"]) == 0
    assert model.SerializeToString() == before


def test_the_cpu_targets_fp32_build_takes_the_matmul_tables(models, tmp_path) -> None:
    from quantize.targets import BuildRequest, target_named

    _, tail_model, _, _ = models
    path = export_onnx(tail_model, tmp_path / "tail.onnx", SIZE)
    built = target_named("cpu").build(BuildRequest("fp32", path, tail_model, SIZE, tmp_path,
                                                   None, ()))
    graph = onnx.load(str(built.files["model.onnx"])).graph
    producer = {t: n for n in graph.node for t in n.output}
    assert {producer[o.name].op_type for o in graph.output
            if o.name.startswith("attend_table_")} == {"MatMul"}
    assert built.manifest_extra["attend_tail"] == _spec(tail_model).to_dict()
