import math
import warnings

import numpy as np
import pytest

from edgedet.head_decoding import (
    decode_head_candidates,
    decode_head_outputs,
    decode_passd,
    decode_retinanet,
    decode_ssd,
    sigmoid,
    softmax,
)

SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
PRIORS = np.array([[50.0, 50.0, 20.0, 20.0]], dtype=np.float32)  # one prior, cxcywh


def test_ssd_softmax_drops_background_and_decodes_against_priors():
    # softmax([0, ln 2, 0]) = [1/4, 1/2, 1/4]; background (index 0) is dropped.
    cls_logits = np.array([[0.0, math.log(2.0), 0.0]])
    # dx = 1 in weighted units = 0.1 prior widths = 2 px to the right.
    box_deltas = np.array([[1.0, 0.0, 0.0, 0.0]])
    boxes, scores = decode_ssd(cls_logits, box_deltas, PRIORS, SSD_WEIGHTS)
    np.testing.assert_allclose(scores, [[0.5, 0.25]], rtol=1e-6)
    np.testing.assert_allclose(boxes, [[42.0, 40.0, 62.0, 60.0]], rtol=1e-6)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32


def test_passd_decodes_final_boxes_against_the_adjusted_boxes():
    # Propose: dx = 10 weighted = 1 prior width = +20 px → adjusted (70, 50, 20, 20).
    propose = np.array([[10.0, 0.0, 0.0, 0.0]])
    # Attend: dw = 5 ln 2 weighted = ln 2 → width doubles to 40 around cx = 70.
    box_deltas = np.array([[0.0, 0.0, 5.0 * math.log(2.0), 0.0]])
    cls_logits = np.array([[0.0, 0.0]])
    boxes, scores = decode_passd(propose, cls_logits, box_deltas, PRIORS, SSD_WEIGHTS)
    np.testing.assert_allclose(boxes, [[50.0, 40.0, 90.0, 60.0]], rtol=1e-5)
    np.testing.assert_allclose(scores, [[0.5]], rtol=1e-6)


def test_retinanet_sigmoid_times_confidence():
    cls_logits = np.array([[0.0, math.log(3.0)]])  # sigmoid: 0.5, 0.75
    conf_logits = np.array([[math.log(3.0)]])  # sigmoid: 0.75
    box_deltas = np.array([[0.0, 0.0, math.log(2.0), 0.0]])  # width x2, weights 1
    boxes, scores = decode_retinanet(cls_logits, box_deltas, PRIORS, (1.0, 1.0, 1.0, 1.0),
                                     conf_logits)
    np.testing.assert_allclose(scores, [[0.375, 0.5625]], rtol=1e-6)
    np.testing.assert_allclose(boxes, [[30.0, 40.0, 70.0, 60.0]], rtol=1e-6)
    _, plain = decode_retinanet(cls_logits, box_deltas, PRIORS, (1.0, 1.0, 1.0, 1.0))
    np.testing.assert_allclose(plain, [[0.5, 0.75]], rtol=1e-6)


def test_dispatch_by_family_and_batch_axis_of_one():
    outputs = {"cls_logits": np.zeros((1, 1, 3)), "box_deltas": np.zeros((1, 1, 4)),
               "propose_deltas": np.array([[[10.0, 0.0, 0.0, 0.0]]]),
               "objectness_logits": np.zeros((1, 1, 2))}
    boxes, scores = decode_head_outputs("passd", outputs, PRIORS, SSD_WEIGHTS)
    np.testing.assert_allclose(boxes, [[60.0, 40.0, 80.0, 60.0]], rtol=1e-6)
    assert scores.shape == (1, 2)
    # PASSD's plain-head ablation has no propose outputs: decoded as SSD.
    plain = {"cls_logits": outputs["cls_logits"], "box_deltas": outputs["box_deltas"]}
    boxes, _ = decode_head_outputs("passd", plain, PRIORS, SSD_WEIGHTS)
    np.testing.assert_allclose(boxes, [[40.0, 40.0, 60.0, 60.0]], rtol=1e-6)
    boxes, scores = decode_head_outputs("retinanet", plain, PRIORS, (1.0, 1.0, 1.0, 1.0))
    assert scores.shape == (1, 3)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown head family"):
        decode_head_outputs("yolo", {}, PRIORS, SSD_WEIGHTS)
    with pytest.raises(ValueError, match="lack"):
        decode_head_outputs("ssd", {"cls_logits": np.zeros((1, 3))}, PRIORS, SSD_WEIGHTS)
    with pytest.raises(ValueError, match="box_deltas"):
        decode_ssd(np.zeros((1, 3)), np.zeros((2, 4)), PRIORS, SSD_WEIGHTS)


