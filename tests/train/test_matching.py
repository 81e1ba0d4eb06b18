"""Tests of train/matching.py: IoU and the SSD / RetinaNet anchor matchers.

Most boxes are 10 px wide strips ``[0, 0, 10, h]`` against the ground truth ``[0, 0, 10, 10]``,
whose IoU is exactly ``h / 10``.
"""

from __future__ import annotations

import pytest
import torch

from train.matching import (
    BACKGROUND,
    IGNORE,
    aligned_box_iou,
    box_iou,
    match_retinanet,
    match_ssd,
)


def strip(h: float, x: float = 0.0, y: float = 0.0) -> list[float]:
    """A 10 px wide box of height ``h`` with top-left corner ``(x, y)``."""
    return [x, y, x + 10.0, y + h]


GT_A = strip(10)  # IoU with strip(h) is h / 10
GT_B = strip(10, 100, 100)  # IoU with strip(h, 100, 100) is h / 10


def test_box_iou_golden_values():
    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    boxes2 = torch.tensor([
        [1.0, 1.0, 3.0, 3.0],  # overlap 1, union 4 + 4 - 1 = 7
        [0.0, 0.0, 2.0, 2.0],  # identical
        [5.0, 5.0, 6.0, 6.0],  # disjoint
        [0.5, 0.5, 1.5, 1.5],  # contained: 1 / 4
    ])
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (1, 4)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0, 0.25]]))
    torch.testing.assert_close(box_iou(boxes2, boxes1), iou.T)


def test_box_iou_empty_inputs_and_empty_boxes():
    assert box_iou(torch.zeros(3, 4), torch.zeros(0, 4)).shape == (3, 0)
    degenerate = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(degenerate, degenerate).item() == 0.0  # not NaN
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        box_iou(torch.zeros(4), torch.zeros(1, 4))


def test_aligned_box_iou_pairs_rows():
    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], strip(3)])
    boxes2 = torch.tensor([[1.0, 1.0, 3.0, 3.0], GT_A])
    torch.testing.assert_close(aligned_box_iou(boxes1, boxes2), torch.tensor([1 / 7, 0.3]))


def test_match_ssd_forces_each_gt_best_anchor_even_below_threshold():
    anchors = torch.tensor([
        strip(6),            # IoU 0.6 with A -> positive by threshold
        strip(4),            # IoU 0.4 with A -> background
        strip(3, 100, 100),  # IoU 0.3 with B, B's best -> forced positive
        strip(2, 100, 100),  # IoU 0.2 with B -> background
        strip(5),            # IoU 0.5 with A -> positive (threshold is inclusive)
    ])
    matched = match_ssd(anchors, torch.tensor([GT_A, GT_B]), iou_threshold=0.5)
    assert matched.dtype == torch.long
    assert matched.tolist() == [0, BACKGROUND, 1, BACKGROUND, 0]


def test_match_ssd_threshold_positive_takes_its_best_gt():
    # The anchor overlaps A by 0.6 and C = [0, 0, 10, 7] by 6/7: it belongs to C.
    gt = torch.tensor([GT_A, strip(7)])
    anchors = torch.tensor([strip(6), strip(10), strip(7)])
    assert match_ssd(anchors, gt).tolist() == [1, 0, 1]


def test_match_ssd_shared_best_anchor_is_deterministic():
    # Both boxes have anchor 0 as their best; as in ssd.pytorch's loop the later box keeps it.
    gt = torch.tensor([GT_A, strip(9)])
    anchors = torch.tensor([strip(9.5), strip(10, 50, 50)])
    for _ in range(3):
        assert match_ssd(anchors, gt).tolist() == [1, BACKGROUND]


def test_match_ssd_gt_overlapping_nothing_forces_nothing():
    # argmax over all-zero IoUs would be anchor 0, which belongs to A.
    anchors = torch.tensor([strip(3), strip(10, 50, 50)])
    matched = match_ssd(anchors, torch.tensor([GT_A, strip(10, 300, 300)]))
    assert matched.tolist() == [0, BACKGROUND]


def test_match_ssd_without_gt_is_all_background():
    matched = match_ssd(torch.tensor([strip(10), strip(5)]), torch.zeros(0, 4))
    assert matched.tolist() == [BACKGROUND, BACKGROUND]
    assert matched.dtype == torch.long


def test_match_retinanet_ignore_band():
    anchors = torch.tensor([strip(10), strip(5), strip(4.5), strip(4), strip(3.9)])
    matched = match_retinanet(anchors, torch.tensor([GT_A]), pos=0.5, neg=0.4,
                              allow_low_quality=False)
    assert matched.tolist() == [0, 0, IGNORE, IGNORE, BACKGROUND]


def test_match_retinanet_low_quality_matches():
    anchors = torch.tensor([
        strip(10),           # A, IoU 1
        strip(3, 100, 100),  # B's best, IoU 0.3
        strip(2, 100, 100),  # IoU 0.2 with B
    ])
    gt = torch.tensor([GT_A, GT_B])
    assert match_retinanet(anchors, gt, allow_low_quality=True).tolist() == [0, 1, BACKGROUND]
    assert match_retinanet(anchors, gt, allow_low_quality=False).tolist() == [
        0, BACKGROUND, BACKGROUND]


def test_match_retinanet_low_quality_ties_and_unreachable_gt():
    # Two anchors tie as B's best (0.3 each) and both become positive; D overlaps nothing and
    # must not turn the zero-IoU anchors into positives.
    anchors = torch.tensor([strip(3, 100, 100), strip(3, 100, 107), strip(10, 300, 300)])
    gt = torch.tensor([GT_B, strip(10, 600, 600)])
    assert match_retinanet(anchors, gt).tolist() == [0, 0, BACKGROUND]


def test_match_retinanet_without_gt_and_bad_thresholds():
    anchors = torch.tensor([strip(10), strip(5)])
    assert match_retinanet(anchors, torch.zeros(0, 4)).tolist() == [BACKGROUND, BACKGROUND]
    with pytest.raises(ValueError, match="neg <= pos"):
        match_retinanet(anchors, torch.tensor([GT_A]), pos=0.4, neg=0.5)
