"""``quantize/run.py`` end to end on a tiny checkpoint: artifacts that load, manifests, report,
and the exit status of the accuracy check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedet.artifact import load_manifest
from edgedet.data.coco import write_coco_dataset
from edgedet.data.sample import Sample
from edgedet.data.synthetic import SYNTHETIC_CLASSES
from edgedet.detector import Detector
from quantize.run import build_parser, config_from_args
from quantize.sensitivity import DEFAULT_IMAGES
from tests.quantize.tiny_checkpoint import INPUT_SIZE, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN = str(REPO_ROOT / "quantize" / "run.py")
# An untrained model scores no AP: the check rests on the AP difference (smoke test).
SMALL = ["--calib-size", "4", "--eval-size", "3", "--no-progress", "--device", "cpu",
         "--allow-weak-reference"]
FP32_SMALL = SMALL[2:]  # (--calib-size is refused where no INT8 artifact is built)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)


def check_artifact(directory: Path, precision: str, backend: str) -> dict:
    manifest = load_manifest(directory)  # verifies the file hashes after the accuracy rewrite
    assert (manifest["precision"], manifest["backend"]) == (precision, backend)
    assert manifest["name"] == directory.name
    assert manifest["input"]["shape"] == [1, 3, INPUT_SIZE[1], INPUT_SIZE[0]]
    accuracy = manifest["accuracy"]
    for key in ("AP", "AP50", "APs", "APm", "APl", "delta_AP", "agreement", "mean_iou",
                "latency_p50_ms", "reference_AP"):
        assert key in accuracy
    assert accuracy["eval_data"]["data"] == "synthetic:1"
    for name in ("report.json", "report.md", "comparison.png"):
        assert (directory / name).is_file()
    Detector(directory, backend=backend).detect(np.zeros((90, 120, 3), np.uint8))  # it runs
    return manifest


def onnx_outputs_against_torch(directory: Path, checkpoint: Path
                               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(artifact output, PyTorch output)`` pairs of the artifact's model, run by ONNX
    Runtime as ``Detector`` runs it (PASSD's attend tail included), and the checkpoint's model
    on one random normalised image: the raw numbers, which the accuracy check cannot vouch for
    on an untrained model (AP 0 on both sides)."""
    from edgedet import Detector
    from edgedet.models.checkpoint import build_from_checkpoint

    model, _ = build_from_checkpoint(checkpoint)
    image = np.random.default_rng(3).normal(0, 1, (1, 3, INPUT_SIZE[1], INPUT_SIZE[0]))
    image = image.astype(np.float32)
    with Detector(directory, backend="onnxruntime", allow_unchecked=True) as detector:
        got = detector.run_model(image)
    with torch.no_grad():
        expected = model.eval().forward_export(torch.from_numpy(image))
    assert set(got) == set(model.export_output_names)
    return [(got[name], b.numpy())
            for name, b in zip(model.export_output_names, expected, strict=True)]


def test_cpu_both_precisions_end_to_end(checkpoint, tmp_path):
    out = tmp_path / "cpu"
    result = run_script("--checkpoint", str(checkpoint), "--target", "cpu", "--out", str(out),
                        *SMALL)
    assert result.returncode == 0, result.stderr
    # --no-progress drops the bars, not the step messages a log needs.
    assert "building tiny_passd_int8 for onnxruntime" in result.stdout
    assert "\r" not in result.stdout + result.stderr
    fp32 = check_artifact(out / "tiny_passd_fp32", "fp32", "onnxruntime")
    int8 = check_artifact(out / "tiny_passd_int8", "int8", "onnxruntime")
    assert fp32["source"]["calibration"] is None and fp32["kept_out_of_int8"] == []
    calibration = int8["source"]["calibration"]
    assert calibration["data"] == "synthetic:2" and calibration["num_images"] == 4
    assert len(calibration["sha256"]) == 64
    assert calibration["sha256"] != int8["accuracy"]["eval_data"]["sha256"]
    # The propose stage's clip, from which the SDK computes the sampling points, stays float.
    assert any("Tanh" in name for name in int8["kept_out_of_int8"])
    # The fp32 ONNX artifact computes the PyTorch model's numbers (the untrained model's AP
    # is 0 on both sides, so the check's delta_AP of 0 alone would not show it).
    for got, expected in onnx_outputs_against_torch(out / "tiny_passd_fp32", checkpoint):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    report = json.loads((out / "report.json").read_text())
    assert report["seeds"] == {"train": 0, "eval": 1, "calibration": 2}
    assert [a["name"] for a in report["artifacts"]] == ["tiny_passd_fp32", "tiny_passd_int8"]
    assert "sampling" in report["kept_out_of_int8"]
    # Accuracy control stopped after plain PTQ (step 0; on an untrained model its gate
    # cannot fail), and the layers are ranked for the report all the same.
    control = report["accuracy_control"]["tiny_passd_int8"]
    assert [s["action"] for s in control["steps"]] == ["plain PTQ"]
    assert control["float_layers"] == [] and len(control["ranking"]) > 20
    assert int8["accuracy_control"]["steps"][0]["passed"]
    assert (out / "sensitivity.png").is_file()
    markdown = (out / "report.md").read_text()
    assert "Kept out of INT8" in markdown and "comparison.png" in markdown
    assert not list(out.glob(".work-*"))


