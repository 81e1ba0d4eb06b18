import numpy as np
import pytest

from edgedet.detections import Detections

NAMES = ("cat", "dog", "bird")


def _dets() -> Detections:
    return Detections(
        xyxy=[[0, 0, 10, 10], [5, 5, 20, 25], [1, 2, 3, 4]],
        scores=[0.9, 0.4, 0.7],
        class_ids=[0, 2, 1],
        class_names=NAMES,
    )


def test_construction_normalises_dtypes() -> None:
    d = _dets()
    assert d.xyxy.dtype == np.float32 and d.xyxy.shape == (3, 4)
    assert d.scores.dtype == np.float32 and d.class_ids.dtype == np.int64
    assert len(d) == 3
    assert d.labels == ["cat", "bird", "dog"]
    np.testing.assert_allclose(d.area, [100, 300, 4])


def test_boolean_and_index_selection() -> None:
    d = _dets()
    high = d[d.scores > 0.5]
    assert len(high) == 2 and high.class_names == NAMES
    np.testing.assert_array_equal(high.class_ids, [0, 1])
    one = d[1]
    assert one.xyxy.shape == (1, 4) and one.class_ids[0] == 2
    np.testing.assert_array_equal(d[[2, 0]].scores, np.float32([0.7, 0.9]))
    assert len(d[:0]) == 0
    assert len(d[[i for i in range(len(d)) if d.scores[i] > 2]]) == 0  # nothing matched: []
    assert len(d[()]) == 0
    with pytest.raises(IndexError, match="mask"):
        d[np.array([True, False])]


def test_sorted_and_iteration() -> None:
    d = _dets().sorted_by_score()
    np.testing.assert_allclose(d.scores, [0.9, 0.7, 0.4])
    rows = list(d)
    assert rows[0][1] == pytest.approx(0.9) and rows[0][2] == 0


def test_empty() -> None:
    e = Detections.empty(NAMES)
    assert len(e) == 0 and e.xyxy.shape == (0, 4) and e.class_names == NAMES
    assert len(e[e.scores > 0.5]) == 0
    assert Detections([], [], []).xyxy.shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"xyxy": [[0, 0, 1]], "scores": [1], "class_ids": [0]}, r"\(N, 4\)"),
        ({"xyxy": [[0, 0, 1, 1]], "scores": [1, 2], "class_ids": [0]}, "length"),
        ({"xyxy": [[0, 0, np.nan, 1]], "scores": [1], "class_ids": [0]}, "NaN"),
        ({"xyxy": [[0, 0, 1, 1], [5, 2, 4, 3]], "scores": [1, 1], "class_ids": [0, 0]},
         r"box 1 is \[5.0, 2.0, 4.0, 3.0\] \(1 inverted\)"),
        ({"xyxy": [[0, 3, 1, 2]], "scores": [1], "class_ids": [0]}, "y1 <= y2"),
        ({"xyxy": [[0, 0, 1, 1]], "scores": [1], "class_ids": [-1]}, ">= 0"),
        ({"xyxy": [[0, 0, 1, 1]], "scores": [1], "class_ids": [0.5]}, "whole"),
        ({"xyxy": [[0, 0, 1, 1]], "scores": [1], "class_ids": [3], "class_names": NAMES},
         "out of range"),
        ({"xyxy": [[0, 0, 1, 1]], "scores": [1], "class_ids": [1e30]}, "out of range: 1e"),
        ({"xyxy": [[0, 0, 1, 1]], "scores": [1], "class_ids": [0], "class_names": "abc"},
         "sequence of names"),
    ],
)
def test_validation_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Detections(**kwargs)
