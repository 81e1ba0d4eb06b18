"""The accuracy check: the full-precision PyTorch reference vs each deployed artifact.

The reference is ``edgedet.Detector`` with the checkpoint's model as its backend
(``TorchBackend``: ``forward_export``, on GPU when there is one): exactly the SDK's
pre-processing, decoding and selection with the artifact manifest's post-processing settings,
so any difference measured is the deployed model's, never the decoding's. Each artifact is run
through ``edgedet.Detector(artifact).detect``, as a user would.

Metrics per detector: COCO AP, AP50, AP75, APs/APm/APl, AR (pycocotools), in AP points
(0-100; -1 where undefined), p50 / p90 latency of one ``detect`` call in ms. Per artifact,
against the reference: ``delta_AP`` (artifact AP - reference AP, AP points: negative is a
drop) and the agreement of detections (``match_detections``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn
from tqdm import tqdm

from edgedet.artifact import Artifact, accuracy_section
from edgedet.boxes import box_iou
from edgedet.cpu_features import host_description
from edgedet.data.evaluate import detections_to_coco_results, evaluate_coco, samples_to_coco_gt
from edgedet.data.sample import Sample
from edgedet.detections import Detections
from edgedet.detector import Detector
from edgedet.models.torch_backend import TorchBackend

# Agreement counts reference detections above this score (the ones a user would see).
AGREEMENT_SCORE_THRESHOLD = 0.3
AGREEMENT_IOU_THRESHOLD = 0.5


def reference_detector(model: nn.Module, artifact: Artifact, device: str | None = None,
                       double_scale: bool = False) -> Detector:
    """The full-precision reference: ``model`` (training form, not rewritten) behind the
    SDK's pre- and post-processing of ``artifact``, i.e. ``Detector`` with a ``TorchBackend``.

    Args:
        device: torch device; default CUDA when available, else CPU.
        double_scale: the reference of double-scale testing (``model`` at the artifact's
            input size and at its ``double_scale`` section's 2x size, merged by the SDK).
    """
    input_size = tuple(artifact.manifest["preprocess"]["input_size"])
    backend = TorchBackend(model, input_size, device)  # type: ignore[arg-type]
    second = None
    if double_scale:
        size_2x = tuple(artifact.manifest["double_scale"]["input_size"])
        second = TorchBackend(model, size_2x, device)  # type: ignore[arg-type]
    # allow_unchecked: this is the check.
    return Detector(artifact, backend=backend, allow_unchecked=True, settings="evaluation",
                    double_scale=double_scale, double_scale_backend=second)


@dataclass
class DetectorRun:
    """Detections of every eval image and the time of each ``detect`` call."""

    detections: list[Detections]
    latencies_ms: list[float]


def run_detector(detect: Callable[[np.ndarray], Detections], samples: Sequence[Sample],
                 progress: bool = True, what: str = "detect", warmup: int = 2) -> DetectorRun:
    """Call ``detect`` on every sample's image, timing each call.

    The first ``warmup`` calls (on the first image) are run and discarded first, so lazy
    initialisation does not count as latency.
    """
    for _ in range(min(warmup, len(samples))):
        detect(samples[0].image)
    detections, latencies = [], []
    for sample in tqdm(samples, desc=what, disable=not progress):
        start = time.perf_counter()
        detections.append(detect(sample.image))
        latencies.append((time.perf_counter() - start) * 1000.0)
    return DetectorRun(detections, latencies)


def coco_metrics(samples: Sequence[Sample], detections: Sequence[Detections],
                 class_names: Sequence[str]) -> dict[str, float]:
    """COCO box metrics of ``detections`` (one per sample) in AP points (0-100, -1 undefined).

    Keys: ``AP, AP50, AP75, APs, APm, APl, AR``.
    """
    if len(samples) != len(detections):
        raise ValueError(f"{len(samples)} samples but {len(detections)} detection sets")
    ground_truth = samples_to_coco_gt(samples, class_names)
    results: list[dict] = []
    for sample, found in zip(samples, detections, strict=True):
        results.extend(detections_to_coco_results(sample.image_id, found.xyxy, found.scores,
                                                  found.class_ids))
    metrics = evaluate_coco(ground_truth, results).to_dict()
    return {key: (value * 100.0 if value >= 0 else -1.0) for key, value in metrics.items()}


def match_detections(reference: Sequence[Detections], candidate: Sequence[Detections],
                     score_threshold: float = AGREEMENT_SCORE_THRESHOLD,
                     iou_threshold: float = AGREEMENT_IOU_THRESHOLD) -> dict[str, float | int]:
    """How well ``candidate`` reproduces ``reference``, image by image.

    Each reference detection scoring above ``score_threshold`` (best first) is matched to the
    unmatched candidate detection of the same class with the highest IoU, if that IoU exceeds
    ``iou_threshold``. Candidates of any score may match, so a box whose score moved just
    below the threshold still counts as found.

    Returns:
        ``{"agreement": matched / reference count (1.0 when the reference has none),
        "mean_iou": mean IoU of the matches (1.0 when there are none), "reference_count",
        "matched_count"}``.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate")
    total = matched = 0
    ious: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        ref = ref[np.argsort(-ref.scores, kind="stable")]
        ref = ref[ref.scores > score_threshold]
        total += len(ref)
        if not len(ref) or not len(cand):
            continue
        iou = box_iou(ref.xyxy, cand.xyxy)
        iou[ref.class_ids[:, None] != cand.class_ids[None, :]] = 0.0
        used = np.zeros(len(cand), dtype=bool)
        for row in range(len(ref)):
            overlaps = np.where(used, 0.0, iou[row])
            best = int(np.argmax(overlaps))
            if overlaps[best] > iou_threshold:
                used[best] = True
                matched += 1
                ious.append(float(overlaps[best]))
    return {
        "agreement": matched / total if total else 1.0,
        "mean_iou": float(np.mean(ious)) if ious else 1.0,
        "reference_count": total,
        "matched_count": matched,
    }


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """``{"latency_p50_ms", "latency_p90_ms"}`` of per-call times."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    return {"latency_p50_ms": float(np.percentile(values, 50)),
            "latency_p90_ms": float(np.percentile(values, 90))}


def compare_to_reference(samples: Sequence[Sample], class_names: Sequence[str],
                         reference: DetectorRun, reference_metrics: Mapping[str, float],
                         candidate: DetectorRun) -> dict[str, float | int]:
    """The accuracy summary of one artifact: its metrics, ``delta_AP`` / ``delta_AP50``
    against the reference (AP points, negative = drop), agreement and latency."""
    metrics = coco_metrics(samples, candidate.detections, class_names)
    return {
        **metrics,
        "reference_AP": reference_metrics["AP"],
        "reference_AP50": reference_metrics["AP50"],
        "delta_AP": metrics["AP"] - reference_metrics["AP"],
        "delta_AP50": metrics["AP50"] - reference_metrics["AP50"],
        **match_detections(reference.detections, candidate.detections),
        **latency_summary(candidate.latencies_ms),
    }


class AccuracyCheck:
    """The reference run once on the eval images, then any number of artifacts against it
    (the accuracy-controlled INT8 loop checks several builds of one artifact).

    Args:
        model: the checkpoint's model (training form).
        samples: the eval images with their ground truth.
        eval_data: ``ImageSet.describe()`` of them, for the accuracy sections.
        max_drop: the allowed AP drop (AP points).
        backend: the ``edgedet.backends`` entry the artifacts run on here.
        device: torch device of the reference (None: CUDA when available).
        progress: progress bars.
        allow_weak_reference: check artifacts against a reference that scores no more than
            ``max_drop`` AP (else a ``ValueError``; ``ConvertConfig.allow_weak_reference``).
    """

    def __init__(self, model: nn.Module, samples: Sequence[Sample],
                 eval_data: Mapping[str, object], max_drop: float, backend: str,
                 device: str | None = None, progress: bool = True,
                 allow_weak_reference: bool = False) -> None:
        self.model = model
        self.samples = list(samples)
        self.eval_data = dict(eval_data)
        self.max_drop = max_drop
        self.backend = backend
        self.device = device
        self.progress = progress
        self.allow_weak_reference = allow_weak_reference
        # Keyed by double_scale: single-scale and double-scale testing each have their own.
        self._references: dict[bool, tuple[DetectorRun, dict[str, float], str]] = {}

    def reference(self, artifact: Artifact, double_scale: bool = False
                  ) -> tuple[DetectorRun, dict[str, float], str]:
        """``(run, metrics, torch device)`` of the reference, run on first use with the
        pre- and post-processing settings of ``artifact``'s manifest (and with double-scale
        testing when ``double_scale``)."""
        if double_scale not in self._references:
            detector = reference_detector(self.model, artifact, self.device, double_scale)
            what = "reference, double-scale" if double_scale else "reference"
            run = run_detector(detector.detect, self.samples, self.progress, what)
            class_names = tuple(artifact.manifest["class_names"])
            metrics = coco_metrics(self.samples, run.detections, class_names)
            weak = float(metrics["AP"]) <= self.max_drop
            if weak and not double_scale and not self.allow_weak_reference:
                # Every artifact would pass, a broken one too: stop before converting more.
                # (A weak double-scale reference fails only that section: inconclusive.)
                raise ValueError(
                    f"the {what} scores AP {float(metrics['AP']):.2f} on the "
                    f"{len(self.samples)} eval images, not above --max-drop {self.max_drop:g}: "
                    "the accuracy check could not tell a broken artifact from a good one (an "
                    "untrained or diverged checkpoint, or eval data the model was not trained "
                    "for?); --allow-weak-reference goes on, for a smoke test")
            self._references[double_scale] = (
                run, metrics, str(detector.backend.device))  # type: ignore[attr-defined]
        return self._references[double_scale]

    def reference_summary(self, double_scale: bool = False) -> dict[str, object]:
        """The reference's metrics, latency and device (after a first ``check``)."""
        assert double_scale in self._references, "no artifact checked yet"
        run, metrics, device = self._references[double_scale]
        return {**metrics, **latency_summary(run.latencies_ms), "device": device}

    def check(self, artifact: Artifact, double_scale: bool = False
              ) -> tuple[dict[str, object], DetectorRun]:
        """The manifest ``accuracy`` section of ``artifact`` (through ``Detector``, as a user
        runs it) and its run; with ``double_scale``, of its double-scale testing against the
        reference's (the ``accuracy`` of its ``double_scale`` section)."""
        reference_run, reference_metrics, _ = self.reference(artifact, double_scale)
        detector = Detector(artifact, backend=self.backend, allow_unchecked=True,  # the check
                            settings="evaluation", double_scale=double_scale)
        what = f"{artifact.name}, double-scale" if double_scale else artifact.name
        run = run_detector(detector.detect, self.samples, self.progress, what)
        metrics = compare_to_reference(self.samples, tuple(artifact.manifest["class_names"]),
                                       reference_run, reference_metrics, run)
        section = accuracy_section(metrics, self.max_drop, self.eval_data,
                                   self.allow_weak_reference)
        # INT8 (VNNI or not) and OpenVINO's float ops (bf16 or not) depend on the kind of CPU.
        return {**section, "checked_on": host_description()}, run
