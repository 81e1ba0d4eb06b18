"""Box operations in numpy: IoU, NMS, Soft-NMS, box voting, top-k pre-filtering.

Boxes are ``xyxy`` in continuous pixel coordinates (area = (x2 - x1) * (y2 - y1), no "+1").
Every function is vectorised over boxes; the greedy loops of NMS / Soft-NMS iterate once per
*kept* box, each iteration a single numpy expression over the remaining candidates.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

SoftNmsMethod = Literal["linear", "gaussian"]


def box_area(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``(N, 4)`` → ``(N,)`` areas; inverted boxes have area 0."""
    wh = np.maximum(boxes_xyxy[:, 2:4] - boxes_xyxy[:, 0:2], 0.0)
    return wh[:, 0] * wh[:, 1]


def box_iou(boxes_a_xyxy: np.ndarray, boxes_b_xyxy: np.ndarray) -> np.ndarray:
    """IoU matrix ``(N, M)`` between ``(N, 4)`` and ``(M, 4)`` boxes (0 where union is 0)."""
    a = np.asarray(boxes_a_xyxy, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(boxes_b_xyxy, dtype=np.float32).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0).astype(np.float32)


def _iou_one_to_many(box: np.ndarray, area: float, boxes: np.ndarray, areas: np.ndarray
                     ) -> np.ndarray:
    """IoU of one box ``(4,)`` with ``(M, 4)`` boxes: the inner step of the greedy loops,
    which call it inside ``np.errstate(divide="ignore", invalid="ignore")`` (entered once per
    loop: per call it cost as much as the IoU arithmetic at a camera frame's few boxes).

    (``np.maximum(x, 0)`` rather than ``np.clip``: the same values, at a third of the call
    overhead, which is what a loop over a few hundred boxes pays.)"""
    w = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0)
    h = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0)
    inter = w * h
    union = area + areas - inter
    return np.where(union > 0, inter / union, 0.0)


