"""Compiled (numba) kernels of the per-frame work around the model: normalisation, decoding,
selection and the mapping to frame pixels.

Why compiled: after an INT8 inference, ``detect()``'s numpy decoding and selection cost
0.5-0.7 ms per frame, nearly all of it a few hundred numpy calls whose code and data come back
from memory (``docs/performance.md``), not arithmetic. Each kernel is one call doing what a
chain of numpy calls did, element by element, in the same float32 / float64 precisions, with
thresholds compared as numpy compares them (a Python float against a float32 array: in
float32) and the same order of picks.

What differs from the numpy forms in ``edgedet.head_decoding`` and ``edgedet.boxes`` (which
stay as the readable reference the kernels are tested against): ``exp`` is numba's float32
one, not numpy's SIMD one (they differ by an ulp on 39% of float32 inputs, and neither is
correctly rounded everywhere), and sums run in index order (numpy's in eight partial sums).
So where ``exp`` enters the values differ by a few ulps: up to 3 for a sigmoid, 5 for
sigmoid x confidence, 6 for a softmax over 13 columns (15 over 81), and up to about 11 for a
Soft-NMS score after many decays; the detections, their order and boxes were the same in
every test and zoo frame but two of 400 near-ties at evaluation settings. Hard NMS, the
frame mapping and the normalisation are bit for bit.

The callers convert to C-contiguous arrays of fixed dtypes, so each kernel compiles once per
process for the SDK's calls (a read-only array is another type: once more); the machine code
is cached on disk for the next process.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from edgedet.box_coding import BBOX_XFORM_CLIP


def _compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with the machine code cached on disk, or without where no cache folder
    is writable (a read-only install with a read-only home: numba refuses ``cache=True``
    there at decoration, which would make ``import edgedet`` fail; the kernels then compile
    in each process, about 5 s)."""
    def compile_(function: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**options)(function)
    return compile_


_CLIP32 = np.float32(BBOX_XFORM_CLIP)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)


@_compiled(inline="always")
def _fmin(a, b):  # type: ignore[no-untyped-def]
    """``np.minimum``: NaN if either is NaN (Python's ``min`` is not)."""
    return a if (a <= b or a != a) else b


@_compiled(inline="always")
def _fmax(a, b):  # type: ignore[no-untyped-def]
    """``np.maximum``: NaN if either is NaN."""
    return a if (a >= b or a != a) else b


@_compiled(inline="always")
def _sigmoid32(x):  # type: ignore[no-untyped-def]
    """``head_decoding.sigmoid`` of one float32: the two forms that never overflow."""
    if x >= _ZERO:
        return _ONE / (_ONE + np.float32(math.exp(-x)))
    e = np.float32(math.exp(x))
    return e / (_ONE + e)


@_compiled(inline="always")
def _decode_box(deltas, row, pcx, pcy, pw, ph, weights, out, out_row):  # type: ignore[no-untyped-def]
    """``box_coding.decode`` of ``deltas[row]`` against one prior (cx, cy, w, h) into
    ``out[out_row]`` (xyxy), float32 throughout."""
    cx = deltas[row, 0] / weights[0] * pw + pcx
    cy = deltas[row, 1] / weights[1] * ph + pcy
    dw = deltas[row, 2] / weights[2]
    dh = deltas[row, 3] / weights[3]
    if dw > _CLIP32:  # (a NaN stays NaN, as through np.minimum)
        dw = _CLIP32
    if dh > _CLIP32:
        dh = _CLIP32
    half_w = np.float32(math.exp(dw)) * pw / _TWO
    half_h = np.float32(math.exp(dh)) * ph / _TWO
    out[out_row, 0] = cx - half_w
    out[out_row, 1] = cy - half_h
    out[out_row, 2] = cx + half_w
    out[out_row, 3] = cy + half_h


@_compiled()
def sigmoid_candidates(cls_logits, box_deltas, conf_logits, priors_cxcywh, weights,
                       logit_bound, every_row):  # type: ignore[no-untyped-def]
    """RetinaNet-family decoding of the anchors with a class logit ``>= logit_bound``
    (``every_row``: all anchors).

    Args:
        cls_logits: ``(A, K)`` float32. box_deltas: ``(A, 4)`` float32.
        conf_logits: ``(A, 1)`` float32 (DSANet-Conf's confidence) or ``(0, 1)`` for none.
        priors_cxcywh: ``(A, 4)`` float32. weights: ``(4,)`` float32 box coder weights.
        logit_bound: float32. every_row: bool.

    Returns:
        ``(rows (n,) int64 ascending, boxes_xyxy (n, 4) float32, scores (n, K) float32)``.
    """
    num_anchors, num_classes = cls_logits.shape
    rows = np.empty(num_anchors, np.int64)
    n = 0
    for a in range(num_anchors):
        # (The whole row, without an early exit: a branch-free loop the compiler vectorises,
        # 2-2.5x faster over a frame's mostly-background anchors.)
        hit = every_row
        for k in range(num_classes):
            hit |= cls_logits[a, k] >= logit_bound
        if hit:
            rows[n] = a
            n += 1
    with_conf = conf_logits.shape[0] > 0
    boxes = np.empty((n, 4), np.float32)
    scores = np.empty((n, num_classes), np.float32)
    for j in range(n):
        a = rows[j]
        conf = _sigmoid32(conf_logits[a, 0]) if with_conf else _ONE
        for k in range(num_classes):
            score = _sigmoid32(cls_logits[a, k])
            scores[j, k] = score * conf if with_conf else score
        _decode_box(box_deltas, a, priors_cxcywh[a, 0], priors_cxcywh[a, 1],
                    priors_cxcywh[a, 2], priors_cxcywh[a, 3], weights, boxes, j)
    return rows[:n], boxes, scores


