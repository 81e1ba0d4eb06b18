"""The selection kernels: top-k, class-aware hard NMS or Gaussian Soft-NMS + box voting, one
call per image (``edgedet.postprocess.select_detections`` calls them)."""

from __future__ import annotations

import math

import numpy as np

from edgedet.kernels._common import ZERO, compiled, fmax, fmin


@compiled(inline="always")
def _iou(boxes, areas, i, j):  # type: ignore[no-untyped-def]
    """``boxes._iou_one_to_many``'s value for the pair (i, j), float32 (0 where the union is
    not positive, NaN included)."""
    w = fmax(fmin(boxes[i, 2], boxes[j, 2]) - fmax(boxes[i, 0], boxes[j, 0]), ZERO)
    h = fmax(fmin(boxes[i, 3], boxes[j, 3]) - fmax(boxes[i, 1], boxes[j, 1]), ZERO)
    inter = w * h
    union = areas[i] + areas[j] - inter
    return inter / union if union > ZERO else ZERO


@compiled()
def select_frame(boxes_xyxy, scores, pre_nms_top_k, score_threshold, soft, voting,
                 iou_threshold, sigma, prune_threshold, max_detections, voting_iou_threshold
                 ):  # type: ignore[no-untyped-def]
    """``postprocess.select_detections`` in one call, unless more than ``pre_nms_top_k``
    (anchor, class) pairs score above the threshold with equal scores among the best: the
    pairs in ``boxes.topk_candidates``'s order (decreasing score, equal scores by index), then
    ``select_candidates``.

    Args:
        boxes_xyxy: ``(A, 4)`` float32. scores: ``(A, K)`` float32. pre_nms_top_k: int
            (0: no limit). The rest as for ``select_candidates``.

    Returns:
        ``select_candidates``'s three arrays and ``cut``: True when more pairs passed than
        ``pre_nms_top_k`` and two of the best ``pre_nms_top_k + 1`` scores are equal, and
        then the arrays are empty: the caller cuts with ``boxes.topk_candidates``. Its
        partition leaves equal scores in an order of its own, INT8 heads give many equal
        scores, and that order decides which of two tied boxes NMS keeps: the zoo HAR-Net's
        evaluation AP moved by 0.06 with equal scores in index order instead.
    """
    num_classes = scores.shape[1]
    flat = scores.ravel()
    threshold32 = np.float32(score_threshold)
    count = 0
    for index in range(flat.size):
        if flat[index] > threshold32:
            count += 1
    candidates = np.empty(count, np.int64)
    count = 0
    for index in range(flat.size):
        if flat[index] > threshold32:
            candidates[count] = index
            count += 1
    if 0 < pre_nms_top_k < count:
        # Only the best k + 1 are needed in order: those scoring at least the (k + 1)-th
        # best score (found by a partition, not a sort of every pair: evaluation frames pass
        # 10 000+), sorted, with every pair tied at that score (all of them when every score
        # is equal), which sort after the better ones.
        negated = -flat[candidates]
        kth_best = -np.partition(negated, pre_nms_top_k)[pre_nms_top_k]
        candidates = candidates[-negated >= kth_best]
    candidates = candidates[np.argsort(-flat[candidates], kind="mergesort")]
    if 0 < pre_nms_top_k < count:
        # numpy's cut gives these same pairs in this same order when no two of the first
        # k + 1 scores are equal; otherwise its order of the equal ones is its own.
        for c in range(pre_nms_top_k):
            if flat[candidates[c]] == flat[candidates[c + 1]]:
                return (np.empty((0, 4), np.float32), np.empty(0, np.float32),
                        np.empty(0, np.int64), True)
        candidates = candidates[:pre_nms_top_k]
        count = pre_nms_top_k
    boxes = np.empty((count, 4), np.float32)
    class_ids = np.empty(count, np.int64)
    for c in range(count):
        anchor = candidates[c] // num_classes
        class_ids[c] = candidates[c] % num_classes
        for m in range(4):
            boxes[c, m] = boxes_xyxy[anchor, m]
    out_boxes, out_scores, out_classes = select_candidates(
        boxes, flat[candidates], class_ids, score_threshold, soft, voting, iou_threshold,
        sigma, prune_threshold, max_detections, voting_iou_threshold)
    return out_boxes, out_scores, out_classes, False