def test_no_sensitivity_report_skips_the_ranking_when_plain_ptq_passes(checkpoint, tmp_path):
    out = tmp_path / "fast"
    result = run_script("--checkpoint", str(checkpoint), "--target", "cpu", "--out", str(out),
                        "--precision", "int8", "--no-sensitivity-report", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "by sensitivity" not in result.stdout
    control = json.loads((out / "report.json").read_text())["accuracy_control"][
        "tiny_passd_int8"]
    assert [s["action"] for s in control["steps"]] == ["plain PTQ"] and control["ranking"] == []
    assert not (out / "sensitivity.png").exists()
    check_artifact(out / "tiny_passd_int8", "int8", "onnxruntime")


def test_impossible_max_drop_exits_non_zero(checkpoint, tmp_path):
    result = run_script("--checkpoint", str(checkpoint), "--target", "cpu", "--out",
                        str(tmp_path / "fail"), "--precision", "fp32", "--max-drop", "-1",
                        *FP32_SMALL)
    assert result.returncode == 1
    assert "accuracy check failed" in result.stderr and "tiny_passd_fp32" in result.stderr
    assert (tmp_path / "fail" / "report.md").is_file()


def test_bad_inputs_exit_2_with_a_message(checkpoint, tmp_path):
    missing = run_script("--checkpoint", str(tmp_path / "nope"), "--target", "cpu",
                         "--out", str(tmp_path / "o"), *SMALL)
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    overlap = run_script("--checkpoint", str(checkpoint), "--target", "cpu", "--out",
                         str(tmp_path / "o"), "--calib-data", "synthetic:1", *SMALL)
    assert overlap.returncode == 2 and "also in the eval set" in overlap.stderr
    (tmp_path / "a_file").write_text("x")
    for flag, value, message in (("--max-float-layers", "-1", "--max-float-layers"),
                                 ("--max-drop", "nan", "--max-drop"),
                                 ("--name", "../escape", "--name"),
                                 ("--name", "a/b", "--name"),
                                 # would read as a killed run's leftover (".x.old-...")
                                 ("--name", ".v2.old-a", "not starting with a dot"),
                                 ("--device", "bogus", "--device"),
                                 ("--out", str(tmp_path / "a_file"), "is a file"),
                                 ("--out", str(tmp_path / "a_file" / "x"), "which is a file"),
                                 *([("--device", "cuda", "sees no CUDA device")]
                                   if not torch.cuda.is_available() else []),
                                 *([("--device", "mps", "'mps' cannot be used here")]
                                   if not torch.backends.mps.is_available() else []),
                                 ("--float-step", "0", "--float-step"),
                                 ("--sensitivity-images", "0", "--sensitivity-images"),
                                 # only openvino lets float ops run in bf16
                                 ("--float-precision", "bf16", "float precision 'bf16'"),
                                 # only cpu stores float weights as float16
                                 ("--weight-storage", "float16", "weight storage 'float16'"),
                                 # only cpu builds 7-bit INT8 weights
                                 ("--int8-weight-bits", "7", "INT8 weights of 8 bits"),
                                 ("--int8-weight-bits", "6", "--int8-weight-bits")):
        target = "openvino" if flag in ("--weight-storage", "--int8-weight-bits") else "cpu"
        bad = run_script("--checkpoint", str(checkpoint), "--target", target, "--out",
                         str(tmp_path / "o"), *SMALL, flag, value)  # the flag wins
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and not (tmp_path / "o").exists()
    if Path("/proc/self").is_dir():  # an --out the OS will not create: an error, no traceback
        unwritable = run_script("--checkpoint", str(checkpoint), "--target", "cpu", "--out",
                                "/proc/edgedet-test-out", *SMALL)
        assert unwritable.returncode == 2 and "/proc/edgedet-test-out" in unwritable.stderr
        assert "Traceback" not in unwritable.stderr
    no_objects = tmp_path / "no_objects"
    write_coco_dataset([Sample(np.full((64, 64, 3), i, np.uint8), np.zeros((0, 4), np.float32),
                               np.zeros(0, np.int64), image_id=i + 1, file_name=f"{i}.png")
                        for i in range(2)], no_objects, SYNTHETIC_CLASSES)
    empty_eval = run_script("--checkpoint", str(checkpoint), "--target", "cpu", "--out",
                            str(tmp_path / "o"), *SMALL, "--eval-data", f"coco:{no_objects}")
    assert empty_eval.returncode == 2 and "no annotated object" in empty_eval.stderr
    help_text = run_script("--help")
    assert help_text.returncode == 0
    for flag in ("--precision", "--calib-data", "--eval-size", "--max-drop", "--keep-float",
                 "--max-float-layers", "--float-step", "--sensitivity-images",
                 "--float-precision", "--weight-storage", "--int8-weight-bits"):
        assert flag in help_text.stdout


def test_an_artifact_its_runtime_cannot_load_is_a_one_line_error(checkpoint, tmp_path,
                                                                 monkeypatch, capsys):
    # As LiteRT's XNNPACK refused a built file ("failed to create XNNPACK runtime"): the
    # check loads each artifact with its backend, and that failure ends the run with exit 2
    # and the backend's message, not a traceback; nothing is published.
    from edgedet.backends import BackendError
    from quantize import accuracy
    from quantize.run import main

    real_detector = accuracy.Detector
    refused = []

    def refuse(artifact, **kwargs):
        if not isinstance(kwargs.get("backend"), str):  # the PyTorch reference: a real one
            return real_detector(artifact, **kwargs)
        refused.append(kwargs["backend"])
        raise BackendError(f"onnxruntime cannot load {artifact}: failed to prepare")

    monkeypatch.setattr(accuracy, "Detector", refuse)
    out = tmp_path / "o"
    assert main(["--checkpoint", str(checkpoint), "--target", "cpu", "--out", str(out),
                 "--precision", "fp32", *FP32_SMALL]) == 2
    err = capsys.readouterr().err
    assert refused == ["onnxruntime"]  # the artifact's own load, after the reference ran
    assert "cannot load" in err and "failed to prepare" in err and "Traceback" not in err
    assert not (out / "tiny_passd_fp32").exists()


def test_cpu_float16_weight_storage_is_checked_and_recorded(checkpoint, tmp_path):
    out = tmp_path / "half"
    result = run_script("--checkpoint", str(checkpoint), "--target", "cpu", "--out", str(out),
                        "--precision", "fp32", "--weight-storage", "float16", *FP32_SMALL)
    assert result.returncode == 0, result.stderr
    manifest = check_artifact(out / "tiny_passd_fp32", "fp32", "onnxruntime")
    assert manifest["weight_storage"] == "float16"
    import onnx

    model = onnx.load(str(out / "tiny_passd_fp32" / "model.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    # float16 weights move the outputs by their rounding only (about 2^-11 of each weight):
    # close to the PyTorch model's, not equal.
    pairs = onnx_outputs_against_torch(out / "tiny_passd_fp32", checkpoint)
    for got, expected in pairs:
        np.testing.assert_allclose(got, expected, atol=1e-2 * np.abs(expected).max())
    assert any(not np.allclose(got, expected, rtol=1e-6, atol=1e-7) for got, expected in pairs)
    assert "float16" in (out / "report.md").read_text()


def test_cpu_7bit_int8_weights_are_built_checked_and_recorded(checkpoint, tmp_path):
    import onnx

    from edgedet.cpu_features import host_description

    out = tmp_path / "w7"
    result = run_script("--checkpoint", str(checkpoint), "--target", "cpu", "--out", str(out),
                        "--precision", "int8", "--int8-weight-bits", "7", *SMALL)
    assert result.returncode == 0, result.stderr
    manifest = check_artifact(out / "tiny_passd_int8", "int8", "onnxruntime")
    assert manifest["int8_weight_bits"] == 7
    assert manifest["accuracy"]["checked_on"] == host_description()  # what INT8 ran on
    model = onnx.load(str(out / "tiny_passd_int8" / "model.onnx"))
    weights = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) == 64


@pytest.mark.slow
def test_openvino_both_precisions_end_to_end(checkpoint, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out = tmp_path / "ov"
    result = run_script("--checkpoint", str(checkpoint), "--target", "openvino", "--out",
                        str(out), *SMALL)
    assert result.returncode == 0, result.stderr
    check_artifact(out / "tiny_passd_fp32", "fp32", "openvino")
    int8 = check_artifact(out / "tiny_passd_int8", "int8", "openvino")
    assert int8["kept_out_of_int8"]
    # The INT8 IR reads its samples in INT8 (the target's default scope), so it was built
    # from the target's INT8 form, which the report says.
    report = json.loads((out / "report.json").read_text())
    notes = next(a["notes"] for a in report["artifacts"] if a["name"] == "tiny_passd_int8")
    assert any("in one matrix product" in note for note in notes)
    from quantize.ptq_openvino import fake_quantize_count

    assert fake_quantize_count(out / "tiny_passd_int8" / "model.xml") > 0


@pytest.mark.parametrize("flag", ["--calib-size", "--max-float-layers", "--float-step",
                                  "--sensitivity-images"])
def test_int8_tuning_flags_are_refused_for_a_run_without_int8(flag):
    # They have defaults, so a value given was accepted and silently did nothing.
    argv = ["--checkpoint", "c", "--target", "cpu", "--out", "o", flag, "3"]
    with pytest.raises(ValueError, match=f"{flag} tune INT8 artifacts, and precisions "):
        config_from_args(build_parser().parse_args([*argv, "--precision", "fp32"]), argv)
    config = config_from_args(build_parser().parse_args(argv), argv)  # fp32 + int8: used
    assert getattr(config, flag[2:].replace("-", "_")) == 3
    defaults = config_from_args(build_parser().parse_args(argv[:6]), argv[:6])
    assert (defaults.calib_size, defaults.sensitivity_images) == (128, DEFAULT_IMAGES)