@_compiled()
def softmax_candidates(cls_logits, box_deltas, propose_deltas, priors_cxcywh, weights,
                       margin_bound, every_row):  # type: ignore[no-untyped-def]
    """SSD / PASSD decoding (softmax, background at column 0) of the anchors whose best
    foreground logit is at least ``margin_bound`` above the background one (``every_row``:
    all anchors); ``head_decoding.foreground_softmax`` says why no other anchor can pass.

    Args:
        cls_logits: ``(A, K+1)`` float32. box_deltas: ``(A, 4)`` float32.
        propose_deltas: ``(A, 4)`` float32 (PASSD: the priors are first moved by them) or
            ``(0, 4)`` for none.
        priors_cxcywh: ``(A, 4)`` float32. weights: ``(4,)`` float32.
        margin_bound: float32. every_row: bool.

    Returns:
        ``(rows (n,) int64 ascending, boxes_xyxy (n, 4) float32, scores (n, K) float32)``.
    """
    num_anchors, width = cls_logits.shape
    rows = np.empty(num_anchors, np.int64)
    n = 0
    for a in range(num_anchors):
        # "Some foreground logit >= background + bound", which is "best foreground -
        # background >= bound" up to the last bit of the sum (the bound's 1e-3 margin covers
        # that); branch-free, so vectorised: 0.10 -> 0.04 ms over DAIPNet's 8 732 x 13 logits
        # with the caches cold. A NaN logit in the row keeps it out, as NaN - background
        # would (a NaN background makes the bound NaN).
        threshold = cls_logits[a, 0] + margin_bound
        hit = False
        nan = False
        for k in range(1, width):
            hit |= cls_logits[a, k] >= threshold
            nan |= cls_logits[a, k] != cls_logits[a, k]
        if every_row or (hit and not nan):
            rows[n] = a
            n += 1
    proposed = propose_deltas.shape[0] > 0
    boxes = np.empty((n, 4), np.float32)
    scores = np.empty((n, width - 1), np.float32)
    moved = np.empty((1, 4), np.float32)
    exps = np.empty(width, np.float32)
    for j in range(n):
        a = rows[j]
        top = cls_logits[a, 0]
        for k in range(1, width):
            top = _fmax(top, cls_logits[a, k])
        total = _ZERO
        for k in range(width):
            exps[k] = np.float32(math.exp(cls_logits[a, k] - top))
            total += exps[k]
        for k in range(1, width):
            scores[j, k - 1] = exps[k] / total
        pcx, pcy = priors_cxcywh[a, 0], priors_cxcywh[a, 1]
        pw, ph = priors_cxcywh[a, 2], priors_cxcywh[a, 3]
        if proposed:  # the adjusted box, back to (cx, cy, w, h)
            _decode_box(propose_deltas, a, pcx, pcy, pw, ph, weights, moved, 0)
            pcx = (moved[0, 0] + moved[0, 2]) / _TWO
            pcy = (moved[0, 1] + moved[0, 3]) / _TWO
            pw = moved[0, 2] - moved[0, 0]
            ph = moved[0, 3] - moved[0, 1]
        _decode_box(box_deltas, a, pcx, pcy, pw, ph, weights, boxes, j)
    return rows[:n], boxes, scores


@_compiled(inline="always")
def _iou(boxes, areas, i, j):  # type: ignore[no-untyped-def]
    """``boxes._iou_one_to_many``'s value for the pair (i, j), float32 (0 where the union is
    not positive, NaN included)."""
    w = _fmax(_fmin(boxes[i, 2], boxes[j, 2]) - _fmax(boxes[i, 0], boxes[j, 0]), _ZERO)
    h = _fmax(_fmin(boxes[i, 3], boxes[j, 3]) - _fmax(boxes[i, 1], boxes[j, 1]), _ZERO)
    inter = w * h
    union = areas[i] + areas[j] - inter
    return inter / union if union > _ZERO else _ZERO


@_compiled()
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


@_compiled()
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
        areas[c] = (_fmax(boxes[c, 2] - boxes[c, 0], _ZERO)
                    * _fmax(boxes[c, 3] - boxes[c, 1], _ZERO))
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