def _check_boxes_scores(boxes_xyxy: np.ndarray, scores: np.ndarray,
                        class_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes (N, 4), scores (N,))`` as float32; ValueError for other shapes, and for
    ``class_ids`` (the class-aware functions') not one per score."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {scores.shape}")
    if class_ids is not None and np.asarray(class_ids).shape != scores.shape:
        raise ValueError("class_ids must have the same shape as scores")
    return boxes, scores


def _iou_matrix(boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """``(N, N)`` IoU of ``(N, 4)`` boxes with each other: row ``i`` is bit for bit
    ``_iou_one_to_many(boxes[i], areas[i], boxes, areas)`` (the same float32 operations in
    the same order, broadcast)."""
    with np.errstate(invalid="ignore"):  # inf boxes: NaN here as in the one-to-many form
        w = np.maximum(np.minimum(boxes[:, None, 2], boxes[None, :, 2])
                       - np.maximum(boxes[:, None, 0], boxes[None, :, 0]), 0.0)
        h = np.maximum(np.minimum(boxes[:, None, 3], boxes[None, :, 3])
                       - np.maximum(boxes[:, None, 1], boxes[None, :, 1]), 0.0)
        inter = w * h
        union = areas[:, None] + areas[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


# Up to this many boxes of a class, Soft-NMS reads a precomputed IoU matrix (N^2 float32: 4 MiB
# at the limit) instead of computing an IoU row per iteration: it keeps every box above its
# tiny score floor, so it iterates about once per box, and those rows were most of its time
# (1.6-2x faster on the zoo models' candidates, same results). Above it, rows as needed.
IOU_MATRIX_LIMIT = 1024


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy hard NMS. Returns ``(K,) int64`` indices of kept boxes, highest score first.

    A box is suppressed when its IoU with a kept, higher-scoring box is ``> iou_threshold``
    (torchvision's convention). Equal scores keep the lower index first.
    """
    boxes, scores = _check_boxes_scores(boxes_xyxy, scores)
    return _greedy_nms(boxes, scores, iou_threshold)


def _check_iou_threshold(iou_threshold: object) -> None:
    if not isinstance(iou_threshold, int | float | np.floating) or not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be a number in [0, 1], got {iou_threshold!r}")


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``nms``'s loop, kept indices in selection order."""
    _check_iou_threshold(iou_threshold)
    order = np.argsort(-scores, kind="stable")
    areas = box_area(boxes)
    # (One IoU row per kept box: suppressed boxes leave the loop at once, so at the 100-250
    # candidates of a camera frame this beats precomputing the IoU matrix, unlike Soft-NMS.)
    keep: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):  # for _iou_one_to_many
        while order.size:
            i = order[0]
            keep.append(int(i))
            rest = order[1:]
            order = rest[_iou_one_to_many(boxes[i], areas[i], boxes[rest], areas[rest])
                         <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _joint_greedy_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                      iou_threshold: float) -> np.ndarray:
    """``_greedy_nms`` of every class at once (a box suppresses only its own class), for a
    camera frame's few hundred candidates: the boxes sorted by score once, the survivors a
    mask over all of them, the next pick the first survivor. With the caches cold after an
    inference that cost 20% less than shrinking index arrays (0.15 -> 0.12 ms for the zoo
    DAIPNet's frames), the same picks."""
    _check_iou_threshold(iou_threshold)
    order = np.argsort(-scores, kind="stable")
    boxes, class_ids = boxes[order], class_ids[order]
    areas = box_area(boxes)
    alive = np.ones(len(boxes), dtype=bool)
    picks: list[int] = []
    pick = 0
    with np.errstate(divide="ignore", invalid="ignore"):  # for _iou_one_to_many
        while alive[pick]:
            picks.append(pick)
            alive[pick] = False  # (a zero-area box has IoU 0 with itself)
            alive &= ((_iou_one_to_many(boxes[pick], areas[pick], boxes, areas)
                       <= iou_threshold) | (class_ids != class_ids[pick]))
            pick = int(alive.argmax())  # the first True, or 0 (dead) when none is left
    return order[np.asarray(picks, dtype=np.int64)]


def _per_class(class_ids: np.ndarray) -> list[np.ndarray]:
    """Indices grouped by class id (each group in ascending index order)."""
    class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    order = np.argsort(class_ids, kind="stable")
    bounds = np.flatnonzero(np.diff(class_ids[order])) + 1
    return [g for g in np.split(order, bounds) if g.size]


def batched_nms(
    boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-aware hard NMS: boxes of different classes never suppress each other.

    Returns ``(K,) int64`` kept indices sorted by decreasing score.
    """
    boxes, scores = _check_boxes_scores(boxes_xyxy, scores, class_ids)
    if 0 < len(boxes) <= JOINT_LIMIT:
        class_ids = np.asarray(class_ids, dtype=np.int64)
        keep = _joint_greedy_nms(boxes, scores, class_ids, iou_threshold)
        return keep[_class_order(keep, class_ids, scores[keep])]
    kept = [group[nms(boxes[group], scores[group], iou_threshold)]
            for group in _per_class(class_ids)]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    keep = np.concatenate(kept)
    return keep[np.argsort(-scores[keep], kind="stable")]


# Up to this many candidates (an application threshold's few hundred), the class-aware loops
# run once over all classes, other classes' boxes skipped, instead of once per class: the
# per-class set-up was most of Soft-NMS's time at a camera frame's ~10 detections (0.8 ->
# 0.5 ms with the caches cold after inference). One IoU row per kept box, no matrix: with the
# caches cold a 200x200 matrix alone took 0.3 ms. The kept boxes, their scores and order are
# the per-class loops' (tests compare the two paths bit for bit).
JOINT_LIMIT = 256


def _class_order(keep: np.ndarray, class_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The order the per-class paths return ``keep`` in: decreasing score, ties by class,
    then by selection order within the class."""
    return np.lexsort((np.arange(len(keep)), class_ids[keep], -scores))


def soft_nms(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: SoftNmsMethod = "gaussian",
    stop_at: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS of Bodla et al. (ICCV 2017), single class.

    Repeatedly takes the highest-scoring remaining box ``M`` and decays the score of every
    other remaining box ``b`` by

    - ``linear``:   ``s *= 1 - IoU(M, b)`` if ``IoU(M, b) >= iou_threshold`` else unchanged
    - ``gaussian``: ``s *= exp(-IoU(M, b)^2 / sigma)`` (``iou_threshold`` unused)

    Boxes whose decayed score drops below ``score_threshold`` are discarded, as in the
    authors' implementation.

    ``stop_at`` ends the loop at the first pick scoring ``<= stop_at``. Decay never raises a
    score, so every later pick would score no higher: the result is exactly the full one's
    prefix of scores ``> stop_at``. A caller that drops those anyway (``select_detections``
    at an application threshold such as 0.4) then makes about one pass per detection instead
    of one per candidate (None = run to the end).

    Returns:
        ``(keep (K,) int64, new_scores (K,) float32)``: kept indices in selection order,
        which is also non-increasing decayed score, and their decayed scores.
    """
    boxes, scores = _check_boxes_scores(boxes_xyxy, scores)
    _check_soft_nms_settings(method, sigma, score_threshold, stop_at)
    return _soft_nms_loop(boxes, scores, iou_threshold, sigma, score_threshold, method, stop_at)


def _check_soft_nms_settings(method: str, sigma: float, score_threshold: float,
                             stop_at: float | None) -> None:
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft_nms method must be 'linear' or 'gaussian', got {method!r}")
    if not sigma > 0:  # also nan
        raise ValueError(f"soft_nms sigma must be > 0, got {sigma}")
    # (The all-class loop marks dead boxes -inf: a box must be able to be alive above it.)
    if not math.isfinite(score_threshold):
        raise ValueError(f"soft_nms score_threshold must be finite, got {score_threshold}")
    if stop_at is not None and math.isnan(stop_at):
        raise ValueError("soft_nms stop_at must be a number or None, got nan")


def _soft_nms_loop(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, sigma: float,
                   score_threshold: float, method: SoftNmsMethod, stop_at: float | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``soft_nms``'s loop over one class: the remaining boxes shrink as they are picked or
    pruned, so a run to the end (evaluation's thousand candidates) decays about half the
    pairs that ``_joint_soft_nms_loop``'s fixed-size arrays would."""
    remaining = np.flatnonzero(scores >= score_threshold)
    current = scores.astype(np.float64)
    areas = box_area(boxes)
    # The matrix pays when the loop visits most boxes: no early stop.
    matrix = (_iou_matrix(boxes, areas) if stop_at is None and len(boxes) <= IOU_MATRIX_LIMIT
              else None)
    keep: list[int] = []
    kept_scores: list[float] = []
    with np.errstate(divide="ignore", invalid="ignore"):  # for _iou_one_to_many
        while remaining.size:
            pos = int(np.argmax(current[remaining]))  # first maximum: lower index wins ties
            i = remaining[pos]
            if stop_at is not None and current[i] <= stop_at:
                break
            keep.append(int(i))
            kept_scores.append(float(current[i]))
            # (A concatenation: np.delete's argument handling cost 4 us a call, more than
            # the copy at a frame's few hundred candidates.)
            remaining = np.concatenate((remaining[:pos], remaining[pos + 1:]))
            if not remaining.size:
                break
            iou = (matrix[i, remaining] if matrix is not None else
                   _iou_one_to_many(boxes[i], areas[i], boxes[remaining], areas[remaining]))
            current[remaining] *= _soft_nms_decay(iou, method, iou_threshold, sigma)
            remaining = remaining[current[remaining] >= score_threshold]
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float32)


def _soft_nms_decay(iou: np.ndarray, method: SoftNmsMethod, iou_threshold: float,
                    sigma: float) -> np.ndarray:
    """The factor a rival's score is multiplied by, from its IoU with the pick."""
    if method == "linear":
        return np.where(iou >= iou_threshold, 1.0 - iou, 1.0)
    return np.exp(-(iou * iou) / sigma)


def _joint_soft_nms_loop(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                         iou_threshold: float, sigma: float, score_threshold: float,
                         method: SoftNmsMethod, stop_at: float | None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_soft_nms_loop`` of every class at once, for a camera frame's few hundred
    candidates; also returns each pick's IoU row with every box, which box voting reuses.

    A box decays only its own class's boxes, and the first maximum over all classes is also
    the lowest index among its own class's maxima, so each class's picks are the per-class
    loop's. Picked and pruned boxes stay in the arrays at -inf instead of leaving them: with
    the caches cold after an inference, the index bookkeeping of a shrinking set cost more
    than decaying a few hundred scores. With box voting reading these IoU rows instead of
    computing its own, the zoo HAR-Net's selection (Soft-NMS + voting) took 0.26-0.29 ms per
    frame against 0.39-0.41 (two interleaved runs), the same bits.

    Returns:
        ``(keep (K,) int64, new_scores (K,) float32, iou (K, N) float32)`` in selection order.
    """
    current = np.where(scores >= score_threshold, scores.astype(np.float64), -np.inf)
    areas = box_area(boxes)
    floor = -np.inf if stop_at is None else stop_at
    keep: list[int] = []
    kept_scores: list[float] = []
    iou_rows: list[np.ndarray] = []
    with np.errstate(divide="ignore", invalid="ignore"):  # for _iou_one_to_many, inf boxes
        while True:
            i = int(current.argmax())  # first maximum: lower index wins ties
            top = current[i]
            if not top > floor:  # -inf: nothing left
                break
            keep.append(i)
            kept_scores.append(float(top))
            iou = _iou_one_to_many(boxes[i], areas[i], boxes, areas)
            iou_rows.append(iou)
            current[i] = -np.inf
            # Other classes' boxes and dead ones are multiplied by 1, or stay -inf; a linear
            # decay of 0 turns a dead -inf into NaN, which the pruning step resets.
            current *= np.where(class_ids == class_ids[i],
                                _soft_nms_decay(iou, method, iou_threshold, sigma), 1.0)
            current[~(current >= score_threshold)] = -np.inf
    rows = np.array(iou_rows, dtype=np.float32).reshape(len(keep), len(boxes))
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float32), rows


def batched_soft_nms(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: SoftNmsMethod = "gaussian",
    stop_at: float | None = None,
    *,
    return_iou: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Class-aware Soft-NMS (``soft_nms`` per class). Returns ``(keep, new_scores)`` sorted by
    decreasing new score; with ``return_iou`` also ``iou (K, N) float32``, the IoU of each
    kept box with every box (``box_iou(boxes[keep], boxes)``, the same bits), which
    ``box_voting`` can take instead of computing it again; None where the per-class loops
    ran (no boxes, or more than ``JOINT_LIMIT``): they do not compute those rows, and a
    caller keeping a hundred of a thousand boxes should not pay for all of them."""
    boxes, scores = _check_boxes_scores(boxes_xyxy, scores, class_ids)
    _check_soft_nms_settings(method, sigma, score_threshold, stop_at)
    settings = (iou_threshold, sigma, score_threshold, method, stop_at)
    if 0 < len(boxes) <= JOINT_LIMIT:
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        keep, new, iou = _joint_soft_nms_loop(boxes, scores, class_ids, *settings)
        order = _class_order(keep, class_ids, new)
        return (keep[order], new[order], iou[order]) if return_iou else (keep[order], new[order])
    keeps, new_scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for group in _per_class(class_ids):
        k, s = _soft_nms_loop(boxes[group], scores[group], *settings)
        keeps.append(group[k])
        new_scores.append(s)
    keep, new = np.concatenate(keeps), np.concatenate(new_scores)
    order = np.argsort(-new, kind="stable")
    return (keep[order], new[order], None) if return_iou else (keep[order], new[order])


def box_voting(
    kept_boxes_xyxy: np.ndarray,
    kept_class_ids: np.ndarray,
    candidate_boxes_xyxy: np.ndarray,
    candidate_scores: np.ndarray,
    candidate_class_ids: np.ndarray,
    iou_threshold: float = 0.5,
    kept_iou: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Box voting as in HAR-Net (after Gidaris & Komodakis 2015).

    Each kept box is replaced by the score-weighted average of every candidate of the same
    class that overlaps it with ``IoU >= iou_threshold``; its score becomes the maximum score
    among those candidates (HAR-Net: ``p = max_i p_i``). A kept box with no such candidate
    (possible only if it is not itself a candidate) is left unchanged with score 0.

    Args:
        kept_boxes_xyxy: ``(K, 4)`` boxes that survived (soft-)NMS.
        kept_class_ids: ``(K,)``.
        candidate_boxes_xyxy: ``(M, 4)`` all boxes that entered NMS.
        candidate_scores: ``(M,)`` their original (undecayed) scores.
        candidate_class_ids: ``(M,)``.
        iou_threshold: overlap needed to vote (0.5, the threshold of Gidaris & Komodakis;
            HAR-Net does not state one).
        kept_iou: ``(K, M)`` IoU of the kept boxes with the candidates where the caller has
            it (``batched_soft_nms(..., return_iou=True)``), else computed here.

    Returns:
        ``(voted_boxes (K, 4) float32, voted_scores (K,) float32)``.
    """
    kept = np.asarray(kept_boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    cand, cand_scores = _check_boxes_scores(candidate_boxes_xyxy, candidate_scores)
    kept_cls = np.asarray(kept_class_ids, dtype=np.int64).reshape(-1)
    cand_cls = np.asarray(candidate_class_ids, dtype=np.int64).reshape(-1)
    if len(kept_cls) != len(kept) or len(cand_cls) != len(cand):
        raise ValueError(f"box_voting: {len(kept)} kept boxes with {len(kept_cls)} class ids, "
                         f"{len(cand)} candidates with {len(cand_cls)}")
    # Every class in one (K, M) matrix, other classes' pairs masked out: a loop over classes
    # cost 0.4 ms at an application threshold's ~200 candidates, this 0.1 ms.
    if kept_iou is None:
        kept_iou = box_iou(kept, cand)
    elif kept_iou.shape != (len(kept), len(cand)):
        raise ValueError(f"box_voting: kept_iou must have shape ({len(kept)}, {len(cand)}), "
                         f"got {kept_iou.shape}")
    # A non-finite candidate (a model's NaN or inf box delta) never votes, and counts as 0 in
    # the weighted sum: its 0 weight times NaN would turn every average NaN.
    finite = np.isfinite(cand).all(axis=1)
    votes = ((kept_iou >= iou_threshold) & (kept_cls[:, None] == cand_cls[None, :])
             & finite[None, :])
    weights = np.where(votes, cand_scores[None, :].astype(np.float64), 0.0)
    total = weights.sum(axis=1)
    has_votes = total > 0
    finite_cand = np.where(finite[:, None], cand.astype(np.float64), 0.0)
    averaged = (weights @ finite_cand) / np.where(has_votes, total, 1.0)[:, None]
    voted = np.where(has_votes[:, None], averaged, kept).astype(np.float32)
    voted_scores = (weights.max(axis=1) if len(cand) else np.zeros(len(kept))).astype(np.float32)
    return voted, voted_scores


def topk_candidates(
    scores: np.ndarray, k: int, score_threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-filter a ``(A, K)`` score matrix: the ``k`` best (anchor, class) pairs above a
    threshold.

    Returns:
        ``(anchor_idx (n,) int64, class_idx (n,) int64, scores (n,) float32)``, ``n <= k``,
        sorted by decreasing score.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (A, K), got {scores.shape}")
    if not isinstance(k, int | np.integer) or k < 0:  # -5 returned everything
        raise ValueError(f"k must be a whole number >= 0 (0 = no limit), got {k!r}")
    flat = scores.reshape(-1)
    candidates = np.flatnonzero(flat > score_threshold)
    if k > 0 and candidates.size > k:
        part = np.argpartition(-flat[candidates], k - 1)[:k]
        candidates = candidates[part]
    candidates = candidates[np.argsort(-flat[candidates], kind="stable")]
    anchor_idx, class_idx = np.divmod(candidates, scores.shape[1])
    return anchor_idx.astype(np.int64), class_idx.astype(np.int64), flat[candidates]
