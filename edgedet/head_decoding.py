"""From one image's raw head outputs to per-anchor boxes and class scores (torch-free).

The models return raw head tensors (``forward_export``); decoding them against the anchors
happens here, outside the network, so training evaluation and the runtime SDK share one
implementation. The result feeds ``edgedet.postprocess.select_detections``. The work is one
compiled call per image (``edgedet.kernels``: ``sigmoid_candidates``, ``softmax_candidates``);
``sigmoid``, ``softmax`` and ``edgedet.box_coding.decode`` are the numpy forms it is tested
against.

Head families (the ``family`` string stored in checkpoints and manifests):

``"ssd"``        DAIPNet, PASSD's plain-head ablation: ``cls_logits (A, K+1)`` with background
                 at index 0 (softmax, background column dropped), ``box_deltas (A, 4)``
                 relative to the priors.
``"passd"``      PASSD's propose-and-attend head: ``propose_deltas (A, 4)`` move the default
                 boxes (the adjusted boxes), ``box_deltas (A, 4)`` are relative to the adjusted
                 boxes, ``cls_logits (A, K+1)`` softmax as for SSD. ``objectness_logits`` is
                 a training signal of the propose stage and does not enter the score. Outputs
                 without ``propose_deltas`` (the plain-head ablation) decode as ``"ssd"``.
``"retinanet"``  HAR-Net, DSANet: ``cls_logits (A, K)`` sigmoid, ``box_deltas (A, 4)``
                 relative to the anchors; DSANet-Conf's ``conf_logits (A, 1)`` multiply the
                 class scores (``sigmoid(cls) * sigmoid(conf)``, the paper's NMS score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edgedet import kernels

HEAD_FAMILIES: tuple[str, ...] = ("ssd", "passd", "retinanet")
# The raw outputs each family's decoding reads (others, e.g. PASSD's objectness, are training
# signals).
DECODED_OUTPUTS: dict[str, tuple[str, ...]] = {
    "ssd": ("cls_logits", "box_deltas"),
    "passd": ("propose_deltas", "cls_logits", "box_deltas"),
    "retinanet": ("cls_logits", "box_deltas", "conf_logits"),
}

BoxWeights = tuple[float, float, float, float]
# The kernels' "no such output": an empty array of the output's width.
_NO_PROPOSE = np.zeros((0, 4), np.float32)
_NO_CONF = np.zeros((0, 1), np.float32)
# Logit margin of _logit_bound (float rounding must never drop an anchor).
_BOUND_MARGIN = 1e-3


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float32)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def _logit_bound(min_score: float) -> float:
    """A logit (for softmax heads: a foreground-over-background margin) below which no score
    can exceed ``min_score`` (0 < min_score < 1), less a margin so that float rounding never
    drops an anchor at the threshold: ``sigmoid(l) <= min_score`` for ``l <= logit(min_score)``,
    and a softmax class score ``p_k = 1 / sum_j exp(l_j - l_k) <= sigmoid(l_k - l_0)``."""
    return math.log(min_score / (1.0 - min_score)) - _BOUND_MARGIN


def _priors_and_weights(priors_cxcywh: np.ndarray, box_coder_weights: BoxWeights
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(priors (A, 4), weights (4,))`` as the kernels take them: C-contiguous float32,
    shapes checked (the kernels do not check bounds: a narrower array would be read past its
    end)."""
    priors = np.ascontiguousarray(priors_cxcywh, dtype=np.float32)
    weights = np.ascontiguousarray(box_coder_weights, dtype=np.float32)
    if priors.ndim != 2 or priors.shape[1] != 4:
        raise ValueError(f"priors_cxcywh must have shape (A, 4), got {priors.shape}")
    if weights.shape != (4,):
        raise ValueError(f"box_coder_weights must be 4 numbers, got shape {weights.shape}")
    return priors, weights


Candidates = tuple[np.ndarray | None, np.ndarray, np.ndarray]
"""``(rows, boxes_xyxy (n, 4), scores (n, K))``: the decoded anchors ``rows`` (ascending
anchor indices, or None for all A anchors) with their boxes and class scores."""


def _no_candidates(num_classes: int) -> Candidates:
    """No anchor can pass: empty rows, boxes and ``(0, K)`` scores."""
    return (np.zeros(0, np.int64), np.zeros((0, 4), np.float32),
            np.zeros((0, num_classes), np.float32))


