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
                           box_atol: float, score_threshold: float | None = None) -> None:
    """Fail unless ``got`` and ``want`` hold the same detections, in any order of near-ties.

    Pairing is greedy in ``want``'s order, each row taking the closest free candidate (by
    box); within tolerances this small the candidates of one row are the tied rows only.
    With ``score_threshold`` (the one both were selected with), a detection scoring less than
    ``score_atol`` above it may be missing from the other side: a rounding apart, it can fall
    on either side of the threshold.
    """
    near_threshold = -np.inf if score_threshold is None else score_threshold + score_atol
    if score_threshold is None:
        assert len(got) == len(want), f"{len(got)} detections, expected {len(want)}"
    used = np.zeros(len(got), dtype=bool)
    for i in range(len(want)):
        box_error = np.abs(got.xyxy - want.xyxy[i]).max(axis=1)
        fits = (~used & (got.class_ids == want.class_ids[i])
                & (np.abs(got.scores - want.scores[i]) <= score_atol) & (box_error <= box_atol))
        if fits.any():
            used[int(np.argmin(np.where(fits, box_error, np.inf)))] = True
            continue
        if want.scores[i] < near_threshold:
            continue
        nearest = int(np.argmin(np.where(used, np.inf, box_error))) if len(got) else None
        found = ("none left" if nearest is None or used[nearest] else
                 f"class {int(got.class_ids[nearest])}, score {float(got.scores[nearest]):.5f}, "
                 f"box {got.xyxy[nearest].tolist()}")
        raise AssertionError(
            f"expected detection {i} (class {int(want.class_ids[i])}, score "
            f"{float(want.scores[i]):.5f}, box {want.xyxy[i].tolist()}) has no match; "
            f"nearest free one: {found}")
    extra = ~used & (got.scores >= near_threshold)
    assert not extra.any(), (f"{int(extra.sum())} detections not expected, scores "
                             f"{got.scores[extra].tolist()[:5]}")