def test_softmax_and_sigmoid_are_stable_for_extreme_logits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
        p = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(s, [0.0, 0.5, 1.0], atol=1e-7)
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize("threshold", [0.01, 0.05, 0.4, 0.9])
def test_softmax_decoding_skips_only_anchors_that_cannot_pass(threshold):
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 3.0, size=(5000, 13)).astype(np.float32)
    logits[:, 0] += 10.0  # mostly background, as a frame's anchors are
    # Rows sitting right at the bound: best foreground logit - background = logit(t).
    logits[:50, 1] = logits[:50, 0] + np.float32(np.log(threshold / (1 - threshold)))
    logits[50, 4] = np.nan  # a NaN logit: its scores could never pass
    outputs = {"cls_logits": logits, "box_deltas": np.zeros((5000, 4), np.float32)}
    priors = np.tile(PRIORS, (5000, 1))
    full = np.ascontiguousarray(softmax(logits)[:, 1:])
    rows, _, scores = decode_head_candidates("ssd", outputs, priors, SSD_WEIGHTS,
                                             min_score=threshold)
    assert len(rows) < len(logits) / 2  # the point: most rows are skipped
    assert set(range(50)) <= set(rows.tolist()) and 50 not in rows
    # The same values as numpy's softmax, up to the last bit of exp (the kernel's is libm's).
    np.testing.assert_allclose(scores, full[rows], rtol=2e-6, atol=1e-12)
    skipped = np.setdiff1d(np.arange(len(logits)), rows)
    assert np.all(np.nan_to_num(full[skipped]) <= threshold)  # nothing to select there
    _, _, every = decode_head_candidates("ssd", outputs, priors, SSD_WEIGHTS)
    np.testing.assert_array_equal(every[rows], scores)  # row by row the same computation
    none, _, _ = decode_head_candidates("ssd", outputs, priors, SSD_WEIGHTS, min_score=1.0)
    assert len(none) == 0