def _expand(candidates: Candidates, num_anchors: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates → ``(boxes_xyxy (A, 4), scores (A, K))``, the other anchors 0."""
    rows, boxes_xyxy, scores = candidates
    if rows is None:
        return boxes_xyxy, scores
    full_boxes = np.zeros((num_anchors, 4), dtype=np.float32)
    full_scores = np.zeros((num_anchors, scores.shape[1]), dtype=np.float32)
    full_boxes[rows] = boxes_xyxy
    full_scores[rows] = scores
    return full_boxes, full_scores


def _softmax_logits(cls_logits: np.ndarray, num_anchors: int) -> np.ndarray:
    """``cls_logits`` as ``(A, K+1)`` float32 rows, background first (K >= 1)."""
    cls_logits = _as_rows("cls_logits", cls_logits, num_anchors, None)
    if cls_logits.shape[1] < 2:
        raise ValueError(f"softmax cls_logits need K+1 >= 2 columns, got {cls_logits.shape}")
    return cls_logits


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logistic function (float32) without overflow warnings for large negative logits."""
    logits = np.asarray(logits, dtype=np.float32)
    out = np.empty_like(logits)
    positive = logits >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
    exp = np.exp(logits[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out


def _as_rows(name: str, array: np.ndarray, num_anchors: int, width: int | None) -> np.ndarray:
    """``array`` as ``(A, k)`` float32, C-contiguous (as the kernels take it); a leading
    batch axis of 1 is dropped."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[0] != num_anchors or (
        width is not None and array.shape[1] != width
    ):
        want = f"({num_anchors}, {width if width is not None else 'k'})"
        raise ValueError(f"head output {name!r} must have shape {want} for one image, "
                         f"got {array.shape}")
    return array


def decode_ssd(
    cls_logits: np.ndarray,
    box_deltas: np.ndarray,
    priors_cxcywh: np.ndarray,
    box_coder_weights: BoxWeights,
    min_score: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax head with background at class 0 (SSD / DAIPNet).

    Args:
        cls_logits: ``(A, K+1)`` logits, background first.
        box_deltas: ``(A, 4)`` offsets relative to ``priors_cxcywh``.
        priors_cxcywh: ``(A, 4)`` priors in input pixels.
        box_coder_weights: the model's box coder weights.
        min_score: anchors whose scores cannot exceed it may be returned with scores and
            box 0 (``_logit_bound``): selection drops them either way.

    Returns:
        ``(boxes_xyxy (A, 4), scores (A, K))`` float32, boxes in input pixels.
    """
    priors_cxcywh = np.asarray(priors_cxcywh, dtype=np.float32)
    return _expand(_ssd_candidates(cls_logits, box_deltas, priors_cxcywh, box_coder_weights,
                                   min_score), len(priors_cxcywh))


def _ssd_candidates(cls_logits: np.ndarray, box_deltas: np.ndarray,
                    priors_cxcywh: np.ndarray, box_coder_weights: BoxWeights,
                    min_score: float, propose_deltas: np.ndarray | None = None
                    ) -> Candidates:
    """``decode_ssd`` (with ``propose_deltas``: ``decode_passd``) of the anchors that can
    pass ``min_score`` only."""
    num_anchors = len(priors_cxcywh)
    if propose_deltas is not None:
        propose_deltas = _as_rows("propose_deltas", propose_deltas, num_anchors, 4)
    cls_logits = _softmax_logits(cls_logits, num_anchors)
    box_deltas = _as_rows("box_deltas", box_deltas, num_anchors, 4)
    if min_score >= 1.0:  # no softmax score exceeds 1
        return _no_candidates(cls_logits.shape[1] - 1)
    every_row = min_score <= 0.0
    # An anchor whose best foreground logit is not logit(min_score) above its background
    # logit has no class above min_score (_logit_bound): most of a frame's anchors. Both of
    # PASSD's stages, too, only for the anchors that can pass.
    rows, boxes, scores = kernels.softmax_candidates(
        cls_logits, box_deltas, propose_deltas if propose_deltas is not None else _NO_PROPOSE,
        *_priors_and_weights(priors_cxcywh, box_coder_weights),
        np.float32(0.0 if every_row else _logit_bound(min_score)), every_row)
    return (None if every_row else rows), boxes, scores


def decode_passd(
    propose_deltas: np.ndarray,
    cls_logits: np.ndarray,
    box_deltas: np.ndarray,
    priors_cxcywh: np.ndarray,
    box_coder_weights: BoxWeights,
    min_score: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """PASSD's two-step decoding: default boxes → adjusted boxes → final boxes.

    Args:
        propose_deltas: ``(A, 4)`` propose-stage offsets (already tanh-clipped by the model)
            relative to the default boxes.
        cls_logits: ``(A, K+1)`` attend-stage logits, background first.
        box_deltas: ``(A, 4)`` attend-stage offsets relative to the adjusted boxes.
        priors_cxcywh: ``(A, 4)`` default boxes in input pixels.
        box_coder_weights: the model's box coder weights (both stages use them).
        min_score: as for ``decode_ssd``.

    Returns:
        ``(boxes_xyxy (A, 4), scores (A, K))`` float32.
    """
    priors_cxcywh = np.asarray(priors_cxcywh, dtype=np.float32)
    return _expand(_ssd_candidates(cls_logits, box_deltas, priors_cxcywh, box_coder_weights,
                                   min_score, propose_deltas), len(priors_cxcywh))


def decode_retinanet(
    cls_logits: np.ndarray,
    box_deltas: np.ndarray,
    priors_cxcywh: np.ndarray,
    box_coder_weights: BoxWeights,
    conf_logits: np.ndarray | None = None,
    min_score: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid head (RetinaNet, HAR-Net, DSANet), optionally with DSANet-Conf's confidence.

    Args:
        cls_logits: ``(A, K)`` per-class logits.
        box_deltas: ``(A, 4)`` offsets relative to the anchors.
        priors_cxcywh: ``(A, 4)`` anchors in input pixels.
        box_coder_weights: the model's box coder weights.
        conf_logits: ``(A, 1)`` object-confidence logits, or None.
        min_score: anchors whose every class logit is below ``logit(min_score)`` (so no
            score can exceed it: the confidence only lowers a score) are returned with
            scores and box 0; 0 decodes every anchor.

    Returns:
        ``(boxes_xyxy (A, 4), scores (A, K))`` float32.
    """
    priors_cxcywh = np.asarray(priors_cxcywh, dtype=np.float32)
    return _expand(_retinanet_candidates(cls_logits, box_deltas, priors_cxcywh,
                                         box_coder_weights, conf_logits, min_score),
                   len(priors_cxcywh))


def _retinanet_candidates(cls_logits: np.ndarray, box_deltas: np.ndarray,
                          priors_cxcywh: np.ndarray, box_coder_weights: BoxWeights,
                          conf_logits: np.ndarray | None, min_score: float) -> Candidates:
    """``decode_retinanet`` of the anchors that can pass ``min_score`` only."""
    num_anchors = len(priors_cxcywh)
    cls_logits = _as_rows("cls_logits", cls_logits, num_anchors, None)
    box_deltas = _as_rows("box_deltas", box_deltas, num_anchors, 4)
    if conf_logits is not None:
        conf_logits = _as_rows("conf_logits", conf_logits, num_anchors, 1)
    if min_score >= 1.0:  # no sigmoid score exceeds 1
        return _no_candidates(cls_logits.shape[1])
    every_row = min_score <= 0.0
    rows, boxes, scores = kernels.sigmoid_candidates(
        cls_logits, box_deltas, conf_logits if conf_logits is not None else _NO_CONF,
        *_priors_and_weights(priors_cxcywh, box_coder_weights),
        np.float32(0.0 if every_row else _logit_bound(min_score)), every_row)
    return (None if every_row else rows), boxes, scores


def decode_head_outputs(
    family: str,
    outputs: Mapping[str, np.ndarray],
    priors_cxcywh: np.ndarray,
    box_coder_weights: BoxWeights,
    min_score: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image's raw head outputs (keyed by output name) for ``family``.

    Args:
        family: one of ``HEAD_FAMILIES``.
        outputs: ``{name: (A, k) or (1, A, k)}`` — the model's ``export_output_names``.
        priors_cxcywh: ``(A, 4)`` anchors from the model's anchor spec.
        box_coder_weights: the model's box coder weights.
        min_score: the selection's score threshold: anchors that cannot exceed it may come
            back with scores and box 0 (selection drops them either way); 0 decodes every
            anchor.

    Returns:
        ``(boxes_xyxy (A, 4), scores (A, K))`` float32, in input pixels.
    """
    priors_cxcywh = np.asarray(priors_cxcywh, dtype=np.float32)
    return _expand(decode_head_candidates(family, outputs, priors_cxcywh, box_coder_weights,
                                          min_score), len(priors_cxcywh))


def decode_head_candidates(
    family: str,
    outputs: Mapping[str, np.ndarray],
    priors_cxcywh: np.ndarray,
    box_coder_weights: BoxWeights,
    min_score: float = 0.0,
) -> Candidates:
    """``decode_head_outputs`` without the anchors that cannot pass ``min_score``.

    What the SDK's decoder uses: at an application threshold a few hundred of the 6 000-15 000
    anchors can pass, and selection over their rows only does the same work on the same
    values in the same order (so it selects the same detections) without writing and
    rescanning the full ``(A, K)`` arrays, 0.3-0.5 ms of a frame with the caches cold.

    Returns:
        ``(rows, boxes_xyxy (n, 4), scores (n, K))`` float32: ``rows`` the ascending anchor
        indices decoded (None: all A, then n = A).
    """
    if family not in HEAD_FAMILIES:
        raise ValueError(f"unknown head family {family!r}; expected one of {HEAD_FAMILIES}")
    needed = {"cls_logits", "box_deltas"}
    missing = needed - set(outputs)
    if missing:
        raise ValueError(f"{family} head outputs lack {sorted(missing)} (got {sorted(outputs)})")
    # (The priors are converted and checked once, as the kernels take them.)
    if family == "retinanet":
        return _retinanet_candidates(outputs["cls_logits"], outputs["box_deltas"],
                                     priors_cxcywh, box_coder_weights,
                                     outputs.get("conf_logits"), min_score)
    propose = outputs.get("propose_deltas") if family == "passd" else None
    return _ssd_candidates(outputs["cls_logits"], outputs["box_deltas"], priors_cxcywh,
                           box_coder_weights, min_score, propose)
