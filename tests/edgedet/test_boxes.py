import cv2
import numpy as np
import pytest

import edgedet.boxes as boxes_module
from edgedet.boxes import (
    batched_nms,
    batched_soft_nms,
    box_iou,
    box_voting,
    nms,
    soft_nms,
    topk_candidates,
)

# Four boxes with hand-computed overlaps:
#   IoU(A, B) = 90 / 110 = 0.818, IoU(A, D) = 50 / 150 = 1/3, IoU(B, D) = 60 / 140 = 0.4286,
#   C overlaps nothing.
A, B, C, D = [0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [5, 0, 15, 10]
BOXES = np.array([A, B, C, D], dtype=np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)


def _random_boxes(rng: np.random.Generator, n: int, integer: bool = False) -> np.ndarray:
    xy = rng.uniform(0, 200, size=(n, 2))
    wh = rng.uniform(5, 60, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    return np.round(boxes).astype(np.float32) if integer else boxes.astype(np.float32)


def test_box_iou_hand_values() -> None:
    iou = box_iou(BOXES, BOXES)
    assert iou.shape == (4, 4)
    np.testing.assert_allclose(np.diag(iou), 1.0)
    assert iou[0, 1] == pytest.approx(90 / 110)
    assert iou[0, 3] == pytest.approx(1 / 3)
    assert iou[1, 3] == pytest.approx(60 / 140)
    assert iou[0, 2] == 0.0
    np.testing.assert_allclose(iou, iou.T)


def test_box_iou_degenerate_boxes_give_zero_not_nan() -> None:
    zero = np.array([[5, 5, 5, 5]], np.float32)
    assert box_iou(zero, zero)[0, 0] == 0.0
    assert box_iou(np.zeros((0, 4)), BOXES).shape == (0, 4)


def test_nms_hand_values() -> None:
    np.testing.assert_array_equal(nms(BOXES, SCORES, 0.5), [0, 2, 3])
    np.testing.assert_array_equal(nms(BOXES, SCORES, 0.3), [0, 2])
    np.testing.assert_array_equal(nms(BOXES, SCORES, 0.9), [0, 1, 2, 3])
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_nms_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(BOXES, np.zeros(3), 0.5)
    for threshold in (float("nan"), -1.0, "0.5"):  # nan and -1 kept only the top box
        with pytest.raises(ValueError, match="iou_threshold must be a number in"):
            nms(BOXES, np.zeros(len(BOXES)), threshold)  # type: ignore[arg-type]
    # Soft-NMS checks its class ids as hard NMS does (299 ids for 300 boxes lost one box).
    with pytest.raises(ValueError, match="class_ids must have the same shape"):
        boxes_module.batched_soft_nms(BOXES, np.ones(len(BOXES)), np.zeros(len(BOXES) - 1))
    with pytest.raises(ValueError, match="4 candidates with 3"):
        box_voting(BOXES[:1], [0], BOXES, np.ones(4), [0, 0, 0])
    for k in (-5, 2.5):
        with pytest.raises(ValueError, match="k must be a whole number"):
            topk_candidates(np.ones((4, 2)), k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma must be > 0"):
        boxes_module.batched_soft_nms(BOXES, np.ones(len(BOXES)), np.zeros(len(BOXES)),
                                      sigma=float("nan"))


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_opencv(threshold: float) -> None:
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 400)
    scores = rng.permutation(400).astype(np.float32) / 400 + 0.001  # distinct scores
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    expected = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, threshold)
    np.testing.assert_array_equal(nms(boxes, scores, threshold), np.asarray(expected).ravel())


def test_batched_nms_classes_do_not_suppress_each_other() -> None:
    classes = np.array([0, 1, 0, 0])
    # B is class 1, so A cannot suppress it; D still loses to A at 0.3.
    np.testing.assert_array_equal(batched_nms(BOXES, SCORES, classes, 0.3), [0, 1, 2])


def test_batched_nms_equals_per_class_nms() -> None:
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng, 300)
    scores = rng.uniform(size=300).astype(np.float32)
    classes = rng.integers(0, 5, size=300)
    keep = batched_nms(boxes, scores, classes, 0.5)
    assert np.all(np.diff(scores[keep]) <= 0)
    for c in range(5):
        idx = np.flatnonzero(classes == c)
        expected = set(idx[nms(boxes[idx], scores[idx], 0.5)].tolist())
        assert set(keep[classes[keep] == c].tolist()) == expected


