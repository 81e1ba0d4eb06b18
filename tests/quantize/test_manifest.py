"""``quantize.manifest.build_manifest``: a manifest filled from a detector and its checkpoint
config (the contract itself is tested in tests/edgedet/test_artifact.py)."""

from __future__ import annotations

import json

import pytest

from edgedet.anchors import anchor_spec_from_dict
from edgedet.artifact import ManifestError
from edgedet.models.passd import passd_mobilenet
from edgedet.preprocess import PreprocessConfig
from quantize.manifest import build_manifest


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
    manifest = build_manifest(model, config, "passd_mobilenet", "fp32", "onnxruntime",
                              source=source)
    assert manifest["format_version"] == 1  # area shrinking: readable by any edgedet
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


def test_build_manifest_takes_model_facts_from_the_model(passd_and_config: tuple) -> None:
    model, config = passd_and_config
    minimal = {k: config[k] for k in ("architecture", "class_names", "preprocess")}
    shapes = {"objectness_logits": [1, 6375, 2], "propose_deltas": [1, 6375, 4],
              "cls_logits": [1, 6375, 3], "box_deltas": [1, 6375, 4]}
    manifest = build_manifest(model, minimal, "m", precision="int8", backend="openvino",
                              shapes=shapes, kept_out_of_int8=["/head/Softmax"])
    assert manifest["head_family"] == "passd"
    assert manifest["anchor_spec"] == config["anchor_spec"]
    assert manifest["kept_out_of_int8"] == ["/head/Softmax"]


def test_build_manifest_errors(passd_and_config: tuple) -> None:
    model, config = passd_and_config
    without_classes = {k: v for k, v in config.items() if k != "class_names"}
    with pytest.raises(ManifestError, match="class_names"):
        build_manifest(model, without_classes, "m", "fp32", "onnxruntime", shapes={})
    with pytest.raises(ManifestError, match="precision"):
        build_manifest(model, config, "m", "int4", "onnxruntime")
    with pytest.raises(ManifestError, match="backend"):
        build_manifest(model, config, "m", "fp32", "tensorflow")
    wrong = {"objectness_logits": [1, 100, 2], "propose_deltas": [1, 100, 4],
             "cls_logits": [1, 100, 3], "box_deltas": [1, 100, 4]}
    with pytest.raises(ManifestError, match="6375"):
        build_manifest(model, config, "m", "fp32", "onnxruntime", shapes=wrong)