@pytest.mark.parametrize("family", ["ssd", "passd", "retinanet"])
@pytest.mark.parametrize("threshold", [0.05, 0.4, 0.75, 0.999])
def test_decoding_only_the_anchors_that_can_pass_selects_the_same_detections(family,
                                                                             threshold):
    from edgedet.postprocess import select_detections

    rng = np.random.default_rng(3)
    num_anchors, num_classes = 400, 5
    priors = np.concatenate([rng.uniform(20, 300, (num_anchors, 2)),
                             rng.uniform(8, 80, (num_anchors, 2))], axis=1).astype(np.float32)
    width = num_classes if family == "retinanet" else num_classes + 1
    outputs = {
        "cls_logits": rng.normal(-3.0, 2.5, (num_anchors, width)).astype(np.float32),
        "box_deltas": rng.normal(0, 0.5, (num_anchors, 4)).astype(np.float32),
        "propose_deltas": rng.normal(0, 0.5, (num_anchors, 4)).astype(np.float32),
        "conf_logits": rng.normal(0, 1, (num_anchors, 1)).astype(np.float32),
    }
    if family != "passd":
        del outputs["propose_deltas"]
    if family != "retinanet":
        del outputs["conf_logits"]
    full_boxes, full_scores = decode_head_outputs(family, outputs, priors, SSD_WEIGHTS)
    boxes, scores = decode_head_outputs(family, outputs, priors, SSD_WEIGHTS, min_score=threshold)
    passing = (full_scores > threshold).any(axis=1)
    # Some anchors pass, except at 0.999 for RetinaNet, whose confidence factor keeps every
    # score of these logits below 0.81: that case checks the empty selection.
    assert passing.any() == (family != "retinanet" or threshold < 0.999)
    # Every anchor that can pass is decoded exactly as before; the rest may come back as 0.
    np.testing.assert_array_equal(boxes[passing], full_boxes[passing])
    np.testing.assert_array_equal(scores[passing], full_scores[passing])
    assert not (scores[~passing] > threshold).any()
    rows, row_boxes, row_scores = decode_head_candidates(family, outputs, priors, SSD_WEIGHTS,
                                                         min_score=threshold)
    # The candidates are ascending anchor rows, a superset of the passing ones, same values.
    assert np.all(np.diff(rows) > 0) and set(np.flatnonzero(passing)) <= set(rows.tolist())
    np.testing.assert_array_equal(row_boxes, full_boxes[rows])
    np.testing.assert_array_equal(row_scores, full_scores[rows])
    for mode in ("hard", "soft+voting"):
        expected = select_detections(full_boxes, full_scores, score_threshold=threshold,
                                     nms_mode=mode, pre_nms_top_k=30)
        for candidate_boxes, candidate_scores in ((boxes, scores), (row_boxes, row_scores)):
            actual = select_detections(candidate_boxes, candidate_scores,
                                       score_threshold=threshold, nms_mode=mode,
                                       pre_nms_top_k=30)
            for a, b in zip(actual, expected, strict=True):
                np.testing.assert_array_equal(a, b)


def test_candidates_without_a_threshold_are_every_anchor() -> None:
    rows, boxes, scores = decode_head_candidates(
        "ssd", {"cls_logits": np.zeros((1, 3)), "box_deltas": np.zeros((1, 4))}, PRIORS,
        SSD_WEIGHTS)
    assert rows is None and boxes.shape == (1, 4) and scores.shape == (1, 2)
    rows, boxes, scores = decode_head_candidates(
        "retinanet", {"cls_logits": np.full((1, 2), -20.0), "box_deltas": np.zeros((1, 4))},
        PRIORS, SSD_WEIGHTS, min_score=0.5)
    assert rows.shape == (0,) and boxes.shape == (0, 4) and scores.shape == (0, 2)


@pytest.mark.parametrize("threshold", [0.01, 0.4, 0.9, 1.0])
def test_sigmoid_candidate_rows_are_the_rows_whose_maximum_reaches_the_bound(threshold):
    from edgedet.head_decoding import _logit_bound

    rng = np.random.default_rng(5)
    logits = rng.normal(-9.0, 2.0, size=(3000, 12)).astype(np.float32)
    if threshold < 1.0:
        logits[:40, 3] = _logit_bound(threshold)  # exactly at the bound
        logits[40:80] = _logit_bound(threshold) + 1.0  # every class of the row passes
        logits[80, 2] = np.nan  # NaN alone passes nothing
    outputs = {"cls_logits": logits, "box_deltas": np.zeros((3000, 4), np.float32)}
    priors = np.tile(PRIORS, (3000, 1))
    rows, _, scores = decode_head_candidates("retinanet", outputs, priors, SSD_WEIGHTS,
                                             min_score=threshold)
    expected = (np.array([], np.int64) if threshold >= 1.0 else
                np.flatnonzero((logits >= np.float32(_logit_bound(threshold))).any(axis=1)))
    np.testing.assert_array_equal(rows, expected)
    assert threshold == 1.0 or 80 <= len(rows) < len(logits) / 2
    np.testing.assert_allclose(scores, sigmoid(logits[rows]), rtol=2e-6, atol=1e-30)
