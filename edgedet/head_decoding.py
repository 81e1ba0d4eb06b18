"""From one image's raw head outputs to per-anchor boxes and class scores (numpy, torch-free).

The models return raw head tensors (``forward_export``); decoding them against the anchors
happens here, outside the network, so training evaluation and the runtime SDK share one
implementation. The result feeds ``edgedet.postprocess.select_detections``.

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

from collections.abc import Mapping

import numpy as np

from edgedet.box_coding import decode, xyxy_to_cxcywh

HEAD_FAMILIES: tuple[str, ...] = ("ssd", "passd", "retinanet")
# The raw outputs each family's decoding reads (others, e.g. PASSD's objectness, are training
# signals).
DECODED_OUTPUTS: dict[str, tuple[str, ...]] = {
    "ssd": ("cls_logits", "box_deltas"),
    "passd": ("propose_deltas", "cls_logits", "box_deltas"),
    "retinanet": ("cls_logits", "box_deltas", "conf_logits"),
}

BoxWeights = tuple[float, float, float, float]
# Logit margin of foreground_softmax's bound (float rounding must never drop an anchor).
_BOUND_MARGIN = 1e-3


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float32)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def foreground_softmax(cls_logits: np.ndarray, min_score: float = 0.0) -> np.ndarray:
    """``softmax(cls_logits)[:, 1:]`` (background first) for the anchors that can score above
    ``min_score``; the others get 0.

    ``p_k = 1 / sum_j exp(l_j - l_k) <= sigmoid(l_k - l_0)``, so an anchor whose best
    foreground logit is less than ``logit(min_score)`` above its background logit has no
    class above ``min_score``, and selection (which drops scores at or below the threshold)
    would discard it anyway. Most anchors of a frame are such background, and the softmax of
    every anchor was half of the SDK's decoding time (0.6 of 1.2 ms on the zoo PASSD); the
    rows it computes are computed exactly as before.

    Args:
        cls_logits: ``(A, K+1)`` float32 logits, background first.
        min_score: the score threshold (0: every anchor).

    Returns:
        ``(A, K)`` float32 scores.
    """
    if min_score <= 0.0:
        return np.ascontiguousarray(softmax(cls_logits)[:, 1:])
    scores = np.zeros((cls_logits.shape[0], cls_logits.shape[1] - 1), dtype=np.float32)
    if min_score >= 1.0:
        return scores
    # The margin keeps float rounding of the bound from dropping an anchor at the threshold.
    bound = float(np.log(min_score / (1.0 - min_score))) - _BOUND_MARGIN
    possible = np.flatnonzero(cls_logits[:, 1:].max(axis=1) - cls_logits[:, 0] >= bound)
    if len(possible):
        scores[possible] = softmax(cls_logits[possible])[:, 1:]
    return scores


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
    """``array`` as ``(A, k)`` float32; a leading batch axis of 1 is dropped."""
    array = np.asarray(array, dtype=np.float32)
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
        min_score: scores that cannot exceed it may be returned as 0
            (``foreground_softmax``).

    Returns:
        ``(boxes_xyxy (A, 4), scores (A, K))`` float32, boxes in input pixels.
    """
    priors_cxcywh = np.asarray(priors_cxcywh, dtype=np.float32)
    num_anchors = len(priors_cxcywh)
    cls_logits = _as_rows("cls_logits", cls_logits, num_anchors, None)
    box_deltas = _as_rows("box_deltas", box_deltas, num_anchors, 4)
    if cls_logits.shape[1] < 2:
        raise ValueError(f"softmax cls_logits need K+1 >= 2 columns, got {cls_logits.shape}")
    scores = foreground_softmax(cls_logits, min_score)
    boxes_xyxy = decode(box_deltas, priors_cxcywh, box_coder_weights).astype(np.float32)
    return boxes_xyxy, scores


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
    propose_deltas = _as_rows("propose_deltas", propose_deltas, len(priors_cxcywh), 4)
    adjusted_cxcywh = xyxy_to_cxcywh(decode(propose_deltas, priors_cxcywh, box_coder_weights))
    return decode_ssd(cls_logits, box_deltas, adjusted_cxcywh, box_coder_weights, min_score)


def decode_retinanet(
    cls_logits: np.ndarray,
    box_deltas: np.ndarray,
    priors_cxcywh: np.ndarray,
    box_coder_weights: BoxWeights,
    conf_logits: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid head (RetinaNet, HAR-Net, DSANet), optionally with DSANet-Conf's confidence.

    Args:
        cls_logits: ``(A, K)`` per-class logits.
        box_deltas: ``(A, 4)`` offsets relative to the anchors.
        priors_cxcywh: ``(A, 4)`` anchors in input pixels.
        box_coder_weights: the model's box coder weights.
        conf_logits: ``(A, 1)`` object-confidence logits, or None.

    Returns:
        ``(boxes_xyxy (A, 4), scores (A, K))`` float32.
    """
    priors_cxcywh = np.asarray(priors_cxcywh, dtype=np.float32)
    num_anchors = len(priors_cxcywh)
    scores = sigmoid(_as_rows("cls_logits", cls_logits, num_anchors, None))
    if conf_logits is not None:
        scores = scores * sigmoid(_as_rows("conf_logits", conf_logits, num_anchors, 1))
    box_deltas = _as_rows("box_deltas", box_deltas, num_anchors, 4)
    boxes_xyxy = decode(box_deltas, priors_cxcywh, box_coder_weights).astype(np.float32)
    return boxes_xyxy, scores


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
        min_score: the selection's score threshold: softmax heads may return 0 for the
            anchors that cannot exceed it (``foreground_softmax``); 0 decodes every score.

    Returns:
        ``(boxes_xyxy (A, 4), scores (A, K))`` float32, in input pixels.
    """
    if family not in HEAD_FAMILIES:
        raise ValueError(f"unknown head family {family!r}; expected one of {HEAD_FAMILIES}")
    needed = {"cls_logits", "box_deltas"}
    missing = needed - set(outputs)
    if missing:
        raise ValueError(f"{family} head outputs lack {sorted(missing)} (got {sorted(outputs)})")
    if family == "retinanet":
        return decode_retinanet(outputs["cls_logits"], outputs["box_deltas"], priors_cxcywh,
                                box_coder_weights, outputs.get("conf_logits"))
    if family == "passd" and "propose_deltas" in outputs:
        return decode_passd(outputs["propose_deltas"], outputs["cls_logits"],
                            outputs["box_deltas"], priors_cxcywh, box_coder_weights, min_score)
    return decode_ssd(outputs["cls_logits"], outputs["box_deltas"], priors_cxcywh,
                      box_coder_weights, min_score)