def test_soft_nms_gaussian_hand_values() -> None:
    boxes = np.array([A, D], np.float32)  # IoU 1/3
    keep, new_scores = soft_nms(boxes, np.array([0.9, 0.6], np.float32), sigma=0.5)
    np.testing.assert_array_equal(keep, [0, 1])
    # Bodla et al.: s_i * exp(-IoU^2 / sigma) = 0.6 * exp(-(1/9) / 0.5)
    np.testing.assert_allclose(new_scores, [0.9, 0.6 * np.exp(-(1 / 9) / 0.5)], rtol=1e-6)


def test_soft_nms_linear_hand_values() -> None:
    keep, new_scores = soft_nms(BOXES, SCORES, iou_threshold=0.3, method="linear")
    # A first; B decays to 0.8 * (1 - 0.818) = 0.1455, D to 0.6 * (1 - 1/3) = 0.4; C untouched.
    # Then C (0.7), then D (0.4), which decays B by (1 - 0.4286) to 0.0831.
    np.testing.assert_array_equal(keep, [0, 2, 3, 1])
    b_after_a = 0.8 * (1 - 90 / 110)
    np.testing.assert_allclose(
        new_scores, [0.9, 0.7, 0.4, b_after_a * (1 - 60 / 140)], rtol=1e-5
    )