@_compiled(inline="always")
def _before(pick_scores, class_ids, picks, a, b):  # type: ignore[no-untyped-def]
    """Whether pick ``a`` sorts before pick ``b``: higher score, then lower class, then
    earlier pick."""
    if pick_scores[a] != pick_scores[b]:
        return pick_scores[a] > pick_scores[b]
    if class_ids[picks[a]] != class_ids[picks[b]]:
        return class_ids[picks[a]] < class_ids[picks[b]]
    return a < b


@_compiled()
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


@functools.cache
def warm_up() -> None:
    """Compile (or load from the disk cache) every kernel in the forms the SDK calls them,
    once per process: ``HeadDecoder`` calls this when it is built, so that the first frame
    does not wait for the compiler (about 5 s on a fresh install, a quarter of a second to
    load the cache)."""
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.2]], np.float32)
    select_frame(boxes, scores, 0, 0.5, True, True, 0.5, 0.5, 0.001, 100, 0.5)  # (the flags
    select_candidates(boxes, scores[:, 0].copy(), np.zeros(2, np.int64), 0.5, False, False,
                      0.5, 0.5, 0.001, 100, 0.5)  # are values, not types: one form each)
    priors = np.array([[5, 5, 10, 10], [6, 6, 10, 10]], np.float32)
    weights = np.ones(4, np.float32)
    frame_detections(boxes, scores[:, 0].copy(), np.zeros(2, np.int64), 0.5, 0.5, 0.0, 0.0,
                     640, 480)
    tables, sources = np.zeros((3, 256), np.float32), np.arange(3, dtype=np.int64)
    for array in (tables, sources):  # as preprocess._channel_tables shares them
        array.flags.writeable = False
    table_to_nchw(np.zeros((2, 2, 3), np.uint8), tables, sources)
    for width in (0, 1):
        sigmoid_candidates(scores, boxes, np.zeros((2 * width, 1), np.float32), priors,
                           weights, np.float32(0.0), False)
        softmax_candidates(scores, boxes, np.zeros((2 * width, 4), np.float32), priors,
                           weights, np.float32(0.0), False)


@_compiled()
def frame_detections(boxes_xyxy, scores, class_ids, scale_x, scale_y, pad_x, pad_y,
                     frame_width, frame_height):  # type: ignore[no-untyped-def]
    """``HeadDecoder``'s last step: input-pixel boxes to frame pixels, clipped to the frame
    (``FrameTransform.boxes_to_frame``, float32, ``np.clip``'s order: NaN stays NaN, -0 becomes
    0), and only the boxes left with a positive width and height (one wholly in letterbox
    padding or off the frame clips to zero area; a NaN box fails the test too).

    Args:
        boxes_xyxy: ``(D, 4)`` float32. scores: ``(D,)`` float32. class_ids: ``(D,)`` int64.
        scale_x, scale_y, pad_x, pad_y: the transform (``x_in = x * scale + pad``), floats.
        frame_width, frame_height: ints.

    Returns:
        ``(boxes_xyxy (N, 4) float32, scores (N,) float32, class_ids (N,) int64)``.
    """
    scale = (np.float32(scale_x), np.float32(scale_y))
    pad = (np.float32(pad_x), np.float32(pad_y))
    limit = (np.float32(frame_width), np.float32(frame_height))
    count = boxes_xyxy.shape[0]
    mapped = np.empty((count, 4), np.float32)
    visible = np.empty(count, np.bool_)
    kept = 0
    for i in range(count):
        for m in range(4):
            value = (boxes_xyxy[i, m] - pad[m % 2]) / scale[m % 2]
            if value == value:  # np.clip: max(value, 0) then min(., limit), NaN kept
                value = value if value > _ZERO else _ZERO
                value = value if value < limit[m % 2] else limit[m % 2]
            mapped[i, m] = value
        visible[i] = mapped[i, 2] > mapped[i, 0] and mapped[i, 3] > mapped[i, 1]
        kept += visible[i]
    out_boxes = np.empty((kept, 4), np.float32)
    out_scores = np.empty(kept, np.float32)
    out_classes = np.empty(kept, np.int64)
    row = 0
    for i in range(count):
        if visible[i]:
            out_boxes[row] = mapped[i]
            out_scores[row] = scores[i]
            out_classes[row] = class_ids[i]
            row += 1
    return out_boxes, out_scores, out_classes


@_compiled()
def table_to_nchw(image, tables, sources):  # type: ignore[no-untyped-def]
    """``preprocess.normalize_to_nchw``: each pixel's channel value read from its 256-entry
    table (the float32 result of ``(v - mean) / std`` for every uint8 level ``v``).

    Args:
        image: ``(H, W, 3)`` uint8, C-contiguous. tables: ``(3, 256)`` float32, in the
            model's channel order. sources: ``(3,)`` int64, the image channel each model
            channel reads (BGR frames into an RGB model: 2, 1, 0).

    Returns:
        ``(1, 3, H, W)`` float32.
    """
    height, width, _ = image.shape
    out = np.empty((1, 3, height, width), np.float32)
    for channel in range(3):
        source = sources[channel]
        table = tables[channel]
        for y in range(height):
            for x in range(width):
                out[0, channel, y, x] = table[image[y, x, source]]
    return out
