"""The test helper that pairs detections across runtimes."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.detections import Detections
from tests.detections_match import assert_same_detections


def _dets(rows: list[tuple[float, int, list[float]]]) -> Detections:
    return Detections(np.array([r[2] for r in rows], dtype=np.float32),
                      np.array([r[0] for r in rows], dtype=np.float32),
                      np.array([r[1] for r in rows], dtype=np.int64))


WANT = _dets([(0.9, 0, [0, 0, 10, 10]), (0.5, 1, [5, 5, 20, 20]), (0.5, 1, [30, 30, 40, 40])])


def test_a_swap_of_tied_rows_matches() -> None:
    got = _dets([(0.9, 0, [0, 0, 10, 10.2]), (0.5001, 1, [30, 30, 40, 40]),
                 (0.4999, 1, [5, 5, 20, 20])])
    assert_same_detections(got, WANT, score_atol=1e-3, box_atol=0.5)


@pytest.mark.parametrize("got", [
    _dets([(0.9, 0, [0, 0, 10, 10]), (0.5, 1, [5, 5, 20, 20]), (0.5, 1, [30, 30, 40, 41])]),
    _dets([(0.9, 0, [0, 0, 10, 10]), (0.5, 2, [5, 5, 20, 20]), (0.5, 1, [30, 30, 40, 40])]),
    _dets([(0.9, 0, [0, 0, 10, 10]), (0.49, 1, [5, 5, 20, 20]), (0.5, 1, [30, 30, 40, 40])]),
    _dets([(0.9, 0, [0, 0, 10, 10]), (0.5, 1, [5, 5, 20, 20]), (0.5, 1, [5, 5, 20, 20])]),
    _dets([(0.9, 0, [0, 0, 10, 10]), (0.5, 1, [5, 5, 20, 20])]),
], ids=["box", "class", "score", "one-box-twice", "count"])
def test_a_detection_that_differs_fails(got: Detections) -> None:
    with pytest.raises(AssertionError):
        assert_same_detections(got, WANT, score_atol=1e-3, box_atol=0.5)


def test_a_detection_a_rounding_above_the_threshold_may_be_missing_on_either_side() -> None:
    at_threshold = _dets([(0.9, 0, [0, 0, 10, 10]), (0.0105, 1, [5, 5, 20, 20])])
    without = _dets([(0.9, 0, [0, 0, 10, 10])])
    for got, want in ((at_threshold, without), (without, at_threshold)):
        assert_same_detections(got, want, score_atol=1e-3, box_atol=0.5, score_threshold=0.01)
        with pytest.raises(AssertionError):  # counted, without the threshold
            assert_same_detections(got, want, score_atol=1e-3, box_atol=0.5)
    above = _dets([(0.9, 0, [0, 0, 10, 10]), (0.5, 1, [5, 5, 20, 20])])
    for got, want in ((above, without), (without, above)):
        with pytest.raises(AssertionError):  # well above it: a real difference
            assert_same_detections(got, want, score_atol=1e-3, box_atol=0.5,
                                   score_threshold=0.01)