def test_soft_nms_prunes_below_score_threshold() -> None:
    keep, _ = soft_nms(BOXES, SCORES, iou_threshold=0.3, method="linear", score_threshold=0.1)
    np.testing.assert_array_equal(keep, [0, 2, 3])  # B (0.083) pruned


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_opencv(method: str) -> None:
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 150, integer=True)  # OpenCV's softNMSBoxes takes int Rects
    scores = rng.uniform(0.05, 1.0, size=150).astype(np.float32)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(int)
    cv_method = (cv2.dnn.SoftNMSMethod_SOFTNMS_LINEAR if method == "linear"
                 else cv2.dnn.SoftNMSMethod_SOFTNMS_GAUSSIAN)
    cv_scores, cv_keep = cv2.dnn.softNMSBoxes(
        xywh.tolist(), scores.tolist(), 0.01, 0.3, 0, 0.5, cv_method
    )
    keep, new_scores = soft_nms(boxes, scores, iou_threshold=0.3, sigma=0.5,
                                score_threshold=0.01, method=method)
    cv_keep = np.asarray(cv_keep).ravel()
    np.testing.assert_array_equal(keep, cv_keep)
    np.testing.assert_allclose(new_scores, np.asarray(cv_scores).ravel()[: len(keep)],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_iou_matrix_gives_the_same_bits_as_rows(method: str, monkeypatch) -> None:
    # Ties, duplicates, zero-area and non-finite boxes included: the matrix path must not
    # change a single kept index or score.
    rng = np.random.default_rng(4)
    boxes = _random_boxes(rng, 300)
    boxes[10] = boxes[11]
    boxes[20, 2:] = boxes[20, :2]
    boxes[30] = [0, 0, np.inf, np.inf]
    scores = rng.uniform(0.0, 1.0, size=300).astype(np.float32)
    scores[40:45] = scores[39]
    by_matrix = soft_nms(boxes, scores, iou_threshold=0.3, method=method)
    monkeypatch.setattr(boxes_module, "IOU_MATRIX_LIMIT", 0)
    with np.errstate(invalid="ignore"):
        by_rows = soft_nms(boxes, scores, iou_threshold=0.3, method=method)
    np.testing.assert_array_equal(by_matrix[0], by_rows[0])
    np.testing.assert_array_equal(by_matrix[1], by_rows[1])
    assert len(by_matrix[0]) > 100


def test_iou_matrix_rows_are_the_one_to_many_rows() -> None:
    boxes = _random_boxes(np.random.default_rng(5), 40)
    areas = boxes_module.box_area(boxes)
    matrix = boxes_module._iou_matrix(boxes, areas)
    for i in range(40):
        np.testing.assert_array_equal(
            matrix[i], boxes_module._iou_one_to_many(boxes[i], areas[i], boxes, areas))


def test_batched_soft_nms_is_per_class() -> None:
    classes = np.array([0, 1, 0, 1])
    keep, new_scores = batched_soft_nms(BOXES, SCORES, classes, method="linear",
                                        iou_threshold=0.3)
    # class 0: A, C never overlap; class 1: B then D, D decayed by (1 - 0.4286)
    order = dict(zip(keep.tolist(), new_scores.tolist(), strict=True))
    assert order[0] == pytest.approx(0.9) and order[2] == pytest.approx(0.7)
    assert order[1] == pytest.approx(0.8)
    assert order[3] == pytest.approx(0.6 * (1 - 60 / 140), rel=1e-5)
    assert np.all(np.diff(new_scores) <= 0)


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("stop_at", [0.05, 0.4, 0.9, 1.0])
def test_soft_nms_stop_at_returns_the_prefix_above_it(method: str, stop_at: float) -> None:
    # Clustered duplicates (as a detector's candidates are) and tied scores.
    rng = np.random.default_rng(7)
    centres = _random_boxes(rng, 12)
    boxes = (np.repeat(centres, 15, axis=0)
             + rng.normal(0, 3, (180, 4)).astype(np.float32))
    scores = rng.uniform(0.0, 1.0, 180).astype(np.float32)
    scores[50:55] = scores[49]
    classes = rng.integers(0, 3, 180)
    full = soft_nms(boxes, scores, iou_threshold=0.3, method=method)
    early = soft_nms(boxes, scores, iou_threshold=0.3, method=method, stop_at=stop_at)
    above = full[1] > stop_at
    np.testing.assert_array_equal(early[0], full[0][above])
    np.testing.assert_array_equal(early[1], full[1][above])
    full = batched_soft_nms(boxes, scores, classes, iou_threshold=0.3, method=method)
    early = batched_soft_nms(boxes, scores, classes, iou_threshold=0.3, method=method,
                             stop_at=stop_at)
    above = full[1] > stop_at
    np.testing.assert_array_equal(early[0], full[0][above])
    np.testing.assert_array_equal(early[1], full[1][above])


def _clustered_candidates(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """A camera frame's candidates: duplicates around a few objects, tied scores, a
    zero-area and a non-finite box, several classes."""
    rng = np.random.default_rng(seed)
    boxes = (np.repeat(_random_boxes(rng, n // 10), 10, axis=0)
             + rng.normal(0, 3, (n, 4)).astype(np.float32))
    boxes[5, 2:] = boxes[5, :2]
    boxes[6] = [0, 0, np.inf, np.inf]
    boxes[7] = [1, 1, np.inf, np.inf]  # infinite overlap with box 6
    scores = rng.uniform(0.0, 0.9, n).astype(np.float32)
    scores[20:24] = scores[19]
    classes = rng.integers(0, 4, n)
    classes[7] = classes[6]
    # Two top boxes tied across classes, the lower index in the higher class.
    scores[[0, n - 1]], classes[[0, n - 1]] = 0.95, [3, 0]
    return boxes, scores, classes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_class_aware_nms_equals_the_per_class_loops(seed: int, monkeypatch) -> None:
    boxes, scores, classes = _clustered_candidates(seed)
    with np.errstate(invalid="ignore"):
        joint_nms = batched_nms(boxes, scores, classes, 0.5)
        joint_soft = [batched_soft_nms(boxes, scores, classes, 0.5, method=method,
                                       stop_at=stop_at)
                      for method in ("linear", "gaussian") for stop_at in (None, 0.4)]
        monkeypatch.setattr(boxes_module, "JOINT_LIMIT", 0)
        np.testing.assert_array_equal(joint_nms, batched_nms(boxes, scores, classes, 0.5))
        per_class_soft = [batched_soft_nms(boxes, scores, classes, 0.5, method=method,
                                           stop_at=stop_at)
                          for method in ("linear", "gaussian") for stop_at in (None, 0.4)]
    assert 10 < len(joint_nms) < len(boxes)
    for joint, per_class in zip(joint_soft, per_class_soft, strict=True):
        np.testing.assert_array_equal(joint[0], per_class[0])
        np.testing.assert_array_equal(joint[1], per_class[1])


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_joint_soft_nms_iou_rows_are_box_iou_of_the_kept_boxes(method: str,
                                                                monkeypatch) -> None:
    boxes, scores, classes = _clustered_candidates(3)
    with np.errstate(invalid="ignore"):
        keep, new, iou = batched_soft_nms(boxes, scores, classes, 0.5, method=method,
                                          stop_at=0.3, return_iou=True)
        expected = box_iou(boxes[keep], boxes)
        empty = batched_soft_nms(boxes, scores, classes, stop_at=1.0, return_iou=True)
        monkeypatch.setattr(boxes_module, "JOINT_LIMIT", 0)
        per_class = batched_soft_nms(boxes, scores, classes, 0.5, method=method, stop_at=0.3,
                                     return_iou=True)
    assert iou.dtype == np.float32 and len(keep) > 5
    np.testing.assert_array_equal(iou, expected)  # the infinite boxes' rows included
    np.testing.assert_array_equal(per_class[0], keep)
    np.testing.assert_array_equal(per_class[1], new)
    assert per_class[2] is None  # the per-class loops leave the rows to box_voting
    assert empty[0].shape == (0,) and empty[2].shape == (0, len(boxes))


def test_box_voting_with_the_caller_s_iou_gives_the_same_bits() -> None:
    boxes, scores, classes = _clustered_candidates(4)
    boxes, scores, classes = boxes[10:], scores[10:], classes[10:]  # finite boxes only
    keep, _, iou = batched_soft_nms(boxes, scores, classes, 0.5, stop_at=0.4, return_iou=True)
    own = box_voting(boxes[keep], classes[keep], boxes, scores, classes, 0.5)
    given = box_voting(boxes[keep], classes[keep], boxes, scores, classes, 0.5, kept_iou=iou)
    np.testing.assert_array_equal(own[0], given[0])
    np.testing.assert_array_equal(own[1], given[1])
    with pytest.raises(ValueError, match="kept_iou must have shape"):
        box_voting(boxes[keep], classes[keep], boxes, scores, classes, 0.5, kept_iou=iou[:, 1:])


def test_box_voting_equals_a_loop_over_kept_boxes() -> None:
    rng = np.random.default_rng(8)
    candidates = np.repeat(_random_boxes(rng, 10), 8, axis=0) + rng.normal(
        0, 2, (80, 4)).astype(np.float32)
    scores = rng.uniform(0.05, 1.0, 80).astype(np.float32)
    classes = rng.integers(0, 4, 80)
    kept = np.append(batched_nms(candidates, scores, classes, 0.5), 0)  # rows may repeat
    kept_boxes = np.append(candidates[kept], [[900, 900, 910, 910]], axis=0)  # no voters
    kept_classes = np.append(classes[kept], 1)
    voted, voted_scores = box_voting(kept_boxes, kept_classes, candidates, scores, classes,
                                     0.5)
    for row, (box, cls) in enumerate(zip(kept_boxes, kept_classes, strict=True)):
        iou = box_iou(box[None], candidates)[0]
        voters = np.flatnonzero((iou >= 0.5) & (classes == cls))
        if not voters.size:
            np.testing.assert_array_equal(voted[row], box)
            assert voted_scores[row] == 0
            continue
        weights = scores[voters].astype(np.float64)
        expected = (weights[:, None] * candidates[voters]).sum(axis=0) / weights.sum()
        np.testing.assert_allclose(voted[row], expected, rtol=1e-6, atol=1e-4)
        assert voted_scores[row] == scores[voters].max()


def test_box_voting_hand_values() -> None:
    kept = np.array([[0, 0, 10, 10]], np.float32)
    candidates = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    # IoU([0,0,10,10], [2,0,12,10]) = 80/120 >= 0.5: weights 0.9 and 0.3
    voted, voted_scores = box_voting(kept, [0], candidates, scores, [0, 0, 0], 0.5)
    np.testing.assert_allclose(voted, [[0.5, 0.0, 10.5, 10.0]], rtol=1e-6)
    np.testing.assert_allclose(voted_scores, [0.9])


def test_box_voting_ignores_other_classes_and_takes_max_score() -> None:
    kept = np.array([[0, 0, 10, 10]], np.float32)
    candidates = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11]], np.float32)
    scores = np.array([0.5, 0.7, 0.9], np.float32)
    voted, voted_scores = box_voting(kept, [1], candidates, scores, [1, 1, 2])
    x1 = (0.5 * 0 + 0.7 * 1) / 1.2
    np.testing.assert_allclose(voted[0], [x1, 0, x1 + 10, 10], rtol=1e-6)
    assert voted_scores[0] == pytest.approx(0.7)  # class-2 box does not vote


def test_topk_candidates() -> None:
    scores = np.array([[0.1, 0.9], [0.5, 0.02], [0.7, 0.3]], np.float32)
    anchors, classes, values = topk_candidates(scores, k=3, score_threshold=0.05)
    np.testing.assert_array_equal(anchors, [0, 2, 1])
    np.testing.assert_array_equal(classes, [1, 0, 0])
    np.testing.assert_allclose(values, [0.9, 0.7, 0.5])
    anchors, _, values = topk_candidates(scores, k=0, score_threshold=0.05)
    assert len(values) == 5  # k=0: no limit, 0.02 dropped
    with pytest.raises(ValueError, match=r"scores must have shape \(A, K\)"):
        topk_candidates(scores.ravel(), k=3)


def test_box_voting_is_not_poisoned_by_a_non_finite_candidate() -> None:
    kept = np.array([[0, 0, 10, 10]], np.float32)
    candidates = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [np.nan] * 4,
                           [-np.inf, 0, -np.inf, 5], [0, 0, np.inf, np.inf]], np.float32)
    scores = np.array([0.9, 0.3, 0.99, 0.99, 0.99], np.float32)
    with np.errstate(invalid="ignore"):
        voted, voted_scores = box_voting(kept, [0], candidates, scores, [0] * 5, 0.5)
    np.testing.assert_allclose(voted, [[0.5, 0.0, 10.5, 10.0]], rtol=1e-6)  # as without them
    np.testing.assert_allclose(voted_scores, [0.9])



def test_soft_nms_refuses_a_nan_stop_or_a_non_finite_threshold() -> None:
    classes = np.array([0, 0, 1, 1])
    for call in (lambda **kw: soft_nms(BOXES, SCORES, **kw),
                 lambda **kw: batched_soft_nms(BOXES, SCORES, classes, **kw)):
        with pytest.raises(ValueError, match="stop_at"):
            call(stop_at=float("nan"))
        for threshold in (float("nan"), -np.inf):
            with pytest.raises(ValueError, match="score_threshold must be finite"):
                call(score_threshold=threshold)


def test_a_non_finite_candidate_never_votes_even_at_threshold_zero() -> None:
    kept = np.array([[10, 10, 20, 20]], np.float32)
    candidates = np.array([[10, 10, 20, 20], [30, 30, np.inf, 40]], np.float32)
    with np.errstate(invalid="ignore"):
        voted, _ = box_voting(kept, [0], candidates, np.array([0.9, 0.5], np.float32),
                              [0, 0], iou_threshold=0.0)
    np.testing.assert_array_equal(voted, kept)  # only the box itself votes
