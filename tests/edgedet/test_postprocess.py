import numpy as np
import pytest

import edgedet.boxes as boxes_module
from edgedet.postprocess import select_detections

BOXES = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [5, 0, 15, 10]], np.float32)


def _scores() -> np.ndarray:
    scores = np.zeros((4, 3), np.float32)
    scores[:, 1] = [0.9, 0.8, 0.01, 0.6]
    scores[2, 2] = 0.7
    return scores


def test_hard_mode_thresholds_suppresses_and_sorts() -> None:
    xyxy, scores, classes = select_detections(BOXES, _scores(), score_threshold=0.05,
                                              iou_threshold=0.5)
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.6])
    np.testing.assert_array_equal(classes, [1, 2, 1])
    np.testing.assert_array_equal(xyxy, BOXES[[0, 2, 3]])


def test_max_detections_and_top_k() -> None:
    _, scores, _ = select_detections(BOXES, _scores(), max_detections=2)
    assert len(scores) == 2
    _, scores, _ = select_detections(BOXES, _scores(), pre_nms_top_k=1)
    np.testing.assert_allclose(scores, [0.9])


def test_soft_mode_keeps_decayed_duplicates() -> None:
    _, scores, _classes = select_detections(BOXES, _scores(), nms_mode="soft")
    assert len(scores) == 4 and np.all(np.diff(scores) <= 0)
    # box 1 decays twice: by box 0 (IoU 0.818) and by box 3 (IoU 0.4286), Gaussian sigma 0.5
    expected = 0.8 * np.exp(-((90 / 110) ** 2) / 0.5) * np.exp(-((60 / 140) ** 2) / 0.5)
    assert scores.min() == pytest.approx(expected, rel=1e-4)


def test_soft_voting_moves_the_top_box_towards_its_neighbours() -> None:
    xyxy, _, _ = select_detections(BOXES, _scores(), nms_mode="soft+voting")
    assert 0 < xyxy[0, 0] < 1  # x1 averaged between 0 and 1 (and 5 is below IoU 0.5)


@pytest.mark.parametrize("mode", ["soft", "soft+voting"])
def test_soft_modes_select_the_same_bits_on_either_side_of_the_joint_limit(
        mode: str, monkeypatch) -> None:
    # A frame's candidates: clusters of duplicates in 5 classes, tied scores.
    rng = np.random.default_rng(11)
    centres = rng.uniform(0, 250, (12, 2))
    xy = np.repeat(centres, 20, axis=0) + rng.normal(0, 4, (240, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 60, (240, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, (240, 5)).astype(np.float32) ** 4
    scores[7, 2] = scores[9, 2] = scores.max()
    results = [select_detections(boxes, scores, score_threshold=0.3, nms_mode=mode,
                                 max_detections=15)]
    monkeypatch.setattr(boxes_module, "JOINT_LIMIT", 0)
    results.append(select_detections(boxes, scores, score_threshold=0.3, nms_mode=mode,
                                     max_detections=15))
    assert len(results[0][0]) == 15
    for joint, per_class in zip(*results, strict=True):
        assert joint.dtype == per_class.dtype
        np.testing.assert_array_equal(joint, per_class)


def test_empty_and_bad_input() -> None:
    xyxy, scores, classes = select_detections(BOXES, np.zeros((4, 3), np.float32))
    assert xyxy.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
    with pytest.raises(ValueError, match="nms_mode"):
        select_detections(BOXES, _scores(), nms_mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scores"):
        select_detections(BOXES, np.zeros((3, 3)))
