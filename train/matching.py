"""Target assignment: which ground-truth box each anchor (default box, prior) learns from.

Two matchers, both vectorised over anchors, returning one index per anchor:

* ``match_ssd`` (SSD, Liu et al. 2016, sec. 2.2; used by DAIPNet and both PASSD stages):
  every ground-truth box first takes its best-overlapping anchor ("bipartite" step, so no
  object goes unmatched), then every other anchor whose best IoU reaches the threshold is
  positive. Everything else is background.
* ``match_retinanet`` (RetinaNet, Lin et al. 2017, sec. 4; Detectron's ``Matcher``):
  IoU >= 0.5 positive, < 0.4 background, in between ignored; optionally each ground-truth
  box's best anchors are promoted to positive ("low-quality matches") so that small objects
  are not left without any positive.

Conventions: boxes are ``xyxy`` in input pixels; ``G`` may be 0. A threshold is met with ``>=``
as in ssd.pytorch's ``match`` and torchvision's ``Matcher`` (the papers say "higher than";
an IoU exactly at the threshold is a measure-zero event either way).
"""

from __future__ import annotations

import torch
from torch import Tensor

BACKGROUND = -1
IGNORE = -2


def _check_boxes(name: str, boxes: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (n, 4) as x1,y1,x2,y2, got {tuple(boxes.shape)}")


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """Areas ``(...,)`` of boxes ``(..., 4)``; inverted boxes count as empty."""
    wh = (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise IoU ``(M, G)`` between ``boxes1_xyxy (M, 4)`` and ``boxes2_xyxy (G, 4)``.

    Pairs of empty boxes have IoU 0 (not NaN).
    """
    _check_boxes("boxes1_xyxy", boxes1_xyxy)
    _check_boxes("boxes2_xyxy", boxes2_xyxy)
    top_left = torch.maximum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])
    bottom_right = torch.minimum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])
    inter_wh = (bottom_right - top_left).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = box_area(boxes1_xyxy)[:, None] + box_area(boxes2_xyxy)[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def aligned_box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Element-wise IoU ``(...,)`` of two box tensors ``(..., 4)`` of the same shape."""
    top_left = torch.maximum(boxes1_xyxy[..., :2], boxes2_xyxy[..., :2])
    bottom_right = torch.minimum(boxes1_xyxy[..., 2:], boxes2_xyxy[..., 2:])
    inter_wh = (bottom_right - top_left).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = box_area(boxes1_xyxy) + box_area(boxes2_xyxy) - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


@torch.no_grad()
def match_ssd(anchors_xyxy: Tensor, gt_xyxy: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """SSD matching.

    Args:
        anchors_xyxy: ``(A, 4)`` anchors.
        gt_xyxy: ``(G, 4)`` ground-truth boxes, ``G >= 0``.
        iou_threshold: IoU from which a non-forced anchor is positive.

    Returns:
        ``(A,)`` int64: index of the matched ground-truth box, ``BACKGROUND`` (-1) otherwise.
        Each ground-truth box's best anchor is positive for that box whatever its IoU (if
        above 0); when two boxes share a best anchor the later box keeps it (ssd.pytorch's
        loop order).
    """
    num_anchors = anchors_xyxy.shape[0]
    matched = torch.full((num_anchors,), BACKGROUND, dtype=torch.long, device=anchors_xyxy.device)
    if gt_xyxy.shape[0] == 0 or num_anchors == 0:
        return matched
    iou = box_iou(anchors_xyxy, gt_xyxy)  # (A, G)
    best_iou, best_gt = iou.max(dim=1)
    matched = torch.where(best_iou >= iou_threshold, best_gt, matched)
    # Forced matches: scatter each box index onto its best anchor; "amax" makes the outcome
    # deterministic (highest box index wins) where index_put with duplicates would not be.
    # A box overlapping no anchor at all forces nothing: ssd.pytorch would hand it anchor 0
    # (argmax of all zeros), a meaningless match that can also steal that anchor.
    best_iou_per_gt, best_anchor_per_gt = iou.max(dim=0)  # (G,)
    gt_index = torch.arange(gt_xyxy.shape[0], device=anchors_xyxy.device)
    gt_index = torch.where(best_iou_per_gt > 0, gt_index, BACKGROUND)
    forced = torch.full_like(matched, BACKGROUND)
    forced = forced.scatter_reduce(0, best_anchor_per_gt, gt_index, reduce="amax")
    return torch.where(forced >= 0, forced, matched)


@torch.no_grad()
def match_retinanet(
    anchors_xyxy: Tensor,
    gt_xyxy: Tensor,
    pos: float = 0.5,
    neg: float = 0.4,
    allow_low_quality: bool = True,
) -> Tensor:
    """RetinaNet matching with an ignore band.

    Args:
        anchors_xyxy: ``(A, 4)`` anchors.
        gt_xyxy: ``(G, 4)`` ground-truth boxes, ``G >= 0``.
        pos: IoU from which an anchor is positive.
        neg: IoU below which an anchor is background; ``[neg, pos)`` is ignored.
        allow_low_quality: also make positive, for each ground-truth box, every anchor whose
            IoU equals that box's highest IoU (ties included, as in Detectron); such an anchor
            keeps its own best box, like Detectron's ``set_low_quality_matches_``. A box that
            overlaps no anchor at all (highest IoU 0) creates no positive: Detectron would
            promote every anchor then.

    Returns:
        ``(A,)`` int64: matched ground-truth index, ``BACKGROUND`` (-1) or ``IGNORE`` (-2).
    """
    if not neg <= pos:
        raise ValueError(f"need neg <= pos, got neg={neg}, pos={pos}")
    num_anchors = anchors_xyxy.shape[0]
    if gt_xyxy.shape[0] == 0 or num_anchors == 0:
        return torch.full((num_anchors,), BACKGROUND, dtype=torch.long,
                          device=anchors_xyxy.device)
    iou = box_iou(anchors_xyxy, gt_xyxy)
    best_iou, best_gt = iou.max(dim=1)
    # torch.where rather than masked assignment: no host synchronisation on the GPU.
    matched = torch.where(best_iou >= pos, best_gt, IGNORE)
    matched = torch.where(best_iou < neg, BACKGROUND, matched)
    if allow_low_quality:
        highest_per_gt = iou.max(dim=0).values  # (G,)
        is_best_for_some_gt = (iou == highest_per_gt[None, :]) & (highest_per_gt[None, :] > 0)
        matched = torch.where(is_best_for_some_gt.any(dim=1), best_gt, matched)
    return matched


__all__ = [
    "BACKGROUND",
    "IGNORE",
    "aligned_box_iou",
    "box_area",
    "box_iou",
    "match_retinanet",
    "match_ssd",
]
