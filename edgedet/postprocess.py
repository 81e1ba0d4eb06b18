"""From per-anchor boxes and class scores to final detections (threshold, top-k, NMS).

Decoding deltas against anchors happens before this (``edgedet.box_coding.decode``); turning
logits into probabilities (softmax / sigmoid) is the caller's too, since it depends on the
head. This module only selects.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from edgedet.boxes import batched_nms, batched_soft_nms, box_voting, topk_candidates

NmsMode = Literal["hard", "soft", "soft+voting"]
NMS_MODES: tuple[str, ...] = ("hard", "soft", "soft+voting")


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
        iou_threshold: hard-NMS suppression threshold (also the linear Soft-NMS threshold).
        max_detections: at most this many detections are returned.
        pre_nms_top_k: only the best ``pre_nms_top_k`` (anchor, class) pairs enter NMS
            (0 = no limit).
        nms_mode: ``hard`` (greedy NMS), ``soft`` (Gaussian Soft-NMS) or ``soft+voting``
            (Soft-NMS, then HAR-Net box voting over the pre-NMS candidates).

    Returns:
        ``(xyxy (N, 4) float32, scores (N,) float32, class_ids (N,) int64)``, best first.
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
    anchor_idx, class_ids, cand_scores = topk_candidates(scores, pre_nms_top_k, score_threshold)
    cand_boxes = boxes_xyxy[anchor_idx]
    if nms_mode == "hard":
        keep = batched_nms(cand_boxes, cand_scores, class_ids, iou_threshold)[:max_detections]
        return cand_boxes[keep], cand_scores[keep], class_ids[keep]
    # Soft-NMS prunes only boxes decayed below 0.001 (Bodla et al.'s setting), or below a
    # still lower caller threshold; the caller's threshold applies to the decayed scores after.
    prune_threshold = score_threshold if 0 < score_threshold < 0.001 else 0.001
    keep, new_scores, kept_iou = batched_soft_nms(
        cand_boxes, cand_scores, class_ids, iou_threshold=iou_threshold,
        sigma=soft_nms_sigma, score_threshold=prune_threshold, stop_at=score_threshold,
        return_iou=True,
    )
    selected = np.flatnonzero(new_scores > score_threshold)[:max_detections]
    keep, new_scores = keep[selected], new_scores[selected]
    out_boxes, out_classes = cand_boxes[keep], class_ids[keep]
    if nms_mode == "soft+voting":
        # Scores stay the Soft-NMS ones (Detectron's "ID" voting): HAR-Net's p = max_i p_i
        # would lift every surviving duplicate back to its group's top score, undoing the
        # rescoring Soft-NMS just did. The top box of a group gets max_i p_i either way.
        out_boxes, _ = box_voting(
            out_boxes, out_classes, cand_boxes, cand_scores, class_ids, voting_iou_threshold,
            kept_iou=None if kept_iou is None else kept_iou[selected],
        )
    return out_boxes, new_scores.astype(np.float32), out_classes
