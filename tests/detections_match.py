"""Compare two runtimes' detections of one frame without depending on the order of ties.

Detections come sorted by score. Two runtimes whose scores differ by a rounding error can
order two boxes of (nearly) equal score either way, so a row-by-row comparison fails on a
swap that changes no detection (CI saw rows 88 and 89 of 376 trade places between ONNX
Runtime and PyTorch). Each expected detection is paired with an unused detection of the same
class whose score and box agree within the tolerances.
"""

from __future__ import annotations

import numpy as np

from edgedet.detections import Detections


def assert_same_detections(got: Detections, want: Detections, *, score_atol: float,
                           box_atol: float) -> None:
    """Fail unless ``got`` and ``want`` hold the same detections, in any order of near-ties.

    Pairing is greedy in ``want``'s order, each row taking the closest free candidate (by
    box); within tolerances this small the candidates of one row are the tied rows only.
    """
    assert len(got) == len(want), f"{len(got)} detections, expected {len(want)}"
    used = np.zeros(len(got), dtype=bool)
    for i in range(len(want)):
        box_error = np.abs(got.xyxy - want.xyxy[i]).max(axis=1)
        fits = (~used & (got.class_ids == want.class_ids[i])
                & (np.abs(got.scores - want.scores[i]) <= score_atol) & (box_error <= box_atol))
        if not fits.any():
            nearest = int(np.argmin(np.where(used, np.inf, box_error)))
            raise AssertionError(
                f"expected detection {i} (class {int(want.class_ids[i])}, score "
                f"{float(want.scores[i]):.5f}, box {want.xyxy[i].tolist()}) has no match; "
                f"nearest free one: class {int(got.class_ids[nearest])}, score "
                f"{float(got.scores[nearest]):.5f}, box {got.xyxy[nearest].tolist()}")
        used[int(np.argmin(np.where(fits, box_error, np.inf)))] = True
