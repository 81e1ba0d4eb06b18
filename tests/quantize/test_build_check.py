"""``quantize.build_check.Builder``: what the run's report says an INT8 artifact keeps float."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edgedet.models.checkpoint import build_from_checkpoint
from edgedet.preprocess import PreprocessConfig
from quantize.build_check import Builder
from quantize.convert import ConvertConfig
from quantize.int8_scope import DEFAULT_KEEP_FLOAT, find_kept_out_nodes
from tests.quantize.tiny_checkpoint import write_tiny_checkpoint


def test_kept_report_adds_the_categories_accuracy_control_put_back(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny")
    model, checkpoint_config = build_from_checkpoint(checkpoint)
    config = ConvertConfig(checkpoint=checkpoint, target="openvino", out=tmp_path / "out",
                           precisions=("int8",), progress=False)
    work = tmp_path / "work"
    work.mkdir()
    builder = Builder(config, model, checkpoint_config, "tiny", {}, work,
                      PreprocessConfig.from_dict(checkpoint_config["preprocess"]), None)
    # The openvino target lets the sampling reads into INT8.
    assert "sampling_reads" not in builder.kept_report
    assert "sampling" in builder.kept_report  # the coordinates stay float everywhere
    before = {c: dict(entry) for c, entry in builder.kept_report.items()}

    builder.report_float_categories(("sampling_reads",))

    expected = find_kept_out_nodes(onnx.load(str(builder.onnx_fp32)), DEFAULT_KEEP_FLOAT)
    assert builder.kept_report["sampling_reads"]["nodes"] == expected["sampling_reads"]
    assert expected["sampling_reads"]  # the tiny PASSD has sampling reads to name
    assert {c: builder.kept_report[c] for c in before} == before  # the rest unchanged
    builder.report_float_categories(("sampling_reads",))  # a second call adds nothing
    assert builder.kept_report["sampling_reads"]["nodes"] == expected["sampling_reads"]
