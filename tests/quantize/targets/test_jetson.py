"""Target ``jetson``: fp16 + TensorRT-rules INT8 QDQ artifacts of the tiny PASSD, their
manifests, the fp16 model's parity with PyTorch, and a rules violation stopping the run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgedet.artifact import load_manifest
from edgedet.detector import Detector
from edgedet.models.checkpoint import build_from_checkpoint
from quantize import run
from quantize.convert import ConvertConfig, convert
from quantize.rewrites import rewrite_for_export
from quantize.targets import jetson
from quantize.tensorrt_rules import QdqRulesError, Violation, check_qdq_graph
from tests.quantize.tiny_checkpoint import INPUT_SIZE, write_tiny_checkpoint

SMALL = dict(calib_size=4, eval_size=3, progress=False, device="cpu",
             allow_weak_reference=True)  # an untrained model: AP 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("jetson")
    report = convert(ConvertConfig(checkpoint=checkpoint, target="jetson", out=out, **SMALL))
    return out, report


def test_both_artifacts_pass_and_say_how_tensorrt_builds_them(converted):
    out, report = converted
    assert report.passed and [a.precision for a in report.artifacts] == ["fp16", "int8"]
    for artifact in report.artifacts:
        assert (artifact.backend, artifact.checked_on) == ("tensorrt", "onnxruntime")
        assert artifact.notes and "ONNX Runtime on the CPU" in artifact.notes[0]
    fp16 = load_manifest(out / "tiny_passd_fp16")
    int8 = load_manifest(out / "tiny_passd_int8")
    assert fp16["backend"] == int8["backend"] == "tensorrt"
    assert fp16["tensorrt"]["builder_flags"] == ["fp16"]
    assert int8["tensorrt"]["builder_flags"] == ["fp16", "int8"]
    assert "--int8" in int8["tensorrt"]["trtexec"] and "--int8" not in fp16["tensorrt"]["trtexec"]
    assert int8["tensorrt"]["checked_against"] == ["8.6", "10.1"]
    assert int8["tensorrt"]["int8_layers"] == int8["tensorrt"]["weighted_layers"] > 0
    # The float scope of the int8 model is recorded, and the model follows every rule.
    assert int8["kept_out_of_int8"]
    model = onnx.load(str(out / "tiny_passd_int8" / "model.onnx"))
    assert check_qdq_graph(model, int8["kept_out_of_int8"]) == []
    report_md = (out / "report.md").read_text()
    assert "deployed on tensorrt, checked on onnxruntime" in report_md
    saved = json.loads((out / "report.json").read_text())
    assert saved["artifacts"][1]["notes"] == report.artifacts[1].notes


def test_detector_runs_a_jetson_artifact_without_tensorrt(converted):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: the fallback is not taken")
    out, _ = converted
    detector = Detector(out / "tiny_passd_int8")
    assert detector.backend_name == "onnxruntime"
    assert "fallback: tensorrt not installed" in repr(detector)
    detector.detect(np.zeros((90, 120, 3), np.uint8))  # and it runs


def test_fp16_artifact_matches_pytorch(converted, checkpoint):
    out, _ = converted
    model, _ = build_from_checkpoint(checkpoint)
    rewritten = rewrite_for_export(model).eval()
    width, height = INPUT_SIZE
    images = np.random.default_rng(0).normal(size=(1, 3, height, width)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in rewritten.forward_export(torch.from_numpy(images))]
    session = ort.InferenceSession(str(out / "tiny_passd_fp16" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})
    for name, a, b in zip(rewritten.export_output_names, got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=name)


def test_a_rules_violation_stops_the_run_before_anything_is_written(checkpoint, tmp_path,
                                                                     monkeypatch, capsys):
    violation = Violation("not-int8", "/conv/x_dq", "type uint8; TensorRT reads signed int8 only")
    monkeypatch.setattr(jetson, "check_qdq_graph", lambda *args, **kwargs: [violation])
    with pytest.raises(QdqRulesError) as caught:
        convert(ConvertConfig(checkpoint=checkpoint, target="jetson", out=tmp_path / "a",
                              precisions=("int8",), **SMALL))
    assert caught.value.violations == [violation]
    assert not list((tmp_path / "a").glob("tiny_passd_*"))
    status = run.main(["--checkpoint", str(checkpoint), "--target", "jetson",
                       "--out", str(tmp_path / "b"), "--calib-size", "4", "--eval-size", "3",
                       "--no-progress", "--device", "cpu", "--allow-weak-reference"])
    assert status == 2
    err = capsys.readouterr().err
    assert "TensorRT explicit-quantization rule" in err and str(violation) in err
    assert not list((tmp_path / "b").glob("tiny_passd_*"))


def test_the_required_float_scope_is_in_the_run_s_scope_whatever_keep_float_says(tmp_path):
    # The report's "Kept out of INT8" comes from the run's scope: with --keep-float none it
    # listed nothing while the INT8 model kept TensorRT's required scope in float.
    config = ConvertConfig(checkpoint=tmp_path / "c", target="jetson", out=tmp_path / "o",
                           keep_float=(), **SMALL)
    assert config.resolved_keep_float() == jetson.REQUIRED_FLOAT
    more = ConvertConfig(checkpoint=tmp_path / "c", target="jetson", out=tmp_path / "o",
                         keep_float=("head",), **SMALL)
    assert more.resolved_keep_float() == ("head", *jetson.REQUIRED_FLOAT)
    cpu = ConvertConfig(checkpoint=tmp_path / "c", target="cpu", out=tmp_path / "o",
                        keep_float=(), **SMALL)
    assert cpu.resolved_keep_float() == ()


def test_the_gather_read_keeps_integer_rows_where_float_ops_may_run_in_fp16():
    # TensorRT builds with FP16 kernels: PASSD's rows (43 200 at 320 pixels) are 32 apart
    # there. Only a target whose coordinate math stays float32 takes the float rows.
    from quantize.targets import target_named

    for name in ("jetson", "tflite", "cpu"):
        for precision in ("fp32", "int8"):
            assert not target_named(name).export_options(precision)["rows_in_float"], name
    openvino = target_named("openvino")
    assert openvino.export_options("fp32")["rows_in_float"]
    assert openvino.export_options("int8")["anchors_in_one_product"]
    assert not openvino.export_options("int8", ("sampling_reads",))["anchors_in_one_product"]
    assert not openvino.export_options("fp32")["anchors_in_one_product"]
