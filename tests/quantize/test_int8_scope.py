"""``quantize.int8_scope``: the structural rules find the sensitive nodes of each detector."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from quantize.int8_scope import (
    CATEGORIES,
    DEFAULT_KEEP_FLOAT,
    find_kept_out_nodes,
    flatten,
)


def ops_of(model: onnx.ModelProto, names: list[str]) -> set[str]:
    by_name = {n.name: n.op_type for n in model.graph.node}
    return {by_name[name] for name in names}


def test_toy_graph_masks_attention_and_head():
    # x -> Conv(c1) -> Sigmoid -> Mul(x) -> Conv(c2) -> Flatten -> y ;
    # x -> MatMul(x, x^T) -> Softmax
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], [1, 0, 0, 1])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
        helper.make_node("Sigmoid", ["a"], ["m"], name="sig"),
        helper.make_node("Mul", ["x", "m"], ["xm"], name="apply"),
        helper.make_node("Conv", ["xm", "w"], ["y0"], name="c2"),
        helper.make_node("Flatten", ["y0"], ["y"], name="flat"),
        helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["x", "xt"], ["s"], name="qk"),
        helper.make_node("Softmax", ["s"], ["z"], name="soft"),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 2, 2])], [weight])
    kept = find_kept_out_nodes(helper.make_model(graph), list(CATEGORIES))
    assert kept == {"sampling": [], "sampling_reads": [], "attention": ["qk", "soft"],
                    "masks": ["apply", "sig"], "norms": [], "input_pools": [],
                    "head": ["c2", "flat"],  # the head conv and its layout tail
                    "outputs": []}  # the tail, already claimed by "head"
    # Alone, "outputs" is only the layout tail: the head conv stays INT8.
    assert find_kept_out_nodes(helper.make_model(graph), ["outputs"]) == {"outputs": ["flat"]}


@pytest.mark.parametrize("name, category, op_types", [
    ("passd_mobilenet", "sampling", {"Floor", "Tanh", "Exp"}),
    ("passd_mobilenet", "sampling_reads", {"Gather", "MatMul"}),
    ("harnet_resnet18_small", "sampling", {"Floor"}),
    ("harnet_resnet18_small", "sampling_reads", {"Gather", "MatMul"}),
    ("harnet_resnet18_small", "masks", {"Sigmoid", "Mul"}),
    ("dsanet_resnet18", "attention", {"Softmax", "MatMul"}),
    ("harnet_resnet18_small", "norms", {"InstanceNormalization", "Concat", "Slice"}),
    ("daipnet_vgg16", "input_pools", {"MaxPool"}),
])
def test_detectors_keep_their_sensitive_ops(exported, name, category, op_types):
    model = onnx.load(str(exported(name)[2]))
    kept = find_kept_out_nodes(model, tuple(dict.fromkeys((*DEFAULT_KEEP_FLOAT, category))))
    assert op_types <= ops_of(model, kept[category])
    # No weight layer is kept out by these categories: the convs are what INT8 speeds up.
    weight_layers = {n.name for n in model.graph.node if n.op_type == "Conv"}
    assert not weight_layers & set(flatten(kept))


def test_norms_are_the_joined_levels_their_normalisation_and_affine():
    # Two levels: conv -> Reshape -> Concat -> Reshape -> InstanceNormalization -> Reshape ->
    # Mul(gamma) -> Add(beta) -> Split -> Reshape -> Relu -> conv. Everything between the
    # convs but the activation is "norms".
    def const(name, dims, values, dtype=TensorProto.FLOAT):
        return helper.make_tensor(name, dtype, dims, values)

    initializers = [
        const("w", [2, 2, 1, 1], [1, 0, 0, 1]), const("gamma", [1, 2, 1], [2, 3]),
        const("beta", [1, 2, 1], [1, 1]), const("one", [1], [1.0]), const("zero", [1], [0.0]),
        const("flat", [3], [1, 2, -1], TensorProto.INT64),
        const("groups", [3], [1, 1, -1], TensorProto.INT64),
        const("back", [3], [1, 2, -1], TensorProto.INT64),
        const("lengths", [2], [4, 1], TensorProto.INT64),
        const("s0", [4], [1, 2, 2, 2], TensorProto.INT64),
        const("s1", [4], [1, 2, 1, 1], TensorProto.INT64),
    ]
    nodes = [
        helper.make_node("Conv", ["x0", "w"], ["c0"], name="conv0"),
        helper.make_node("Conv", ["x1", "w"], ["c1"], name="conv1"),
        helper.make_node("Reshape", ["c0", "flat"], ["f0"], name="flat0"),
        helper.make_node("Reshape", ["c1", "flat"], ["f1"], name="flat1"),
        helper.make_node("Concat", ["f0", "f1"], ["joined"], name="join", axis=2),
        helper.make_node("Reshape", ["joined", "groups"], ["g"], name="to_groups"),
        helper.make_node("InstanceNormalization", ["g", "one", "zero"], ["n"], name="norm"),
        helper.make_node("Reshape", ["n", "back"], ["nb"], name="to_channels"),
        helper.make_node("Mul", ["nb", "gamma"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "beta"], ["shifted"], name="shift"),
        helper.make_node("Split", ["shifted", "lengths"], ["p0", "p1"], name="split", axis=2),
        helper.make_node("Reshape", ["p0", "s0"], ["l0"], name="level0"),
        helper.make_node("Reshape", ["p1", "s1"], ["l1"], name="level1"),
        helper.make_node("Relu", ["l0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w"], ["y0"], name="next0"),
        helper.make_node("Relu", ["l1"], ["y1"], name="relu1"),
    ]
    graph = helper.make_graph(
        nodes, "clgn",
        [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 2, 2, 2]),
         helper.make_tensor_value_info("x1", TensorProto.FLOAT, [1, 2, 1, 1])],
        [helper.make_tensor_value_info("y0", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y1", TensorProto.FLOAT, None)], initializers)
    kept = find_kept_out_nodes(helper.make_model(graph), ["norms"])
    assert kept == {"norms": ["flat0", "flat1", "join", "level0", "level1", "norm", "scale",
                              "shift", "split", "to_channels", "to_groups"]}


@pytest.mark.parametrize("name", ["passd_mobilenet", "dsanet_resnet18", "daipnet_vgg16"])
def test_only_harnet_has_run_time_norms(exported, name):
    # BatchNorm is folded into the convs at export; CLGN is the only normalisation left.
    assert find_kept_out_nodes(onnx.load(str(exported(name)[2])), ["norms"]) == {"norms": []}


def test_input_pools_are_the_max_pools_of_the_input_alone():
    # x -> MaxPool -> Reshape -> MaxPool -> Conv -> MaxPool ; x -> Conv. Only the two pools
    # that see nothing but the input (through pools and layout ops) are "input_pools".
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 1, 1], [1.0] * 9)
    shape = helper.make_tensor("s", TensorProto.INT64, [4], [1, 3, 4, 4])
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p0"], name="pool0", **pool),
        helper.make_node("Reshape", ["p0", "s"], ["p0r"], name="same_shape"),
        helper.make_node("MaxPool", ["p0r"], ["p1"], name="pool1", **pool),
        helper.make_node("Conv", ["p1", "w"], ["c"], name="conv"),
        helper.make_node("MaxPool", ["c"], ["y"], name="pool_of_a_conv", **pool),
        helper.make_node("Conv", ["x", "w"], ["z"], name="stem"),
    ]
    graph = helper.make_graph(
        nodes, "pyramid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [weight, shape])
    kept = find_kept_out_nodes(helper.make_model(graph), ["input_pools"])
    assert kept == {"input_pools": ["pool0", "pool1"]}


def test_unknown_category():
    with pytest.raises(ValueError, match="unknown keep-float"):
        find_kept_out_nodes(onnx.ModelProto(), ["everything"])


def test_grid_sample_sampler_keeps_its_sampling_in_float(tmp_path):
    from edgedet.models.passd import passd_mobilenet
    from quantize.export_onnx import export_onnx
    from quantize.rewrites import rewrite_for_export

    model = rewrite_for_export(passd_mobilenet(num_classes=3, width_mult=0.25, fpn_channels=32),
                               sampler="grid_sample")
    model = onnx.load(str(export_onnx(model, tmp_path / "m.onnx", (320, 320))))
    kept = find_kept_out_nodes(model)
    assert {"Tanh", "Exp"} <= ops_of(model, kept["sampling"])
    assert "GridSample" in ops_of(model, kept["sampling_reads"])
    # The projection (now a 1x1 Conv) is still INT8's: no weight layer is kept out.
    weight_layers = {n.name for n in model.graph.node if n.op_type == "Conv"}
    assert not weight_layers & set(flatten(kept))


def test_sampling_reads_are_the_table_the_read_and_the_tap_sum():
    # table = x @ P (the projection); rows = Floor(pts) -> Cast; samples = Gather(table, rows);
    # out = MatMul(bilinear weights, samples) + bias. The reads are the table's layout op, the
    # Gather, the layout op after it and the tap sum; the coordinate math is "sampling".
    projection = helper.make_tensor("P", TensorProto.FLOAT, [2, 6], [0.5] * 12)
    bias = helper.make_tensor("b", TensorProto.FLOAT, [3], [0.0] * 3)
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [-1, 3])
    nodes = [
        helper.make_node("MatMul", ["x", "P"], ["proj"], name="projection"),
        helper.make_node("Reshape", ["proj", "s"], ["table"], name="table_rows"),
        helper.make_node("Floor", ["pts"], ["fl"], name="floor"),
        helper.make_node("Cast", ["fl"], ["rows"], name="rows", to=TensorProto.INT64),
        helper.make_node("Sub", ["pts", "fl"], ["w"], name="weights"),
        helper.make_node("Gather", ["table", "rows"], ["g"], name="read"),
        helper.make_node("Unsqueeze", ["g", "ax"], ["g4"], name="samples"),
        helper.make_node("MatMul", ["w", "g4"], ["tap"], name="tap_sum"),
        helper.make_node("Add", ["tap", "b"], ["y"], name="bias"),
    ]
    axis = helper.make_tensor("ax", TensorProto.INT64, [1], [0])
    graph = helper.make_graph(
        nodes, "reads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2]),
         helper.make_tensor_value_info("pts", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [projection, bias, shape, axis])
    kept = find_kept_out_nodes(helper.make_model(graph), ["sampling", "sampling_reads"])
    assert kept["sampling_reads"] == ["read", "samples", "table_rows", "tap_sum"]
    assert kept["sampling"] == ["bias", "floor", "rows", "weights"]


def test_openvino_lets_the_sampling_reads_into_int8_and_the_others_keep_them():
    from quantize.targets import target_named

    assert "sampling_reads" not in target_named("openvino").default_keep_float
    assert "sampling" in target_named("openvino").default_keep_float
    for name in ("cpu", "tflite", "jetson"):
        assert {"sampling", "sampling_reads"} <= set(target_named(name).default_keep_float)
    # The cross-level group norm stays float where that was measured faster (ONNX Runtime).
    assert {"norms", "input_pools"} <= set(target_named("cpu").default_keep_float)
    assert not {"norms", "input_pools"} & set(target_named("openvino").default_keep_float)