@compiled()
def select_candidates(boxes, scores, class_ids, score_threshold, soft, voting, iou_threshold,
                      sigma, prune_threshold, max_detections, voting_iou_threshold
                      ):  # type: ignore[no-untyped-def]
    """``postprocess.select_detections`` after its top-k pre-filter, in one call:
    class-aware hard NMS or Gaussian Soft-NMS (+ box voting), every class in one loop (a
    pick affects only its own class).

    Args:
        boxes: ``(n, 4)`` float32 candidate boxes; scores: ``(n,)`` float32, non-increasing
            (``boxes.topk_candidates``'s order); class_ids: ``(n,)`` int64.
        score_threshold: final scores must be above it (Soft-NMS).
        soft, voting: bool.
        iou_threshold: hard NMS suppresses above it. sigma: Soft-NMS's Gaussian width.
        prune_threshold: Soft-NMS drops boxes decayed below it.
        max_detections: int. voting_iou_threshold: the IoU a candidate needs to vote.

    The thresholds are Python floats (float64); each is compared in the precision numpy
    compares it in: against float32 scores and IoUs as float32, against Soft-NMS's float64
    running scores as float64.

    Returns:
        ``(boxes_xyxy (D, 4) float32, scores (D,) float32, class_ids (D,) int64)``, by
        decreasing score, ties by class then pick order.
    """
    threshold32 = np.float32(score_threshold)
    iou_threshold32 = np.float32(iou_threshold)
    sigma32 = np.float32(sigma)
    n = boxes.shape[0]
    cand_scores = scores
    areas = np.empty(n, np.float32)
    for c in range(n):
        areas[c] = (fmax(boxes[c, 2] - boxes[c, 0], ZERO)
                    * fmax(boxes[c, 3] - boxes[c, 1], ZERO))
    picks = np.empty(n, np.int64)
    pick_scores = np.empty(n, np.float32)
    picked = 0
    if not soft:
        # Greedy: the candidates are in score order, so the next pick is the first survivor.
        alive = np.ones(n, np.bool_)
        for i in range(n):
            if not alive[i]:
                continue
            picks[picked] = i
            pick_scores[picked] = cand_scores[i]
            picked += 1
            for j in range(i + 1, n):
                if alive[j] and class_ids[j] == class_ids[i] and \
                        not _iou(boxes, areas, i, j) <= iou_threshold32:
                    alive[j] = False
    else:
        current = np.empty(n, np.float64)
        for c in range(n):
            current[c] = (cand_scores[c] if cand_scores[c] >= np.float32(prune_threshold)
                          else -np.inf)
        floor = np.float64(score_threshold)
        while picked < n:
            i = np.argmax(current)  # the first maximum: the lower index wins ties
            top = current[i]
            if not top > floor:  # later picks score no higher (decay never raises one)
                break
            picks[picked] = i
            pick_scores[picked] = np.float32(top)
            picked += 1
            current[i] = -np.inf
            for j in range(n):
                if class_ids[j] == class_ids[i] and current[j] != -np.inf:
                    iou = _iou(boxes, areas, i, j)
                    current[j] *= np.float64(np.float32(math.exp(-(iou * iou) / sigma32)))
                    if not current[j] >= prune_threshold:
                        current[j] = -np.inf
    # Decreasing score, ties by class, then pick order (the per-class loops' order); picks
    # are few, so an insertion sort.
    order = np.arange(picked)
    for p in range(1, picked):
        q = p
        while q > 0 and _before(pick_scores, class_ids, picks, order[q], order[q - 1]):
            order[q], order[q - 1] = order[q - 1], order[q]
            q -= 1
    kept = np.empty(picked, np.int64)
    count = 0
    for p in range(picked):
        if count == max_detections:
            break
        if soft and not pick_scores[order[p]] > threshold32:
            continue
        kept[count] = order[p]
        count += 1
    out_boxes = np.empty((count, 4), np.float32)
    out_scores = np.empty(count, np.float32)
    out_classes = np.empty(count, np.int64)
    for d in range(count):
        i = picks[kept[d]]
        out_scores[d] = pick_scores[kept[d]]
        out_classes[d] = class_ids[i]
        for m in range(4):
            out_boxes[d, m] = boxes[i, m]
        if voting:
            _vote(boxes, cand_scores, class_ids, areas, i, np.float32(voting_iou_threshold),
                  out_boxes, d)
    return out_boxes, out_scores, out_classes


@compiled(inline="always")
def _before(pick_scores, class_ids, picks, a, b):  # type: ignore[no-untyped-def]
    """Whether pick ``a`` sorts before pick ``b``: higher score, then lower class, then
    earlier pick."""
    if pick_scores[a] != pick_scores[b]:
        return pick_scores[a] > pick_scores[b]
    if class_ids[picks[a]] != class_ids[picks[b]]:
        return class_ids[picks[a]] < class_ids[picks[b]]
    return a < b


@compiled()
def _vote(boxes, cand_scores, class_ids, areas, i, iou_threshold, out, row):  # type: ignore[no-untyped-def]
    """``boxes.box_voting`` of pick ``i``: the score-weighted mean (float64) of its class's
    finite candidates with IoU ``>= iou_threshold``, into ``out[row]``; unchanged when none
    votes."""
    total = 0.0
    sums = np.zeros(4, np.float64)
    for j in range(boxes.shape[0]):
        if class_ids[j] != class_ids[i]:
            continue
        finite = True
        for m in range(4):
            if not math.isfinite(boxes[j, m]):
                finite = False
        if not finite or not _iou(boxes, areas, i, j) >= iou_threshold:
            continue
        weight = np.float64(cand_scores[j])
        total += weight
        for m in range(4):
            sums[m] += weight * np.float64(boxes[j, m])
    if total > 0.0:
        for m in range(4):
            out[row, m] = np.float32(sums[m] / total)
