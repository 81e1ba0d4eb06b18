"""From per-anchor boxes and class scores to final detections (threshold, top-k, NMS).

Decoding deltas against anchors happens before this (``edgedet.box_coding.decode``); turning
logits into probabilities (softmax / sigmoid) is the caller's too, since it depends on the
head. This module only selects, in one compiled call (``edgedet.kernels.select_frame``) or,
when more pairs pass than the top-k, numpy's top-k and one compiled call; the numpy functions
of ``edgedet.boxes`` are the reference the kernels are tested against.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from edgedet import kernels
from edgedet.boxes import topk_candidates

NmsMode = Literal["hard", "soft", "soft+voting"]
NMS_MODES: tuple[str, ...] = ("hard", "soft", "soft+voting")
_INT64_MAX = int(np.iinfo(np.int64).max)


def select_detections(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float = 0.05,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    pre_nms_top_k: int = 1000,
    nms_mode: NmsMode = "hard",
    soft_nms_sigma: float = 0.5,
    voting_iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Select final detections from class-agnostic boxes and per-class scores.

    Args:
        boxes_xyxy: ``(A, 4)`` decoded boxes, one per anchor.
        scores: ``(A, K)`` class probabilities (no background column).
        score_threshold: candidates at or below it are dropped before NMS.
        iou_threshold: hard-NMS suppression threshold.
        max_detections: at most this many detections are returned.
        pre_nms_top_k: only the best ``pre_nms_top_k`` (anchor, class) pairs enter NMS
            (0 = no limit).
        nms_mode: ``hard`` (greedy NMS), ``soft`` (Gaussian Soft-NMS) or ``soft+voting``
            (Soft-NMS, then HAR-Net box voting over the pre-NMS candidates).

    Returns:
        ``(xyxy (N, 4) float32, scores (N,) float32, class_ids (N,) int64)``, best first.

    Raises:
        ValueError: wrong shapes, an unknown mode, a top-k or ``max_detections`` that is not
            a whole number >= 0, an IoU threshold outside [0, 1], ``soft_nms_sigma <= 0``, or
            a NaN / infinite score threshold. (Until 2026-12-06 some of these passed: an
            ``iou_threshold`` of 2 meant no suppression, ``max_detections=-1`` dropped the
            last detection.)
    """
    if nms_mode not in NMS_MODES:
        raise ValueError(f"nms_mode must be one of {NMS_MODES}, got {nms_mode!r}")
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes_xyxy.ndim != 2 or boxes_xyxy.shape[1] != 4:
        raise ValueError(f"boxes_xyxy must have shape (A, 4), got {boxes_xyxy.shape}")
    if scores.ndim != 2 or scores.shape[0] != boxes_xyxy.shape[0]:
        raise ValueError(
            f"scores must have shape ({boxes_xyxy.shape[0]}, K), got {scores.shape}"
        )
    if not 0 <= iou_threshold <= 1 or not 0 <= voting_iou_threshold <= 1:
        raise ValueError(f"IoU thresholds must be in [0, 1], got {iou_threshold} and "
                         f"{voting_iou_threshold}")
    if not soft_nms_sigma > 0:  # also nan
        raise ValueError(f"soft_nms_sigma must be > 0, got {soft_nms_sigma}")
    if not isinstance(pre_nms_top_k, int | np.integer) or pre_nms_top_k < 0:
        raise ValueError(f"pre_nms_top_k must be a whole number >= 0 (0 = no limit), "
                         f"got {pre_nms_top_k!r}")
    if not isinstance(max_detections, int | np.integer) or max_detections < 0:
        raise ValueError(f"max_detections must be a whole number >= 0, got {max_detections!r}")
    if not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be finite, got {score_threshold}")
    # Soft-NMS prunes only boxes decayed below 0.001 (Bodla et al.'s setting), or below a
    # still lower caller threshold; the caller's threshold applies to the decayed scores after.
    # Box voting keeps the Soft-NMS scores (Detectron's "ID" voting): HAR-Net's p = max_i p_i
    # would lift every surviving duplicate back to its group's top score, undoing the
    # rescoring Soft-NMS just did. The top box of a group gets max_i p_i either way.
    prune_threshold = score_threshold if 0 < score_threshold < 0.001 else 0.001
    # (The kernels take int64 counts; "more than any frame has" is the same as their maximum.)
    settings = (float(score_threshold), nms_mode != "hard", nms_mode == "soft+voting",
                float(iou_threshold), float(soft_nms_sigma), float(prune_threshold),
                min(int(max_detections), _INT64_MAX), float(voting_iou_threshold))
    *selected, cut = kernels.select_frame(np.ascontiguousarray(boxes_xyxy),
                                          np.ascontiguousarray(scores),
                                          min(int(pre_nms_top_k), _INT64_MAX), *settings)
    if not cut:
        return selected[0], selected[1], selected[2]
    # More pairs than pre_nms_top_k: numpy's cut, whose order of equal scores the kernel
    # does not reproduce (select_frame's docstring).
    anchor_idx, class_ids, cand_scores = topk_candidates(scores, pre_nms_top_k, score_threshold)
    return kernels.select_candidates(np.ascontiguousarray(boxes_xyxy[anchor_idx]), cand_scores,
                                     class_ids, *settings)
