"""Artifact directory: manifest contents, file hashes, atomic replacement."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from edgedet.anchors import anchor_spec_from_dict
from edgedet.models.passd import passd_mobilenet
from edgedet.preprocess import PreprocessConfig
from quantize.artifact import ArtifactError, build_manifest, sha256_file, write_artifact


@pytest.fixture(scope="module")
def passd_and_config() -> tuple:
    model = passd_mobilenet(num_classes=2, img_size=320).eval()
    config = {  # the keys train/engine.py's checkpoint_config writes
        **model.config,
        "class_names": ["circle", "square"],
        "input_size": [320, 320],
        "preprocess": PreprocessConfig(input_size=(320, 320)).to_dict(),
        "anchor_spec": model.anchor_spec((320, 320)).to_dict(),
        "box_coder_weights": list(model.box_coder_weights),
        "head_family": "passd",
        "output_names": list(model.export_output_names),
        "postprocess": {"score_threshold": 0.01, "iou_threshold": 0.45, "pre_nms_top_k": 200,
                        "max_detections": 100},
    }
    return model, config


def test_build_manifest_from_model_and_config(passd_and_config: tuple) -> None:
    model, config = passd_and_config
    source = {"checkpoint": "best.safetensors", "checkpoint_sha256": "ab" * 32,
              "calibration": None}
    manifest = build_manifest(model, config, "passd_mobilenet", source=source)
    assert manifest["format_version"] == 1
    assert manifest["architecture"] == "passd_mobilenet"
    assert manifest["head_family"] == "passd"
    assert manifest["class_names"] == ["circle", "square"]
    assert manifest["box_coder_weights"] == [10.0, 10.0, 5.0, 5.0]
    assert manifest["input"] == {"name": "images", "shape": [1, 3, 320, 320],
                                 "dtype": "float32"}
    # 320 input: 40^2 + 20^2 + 10^2 + 5^2 cells x 3 boxes = 6375 default boxes.
    assert anchor_spec_from_dict(manifest["anchor_spec"]).num_anchors == 6375
    assert [(o["name"], o["shape"]) for o in manifest["outputs"]] == [
        ("objectness_logits", [1, 6375, 2]), ("propose_deltas", [1, 6375, 4]),
        ("cls_logits", [1, 6375, 3]), ("box_deltas", [1, 6375, 4])]
    assert "background at 0" in manifest["outputs"][2]["meaning"]
    assert manifest["postprocess"]["nms_mode"] == "hard"
    assert manifest["postprocess"]["iou_threshold"] == 0.45
    assert (manifest["precision"], manifest["backend"]) == ("fp32", "onnxruntime")
    assert manifest["source"] == source
    assert manifest["accuracy"] is None and manifest["kept_out_of_int8"] == []
    json.dumps(manifest)  # JSON-serialisable


def test_build_manifest_fills_missing_keys_from_model(passd_and_config: tuple) -> None:
    model, config = passd_and_config
    minimal = {k: config[k] for k in ("architecture", "class_names", "preprocess")}
    shapes = {"objectness_logits": [1, 6375, 2], "propose_deltas": [1, 6375, 4],
              "cls_logits": [1, 6375, 3], "box_deltas": [1, 6375, 4]}
    manifest = build_manifest(model, minimal, "m", precision="int8", backend="openvino",
                              output_shapes=shapes, kept_out_of_int8=["/head/Softmax"])
    assert manifest["head_family"] == "passd"
    assert manifest["anchor_spec"] == config["anchor_spec"]
    assert manifest["kept_out_of_int8"] == ["/head/Softmax"]


def test_build_manifest_errors(passd_and_config: tuple) -> None:
    model, config = passd_and_config
    without_classes = {k: v for k, v in config.items() if k != "class_names"}
    with pytest.raises(ArtifactError, match="class_names"):
        build_manifest(model, without_classes, "m", output_shapes={})
    with pytest.raises(ArtifactError, match="precision"):
        build_manifest(model, config, "m", precision="int4")
    wrong = {"objectness_logits": [1, 100, 2], "propose_deltas": [1, 100, 4],
             "cls_logits": [1, 100, 3], "box_deltas": [1, 100, 4]}
    with pytest.raises(ArtifactError, match="6375 anchors"):
        build_manifest(model, config, "m", output_shapes=wrong)


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_write_artifact_hashes_and_manifest_last(tmp_path: Path) -> None:
    model_file = _file(tmp_path / "exported.onnx", b"onnx bytes")
    report = _file(tmp_path / "r.md", b"# report")
    out = write_artifact(tmp_path / "art", {"model.onnx": model_file}, {"name": "x"},
                         extra_files={"report.md": report})
    assert sorted(os.listdir(out)) == ["manifest.json", "model.onnx", "report.md"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"name": "x",
                        "files": {"model.onnx": hashlib.sha256(b"onnx bytes").hexdigest()}}
    assert sha256_file(out / "model.onnx") == manifest["files"]["model.onnx"]


def test_replacing_an_artifact_is_atomic(tmp_path: Path) -> None:
    xml = _file(tmp_path / "a.xml", b"<net/>")
    weights = _file(tmp_path / "a.bin", b"\x00\x01")
    target = tmp_path / "out" / "art"
    write_artifact(target, {"model.onnx": _file(tmp_path / "old.onnx", b"old")}, {"v": 1})
    write_artifact(target, {"model.xml": xml, "model.bin": weights}, {"v": 2})
    assert sorted(os.listdir(target)) == ["manifest.json", "model.bin", "model.xml"]
    assert json.loads((target / "manifest.json").read_text())["v"] == 2
    assert os.listdir(target.parent) == ["art"]  # no staging or backup directory left

    # A failure while building the new one leaves the good artifact as it was.
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}
    with pytest.raises(ArtifactError, match="not found"):
        write_artifact(target, {"model.onnx": tmp_path / "missing.onnx"}, {"v": 3})
    with pytest.raises(ArtifactError, match="plain file name"):
        write_artifact(target, {"../model.onnx": xml}, {"v": 3})
    with pytest.raises(ArtifactError, match="plain file name"):
        write_artifact(target, {"manifest.json": xml}, {"v": 3})
    with pytest.raises(ArtifactError, match="at least one model file"):
        write_artifact(target, {}, {"v": 3})
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == before
    assert os.listdir(target.parent) == ["art"]
