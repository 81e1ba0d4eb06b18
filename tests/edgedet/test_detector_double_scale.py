"""``Detector(..., double_scale=True)``: the 2x model file of an artifact, merged before decoding.

The models here output constants, so the answer is known by hand: a logit planted in the 2x
model's extra fine level comes out as that anchor (halved into 1x pixels); one planted in a
level both runs share comes out with the average of the two logits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgedet._io import write_json_atomic
from edgedet.anchors import GridAnchorSpec
from edgedet.artifact import ManifestError, UncheckedArtifactError, load_manifest, sha256_file
from edgedet.backends import is_available
from edgedet.box_coding import cxcywh_to_xyxy
from edgedet.detector import Detector
from edgedet.double_scale import DoubleScaleError
from edgedet.preprocess import PreprocessConfig

CLASSES = ("circle", "square")
SIZE_1X, SIZE_2X = (64, 64), (128, 128)
SPEC_1X = GridAnchorSpec(SIZE_1X, ((2, 2), (1, 1)), (32, 64), (128.0, 256.0))
SPEC_2X = GridAnchorSpec(SIZE_2X, ((4, 4), (2, 2)), (32, 64), (128.0, 256.0))
LOW = -20.0
# Planted logits: row 5 of the 2x model's finest level (the extra level), class 1; row 2 of
# the 1x model's finest level, class 0, whose twin is row 16 + 2 of the 2x model.
EXTRA_ROW, SHARED_ROW = 5, 2
LOGIT_1X, LOGIT_2X = 8.0, 4.0


class ConstantHead(nn.Module):
    """Outputs fixed ``cls_logits (1, A, 2)`` and zero ``box_deltas (1, A, 4)``."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("logits", torch.from_numpy(logits.astype(np.float32))[None])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anchor = images.mean() * 0.0  # keeps the input in the graph
        return self.logits + anchor, torch.zeros(1, self.logits.shape[1], 4) + anchor


def _export(logits: np.ndarray, size: tuple[int, int], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ConstantHead(logits).eval(), (torch.zeros(1, 3, size[1], size[0]),),
                          str(path), dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["cls_logits", "box_deltas"])


def _accuracy(passed: bool = True) -> dict:
    return {"AP": 1.0, "reference_AP": 1.0, "delta_AP": 0.0 if passed else -5.0,
            "max_drop": 1.0, "passed": passed, "eval_data": {"data": "hand-made"}}


def write_constant_artifact(directory: Path, double_scale: bool = True) -> Path:
    directory.mkdir(parents=True)
    logits_1x = np.full((SPEC_1X.num_anchors, 2), LOW)
    logits_2x = np.full((SPEC_2X.num_anchors, 2), LOW)
    logits_2x[EXTRA_ROW, 1] = 10.0
    logits_1x[SHARED_ROW, 0] = LOGIT_1X
    logits_2x[16 + SHARED_ROW, 0] = LOGIT_2X
    _export(logits_1x, SIZE_1X, directory / "model.onnx")
    files = ["model.onnx"]
    manifest = {
        "format_version": 1, "name": "constant", "architecture": "constant",
        "head_family": "retinanet", "class_names": list(CLASSES),
        "preprocess": PreprocessConfig(input_size=SIZE_1X).to_dict(),
        "anchor_spec": SPEC_1X.to_dict(), "box_coder_weights": [1.0, 1.0, 1.0, 1.0],
        "outputs": [{"name": "cls_logits", "shape": [1, SPEC_1X.num_anchors, 2]},
                    {"name": "box_deltas", "shape": [1, SPEC_1X.num_anchors, 4]}],
        "input": {"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32"},
        "postprocess": {"score_threshold": 0.5, "nms_mode": "hard"},
        "precision": "fp32", "backend": "onnxruntime", "accuracy": _accuracy(),
    }
    if double_scale:
        _export(logits_2x, SIZE_2X, directory / "model_2x.onnx")
        files.append("model_2x.onnx")
        manifest["double_scale"] = {"input_size": list(SIZE_2X),
                                    "anchor_spec": SPEC_2X.to_dict(),
                                    "files": ["model_2x.onnx"], "accuracy": _accuracy()}
    manifest["files"] = {name: sha256_file(directory / name) for name in files}
    write_json_atomic(directory / "manifest.json", manifest)
    return directory


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return write_constant_artifact(tmp_path / "constant")


