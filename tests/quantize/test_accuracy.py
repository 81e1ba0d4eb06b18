"""``quantize.accuracy``: metrics on toy cases with known answers, and the PyTorch reference
path giving the SDK's detections for an fp32 artifact of the same model."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.artifact import Artifact
from edgedet.artifact_writer import write_artifact
from edgedet.data.sample import Sample
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.detections import Detections
from edgedet.detector import Detector
from edgedet.preprocess import PreprocessConfig
from quantize.accuracy import (
    DetectorRun,
    coco_metrics,
    compare_to_reference,
    latency_summary,
    match_detections,
    reference_detector,
    run_detector,
)
from quantize.manifest import build_manifest

CLASSES = ("a", "b")


def toy_samples() -> list[Sample]:
    image = np.zeros((100, 100, 3), np.uint8)
    return [
        Sample(image, np.array([[10, 10, 50, 50]], np.float32), np.array([0]), 1, "1.png"),
        Sample(image, np.array([[20, 20, 80, 60], [0, 0, 30, 30]], np.float32),
               np.array([1, 0]), 2, "2.png"),
    ]


def as_detections(sample: Sample, score: float = 0.9, shift: float = 0.0) -> Detections:
    return Detections(sample.boxes_xyxy + shift, np.full(len(sample.class_ids), score),
                      sample.class_ids, CLASSES)


def test_perfect_detections_give_ap_100_and_identical_runs_delta_zero():
    samples = toy_samples()
    perfect = [as_detections(s) for s in samples]
    metrics = coco_metrics(samples, perfect, CLASSES)
    assert metrics["AP"] == pytest.approx(100.0) and metrics["AP50"] == pytest.approx(100.0)
    assert metrics["APl"] == -1.0  # no object > 96^2 px: undefined, kept as -1
    run = DetectorRun(perfect, [1.0, 3.0])
    summary = compare_to_reference(samples, CLASSES, run, metrics, run)
    assert summary["delta_AP"] == 0.0
    assert summary["agreement"] == 1.0 and summary["mean_iou"] == pytest.approx(1.0)
    assert (summary["reference_count"], summary["matched_count"]) == (3, 3)
    assert summary["latency_p50_ms"] == pytest.approx(2.0)


def test_agreement_counts_class_iou_and_score():
    samples = toy_samples()
    reference = [as_detections(s) for s in samples]
    # Shifted by 10 px on a 40 px box: IoU = 30*30 / (2*1600 - 900) = 0.391 < 0.5.
    shifted = [as_detections(s, shift=10.0) for s in samples]
    assert match_detections(reference, shifted)["agreement"] == 0.0
    # Shifted by 2 px: IoU = 38*38 / (2*1600 - 1444) = 0.822 for the 40 px boxes.
    close = match_detections(reference[:1], [as_detections(samples[0], shift=2.0)])
    assert close["agreement"] == 1.0 and close["mean_iou"] == pytest.approx(1444 / 1756)
    wrong_class = Detections(samples[0].boxes_xyxy, [0.9], [1], CLASSES)
    assert match_detections(reference[:1], [wrong_class])["agreement"] == 0.0
    # Reference boxes at or below the score threshold are not counted; a low-score candidate
    # still matches a counted one.
    faint = [as_detections(s, score=0.2) for s in samples]
    assert match_detections(faint, reference)["reference_count"] == 0
    assert match_detections(reference, faint)["agreement"] == 1.0
    # AP of the shifted boxes drops: AP50 0 at IoU 0.39.
    assert coco_metrics(samples, shifted, CLASSES)["AP50"] == 0.0
    assert latency_summary([1.0, 2.0, 3.0, 4.0, 5.0])["latency_p90_ms"] == pytest.approx(4.6)


def test_reference_matches_the_sdk_on_an_fp32_artifact(exported, tmp_path):
    model, input_size, onnx_path = exported("passd_mobilenet")
    config = {"architecture": "passd_mobilenet", "class_names": ["x", "y", "z"],
              "preprocess": PreprocessConfig(input_size=input_size).to_dict(),
              "postprocess": {"score_threshold": 0.05, "iou_threshold": 0.45,
                              "max_detections": 50}}
    manifest = build_manifest(model, config, "ref_check", "fp32", "onnxruntime")
    artifact = Artifact.load(
        write_artifact(tmp_path / "ref_check", {"model.onnx": onnx_path}, manifest))
    # Frames of another size than the input: both paths resize and map boxes back.
    samples = list(SyntheticScenes(2, seed=1, config=SyntheticConfig(image_size=(200, 150))))
    reference = run_detector(reference_detector(model, artifact, "cpu").detect, samples,
                             progress=False)
    unchecked = Detector(artifact, backend="onnxruntime", allow_unchecked=True)  # checked here
    deployed = run_detector(unchecked.detect, samples, progress=False)
    assert sum(len(d) for d in reference.detections) > 0
    agreement = match_detections(reference.detections, deployed.detections,
                                 score_threshold=0.05)
    assert agreement["agreement"] >= 0.95 and agreement["mean_iou"] > 0.99
