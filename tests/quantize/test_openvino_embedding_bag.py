"""``quantize.openvino_embedding_bag``: each Gather read + tap sum as one
``EmbeddingBagPackedSum``, where it applies only, with the outputs it replaces; and the
openvino target's builds that take it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino")
from openvino import opset15 as ops  # noqa: E402

from quantize.export_openvino import export_openvino  # noqa: E402
from quantize.openvino_embedding_bag import tap_sums_as_embedding_bags  # noqa: E402

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _op_types(model) -> list[str]:
    return [op.get_type_name() for op in model.get_ordered_ops()]


def _gather_sum(weight_shape: list[int], *, axis: int = 0, transpose_b: bool = False,
                second_reader: bool = False, rows_shape: list[int] | None = None):
    """``MatMul(weights (weight_shape), Gather(table (10, 3), rows))`` as an ov.Model with
    parameters table, rows, weights; rows shaped as the weights without their next-to-last
    axis (a row sum's indices) unless ``rows_shape`` says otherwise."""
    table = ops.parameter([10, 3], np.float32, name="table")
    bag_shape = rows_shape or weight_shape[:-2] + weight_shape[-1:]
    rows = ops.parameter(bag_shape, np.int64, name="rows")
    weights = ops.parameter(weight_shape, np.float32, name="weights")
    gathered = ops.gather(table, rows, ops.constant(np.int64(axis)))
    out = ops.matmul(weights, gathered, False, transpose_b)
    results = [out] + ([ops.relu(gathered)] if second_reader else [])
    return ov.Model(results, [table, rows, weights])


def _through(value) -> str:
    """The op type behind ``value`` past reshapes and quantizers."""
    node = value.get_node()
    while node.get_type_name() in ("Reshape", "FakeQuantize", "Convert"):
        node = node.input_value(0).get_node()
    return node.get_type_name()


def _run(model, feed: dict) -> list[np.ndarray]:
    compiled = ov.Core().compile_model(model, "CPU", F32)
    result = compiled(feed)
    return [np.asarray(result[port]) for port in compiled.outputs]


def test_a_weighted_row_sum_becomes_one_bag_with_the_same_values() -> None:
    model = _gather_sum([2, 3, 1, 4])  # 6 bags of 4 rows
    rng = np.random.default_rng(0)
    feed = {"table": rng.standard_normal((10, 3), dtype=np.float32),
            "rows": rng.integers(0, 10, (2, 3, 4)),
            "weights": rng.random((2, 3, 1, 4), dtype=np.float32)}
    before = _run(model, feed)
    assert tap_sums_as_embedding_bags(model) == 1
    assert "EmbeddingBagPackedSum" in _op_types(model) and "Gather" not in _op_types(model)
    after = _run(model, feed)
    # By hand: sum_j w[b, j] * table[rows[b, j]].
    expected = np.einsum("abj,abjo->abo", feed["weights"][:, :, 0],
                         feed["table"][feed["rows"]])[:, :, None]
    np.testing.assert_allclose(after[0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6, atol=1e-6)


def test_out_of_range_rows_read_a_row_instead_of_failing() -> None:
    # Gather reads zeros past the table; the op's CPU kernel would raise: the pass clamps
    # (a NaN point's row is garbage either way, and its weight NaN).
    model = _gather_sum([1, 2, 1, 2])
    assert tap_sums_as_embedding_bags(model) == 1
    feed = {"table": np.ones((10, 3), np.float32), "rows": np.array([[[3, 10], [-5, 2**40]]]),
            "weights": np.full((1, 2, 1, 2), 0.5, np.float32)}
    np.testing.assert_array_equal(_run(model, feed)[0], np.ones((1, 2, 1, 3), np.float32))


def test_a_product_that_is_a_model_output_keeps_its_name() -> None:
    model = _gather_sum([2, 3, 1, 4])
    model.outputs[0].get_tensor().set_names({"cls_logits"})
    assert tap_sums_as_embedding_bags(model) == 1
    assert model.outputs[0].get_any_name() == "cls_logits"


def _int8_read_model():
    """An NNCF INT8 read: the table and the weights through FakeQuantize (and a reshape)."""
    table = ops.parameter([10, 3], np.float32, name="table")
    rows = ops.parameter([2, 3, 4], np.int64, name="rows")
    weights = ops.parameter([2, 3, 1, 4], np.float32, name="weights")
    low, high = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
    quantized_table = ops.reshape(ops.fake_quantize(table, low, high, low, high, 256),
                                  ops.constant(np.array([10, 3], np.int64)), False)
    quantized_weights = ops.fake_quantize(weights, low, high, low, high, 256)
    gathered = ops.gather(quantized_table, rows, ops.constant(np.int64(0)))
    return ov.Model([ops.matmul(quantized_weights, gathered, False, False)],
                    [table, rows, weights])


@pytest.mark.parametrize("case", ["block-diagonal weights", "INT8 read", "axis 1",
                                  "transposed", "second reader"])
def test_other_products_are_left_alone(case: str) -> None:
    model = {"block-diagonal weights": _block_diagonal_model,  # the INT8 form
             "INT8 read": _int8_read_model,  # HAR-Net's per-group reads in an INT8 IR
             "axis 1": lambda: _gather_sum([1, 2, 1, 2], axis=1),
             # (weights (2, 3, 1, 3) by the rows' transpose (2, 3, 3, 4))
             "transposed": lambda: _gather_sum([2, 3, 1, 3], transpose_b=True,
                                               rows_shape=[2, 3, 4]),
             "second reader": lambda: _gather_sum([2, 3, 1, 4], second_reader=True)}[case]()
    before = _op_types(model)
    assert tap_sums_as_embedding_bags(model) == 0
    assert _op_types(model) == before


def _block_diagonal_model():
    """The INT8 form's product: ``(N, P, G, G*bag)`` weights by ``(N, P, G*bag, O)`` rows."""
    table = ops.parameter([10, 3], np.float32, name="table")
    rows = ops.parameter([1, 2, 6], np.int64, name="rows")
    weights = ops.parameter([1, 2, 3, 6], np.float32, name="weights")
    gathered = ops.gather(table, rows, ops.constant(np.int64(0)))
    return ov.Model([ops.matmul(weights, gathered, False, False)], [table, rows, weights])


@pytest.mark.parametrize("name", ["passd_mobilenet", "harnet_resnet18_small"])
def test_detectors_read_through_bags_with_parity(exported, name: str, tmp_path: Path) -> None:
    # PASSD's P&A attend convs (one packed read per level) and HAR-Net's deformable convs
    # (a modulated read: tap weights): every Gather read goes, outputs as before.
    _, (width, height), onnx_path = exported(name)
    plain_xml, _ = export_openvino(onnx_path, tmp_path / "plain")
    bags_xml, _ = export_openvino(onnx_path, tmp_path / "bags",
                                  transform=tap_sums_as_embedding_bags)
    core = ov.Core()
    types = _op_types(core.read_model(str(bags_xml)))
    assert types.count("EmbeddingBagPackedSum") >= 1
    assert _op_types(core.read_model(str(plain_xml))).count("Gather") \
        - types.count("Gather") == types.count("EmbeddingBagPackedSum")
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    plain, bags = (core.compile_model(str(x), "CPU", F32) for x in (plain_xml, bags_xml))
    a, b = plain(images.numpy()), bags(images.numpy())
    for port_a, port_b in zip(plain.outputs, bags.outputs, strict=True):
        expected = np.asarray(a[port_a])
        limit = 1e-4 * max(1.0, float(np.abs(expected).max()))
        assert float(np.abs(np.asarray(b[port_b]) - expected).max()) <= limit


@pytest.mark.parametrize("precision, keep_reads_float, float_precision, bags", [
    ("fp32", False, "f32", True),
    ("int8", False, "f32", False),  # INT8 reads: the Gather + INT8 product stay
    ("int8", True, "f32", True),  # float reads (accuracy control put them back)
    ("int8", True, "bf16", False),  # a re-saved IR would lose its f32 coordinate marks
])
def test_openvino_target_builds(precision: str, keep_reads_float: bool, float_precision: str,
                                bags: bool, tmp_path: Path) -> None:
    import onnx

    from quantize.export_onnx import export_onnx
    from quantize.int8_scope import find_kept_out_nodes, flatten
    from quantize.rewrites import rewrite_for_export
    from quantize.targets import BuildRequest, target_named
    from tests.quantize.conftest import small_passd
    from tests.quantize.ptq_helpers import synthetic_inputs

    target = target_named("openvino")
    scope = target.default_keep_float + (("sampling_reads",) if keep_reads_float else ())
    rewritten = rewrite_for_export(small_passd(), target.sampler,
                                   **target.export_options(precision, scope))
    onnx_path = export_onnx(rewritten, tmp_path / "form.onnx", (320, 320))
    kept = flatten(find_kept_out_nodes(onnx.load(str(onnx_path)), scope))
    calibration = synthetic_inputs((320, 320), 4, seed=0) \
        if precision == "int8" else None
    built = target.build(BuildRequest(precision, onnx_path, rewritten, (320, 320),
                                      tmp_path / "work", calibration, kept,
                                      keep_float_categories=scope,
                                      float_precision=float_precision))
    xml = next(path for name, path in built.files.items() if name.endswith(".xml"))
    model = ov.Core().read_model(str(xml))
    assert ("EmbeddingBagPackedSum" in _op_types(model)) is bags
    # Tap sums that still read a Gather's rows (through NNCF's quantizers, if any).
    gather_sums = [op for op in model.get_ops() if op.get_type_name() == "MatMul"
                   and _through(op.input_value(1)) == "Gather"]
    assert bool(gather_sums) is not bags