def _frame() -> np.ndarray:  # the input size: the frame -> input transform is the identity
    return np.full((64, 64, 3), 100, dtype=np.uint8)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_double_scale_decodes_the_merged_outputs_by_hand(artifact, backend):
    if not is_available(backend):
        pytest.skip(f"{backend} is not installed")
    found = Detector(artifact, backend=backend, double_scale=True).detect(_frame())
    # The 2x model's extra level: its anchor halved into 1x pixels, score sigmoid(10).
    extra = SPEC_2X.generate()[EXTRA_ROW] / 2.0
    # The shared level: the 1x anchor, score sigmoid of the two logits' mean.
    shared = SPEC_1X.generate()[SHARED_ROW]
    expected_boxes = np.clip(cxcywh_to_xyxy(np.stack([extra, shared])), 0, 64)
    order = np.argsort(found.class_ids)[::-1]  # class 1 (score ~1) first, then class 0
    np.testing.assert_allclose(found.xyxy[order], expected_boxes, atol=1e-3)
    np.testing.assert_allclose(found.scores[order],
                               1 / (1 + np.exp(-np.array([10.0, (LOGIT_1X + LOGIT_2X) / 2]))),
                               rtol=1e-5)


def test_the_manifest_says_which_coarse_levels_come_from_1x_alone(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["double_scale"]["coarse_levels_from_1x"] = 1  # the one shared level
    write_json_atomic(artifact / "manifest.json", manifest)
    found = Detector(artifact, double_scale=True).detect(_frame())
    shared = found[found.class_ids == 0]  # now the 1x logit alone, not the two's mean
    np.testing.assert_allclose(shared.scores, [1 / (1 + np.exp(-LOGIT_1X))], rtol=1e-5)
    assert len(found[found.class_ids == 1]) == 1  # the 2x run's extra level still adds


def test_single_scale_is_the_default_and_sees_only_the_1x_model(artifact):
    detector = Detector(artifact)
    found = detector.detect(_frame())
    assert list(found.class_ids) == [0]
    np.testing.assert_allclose(found.scores, [1 / (1 + np.exp(-LOGIT_1X))], rtol=1e-5)
    assert detector.backend.model_path.name == "model.onnx"
    batch = Detector(artifact, double_scale=True).detect_batch([_frame(), _frame()])
    assert [len(d) for d in batch] == [2, 2]


def test_double_scale_needs_a_2x_model_and_a_passed_check(tmp_path, artifact):
    plain = write_constant_artifact(tmp_path / "plain", double_scale=False)
    with pytest.raises(DoubleScaleError, match="--double-scale"):
        Detector(plain, double_scale=True)
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["double_scale"]["accuracy"] = _accuracy(passed=False)
    write_json_atomic(artifact / "manifest.json", manifest)
    with pytest.raises(UncheckedArtifactError, match="double-scale testing"):
        Detector(artifact, double_scale=True)
    assert len(Detector(artifact, double_scale=True, allow_unchecked=True).detect(_frame())) == 2
    assert len(Detector(artifact).detect(_frame())) == 1  # the 1x check still passed


def test_manifest_double_scale_section_is_validated(artifact):
    manifest_path = artifact / "manifest.json"
    good = json.loads(manifest_path.read_text())
    for change, message in (
        ({"input_size": [96, 96]}, "not twice"),
        ({"files": ["other.onnx"]}, "not in files"),
        ({"files": []}, "non-empty list"),
        ({"coarse_levels_from_1x": 2}, "coarse_levels_from_1x must be a whole number in 0..1"),
        ({"coarse_levels_from_1x": "1"}, "coarse_levels_from_1x"),
    ):
        write_json_atomic(manifest_path, {**good, "double_scale": {**good["double_scale"],
                                                                   **change}})
        with pytest.raises(ManifestError, match=message):
            load_manifest(artifact)
    (artifact / "model_2x.onnx").write_bytes(b"truncated")
    write_json_atomic(manifest_path, good)
    with pytest.raises(ManifestError, match=r"model_2x\.onnx"):
        Detector(artifact, double_scale=True)


def test_a_2x_model_without_the_1x_outputs_is_refused_at_load(artifact):
    # Another model's file in the 2x slot (its hash recorded): caught when the detector
    # loads, naming the file, not by a KeyError at the first frame.
    logits_2x = np.full((SPEC_2X.num_anchors, 2), LOW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ConstantHead(logits_2x).eval(),
                          (torch.zeros(1, 3, SIZE_2X[1], SIZE_2X[0]),),
                          str(artifact / "model_2x.onnx"), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["scores", "deltas"])
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"]["model_2x.onnx"] = sha256_file(artifact / "model_2x.onnx")
    write_json_atomic(artifact / "manifest.json", manifest)
    with pytest.raises(DoubleScaleError, match=r"model_2x\.onnx has outputs \['scores', "
                                               r"'deltas'\], without the 1x model's "
                                               r"\['cls_logits', 'box_deltas'\]"):
        Detector(artifact, double_scale=True)
    assert len(Detector(artifact).detect(_frame())) == 1  # single scale never reads it
