"""``quantize.build_check.Builder``: what the run's report says an INT8 artifact keeps float."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edgedet.models.checkpoint import build_from_checkpoint
from edgedet.preprocess import PreprocessConfig
from quantize.build_check import Builder
from quantize.convert import ConvertConfig
from quantize.int8_scope import CATEGORIES, DEFAULT_KEEP_FLOAT, find_kept_out_nodes
from tests.quantize.tiny_checkpoint import write_tiny_checkpoint


def test_kept_report_follows_the_categories_accuracy_control_put_back(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny")
    model, checkpoint_config = build_from_checkpoint(checkpoint)
    config = ConvertConfig(checkpoint=checkpoint, target="openvino", out=tmp_path / "out",
                           precisions=("int8",), progress=False)
    work = tmp_path / "work"
    work.mkdir()
    builder = Builder(config, model, checkpoint_config, "tiny", {}, work,
                      PreprocessConfig.from_dict(checkpoint_config["preprocess"]), None)
    # The openvino target lets the sampling reads into INT8, and builds such an INT8 artifact
    # from its INT8 export form: the report names that graph's nodes.
    assert "sampling_reads" not in builder.kept_report
    assert "sampling" in builder.kept_report  # the coordinates stay float everywhere
    assert builder._int8_form is not None
    form_nodes = {n.name for n in builder._int8_form.onnx_model.graph.node}
    assert set(builder.kept_report["sampling"]["nodes"]) <= form_nodes

    builder.report_float_categories(("sampling_reads",))

    # Reads in float: the main export again, every category named on its graph.
    expected = find_kept_out_nodes(onnx.load(str(builder.onnx_fp32)), DEFAULT_KEEP_FLOAT)
    assert expected["sampling_reads"]  # the tiny PASSD has sampling reads to name
    assert builder.kept_report == {c: {"nodes": nodes, "reason": CATEGORIES[c]}
                                   for c, nodes in expected.items() if nodes}
    builder.report_float_categories(("sampling_reads",))  # a second call changes nothing
    assert builder.kept_report["sampling_reads"]["nodes"] == expected["sampling_reads"]


def test_int8_builds_with_int8_reads_take_the_targets_int8_form(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from quantize.accuracy_control import Trial

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny")
    model, checkpoint_config = build_from_checkpoint(checkpoint)
    config = ConvertConfig(checkpoint=checkpoint, target="openvino", out=tmp_path / "out",
                           precisions=("fp32", "int8"), progress=False)
    work = tmp_path / "work"
    work.mkdir()
    builder = Builder(config, model, checkpoint_config, "tiny", {}, work,
                      PreprocessConfig.from_dict(checkpoint_config["preprocess"]), None)
    size = builder.input_size

    def request(precision: str, trial: Trial):  # type: ignore[no-untyped-def]
        return builder._request(precision, trial, builder.onnx_fp32, size, work, None)

    fp32 = request("fp32", Trial())
    assert fp32.onnx_fp32 == builder.onnx_fp32 and fp32.model is builder.rewritten
    int8 = request("int8", Trial())
    assert int8.onnx_fp32 != builder.onnx_fp32
    assert int8.model.head.attend.anchors_in_one_product  # type: ignore[union-attr]
    assert not builder.rewritten.head.attend.anchors_in_one_product  # type: ignore[union-attr]
    # The scope was found on the form's own graph, and the run's float layers map to it.
    graph_names = {n.name for n in onnx.load(str(int8.onnx_fp32)).graph.node}
    assert int8.keep_float and set(int8.keep_float) <= graph_names
    layer = next(iter(builder.units))
    with_layer = request("int8", Trial(float_layers=(layer,)))
    assert layer in with_layer.keep_float and set(with_layer.keep_float) <= graph_names
    # Sampling reads kept float: one product per anchor, the main export.
    float_reads = request("int8", Trial(float_categories=("sampling_reads",)))
    assert float_reads.onnx_fp32 == builder.onnx_fp32
