import math

import numpy as np
import pytest

from edgedet.box_coding import BBOX_XFORM_CLIP, cxcywh_to_xyxy, decode, encode, xyxy_to_cxcywh


def test_hand_values() -> None:
    prior = np.array([[50, 50, 20, 40]], np.float32)
    box = np.array([[45, 40, 65, 80]], np.float32)  # centre (55, 60), size 20x40
    np.testing.assert_allclose(encode(box, prior), [[0.25, 0.25, 0, 0]], atol=1e-7)
    np.testing.assert_allclose(encode(box, prior, (10, 10, 5, 5)), [[2.5, 2.5, 0, 0]],
                               atol=1e-6)
    np.testing.assert_allclose(decode([[0, 0, math.log(2), 0]], prior),
                               [[30, 30, 70, 70]], rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip(weights: tuple[float, float, float, float]) -> None:
    rng = np.random.default_rng(0)
    priors = np.concatenate([rng.uniform(0, 300, (50, 2)), rng.uniform(8, 200, (50, 2))], 1)
    boxes = cxcywh_to_xyxy(np.concatenate([rng.uniform(0, 300, (50, 2)),
                                           rng.uniform(4, 300, (50, 2))], 1))
    np.testing.assert_allclose(decode(encode(boxes, priors, weights), priors, weights), boxes,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(priors)), priors, rtol=1e-6)


def test_decode_clamps_huge_sizes() -> None:
    out = decode([[0, 0, 100, 100]], [[0, 0, 1, 1]])
    assert np.all(np.isfinite(out))
    assert out[0, 2] == pytest.approx(math.exp(BBOX_XFORM_CLIP) / 2, rel=1e-5)


def _decode_per_coordinate(deltas: np.ndarray, priors: np.ndarray,
                           weights: tuple[float, float, float, float]) -> np.ndarray:
    """The textbook form, one coordinate at a time, in float32."""
    d, p = deltas.astype(np.float32), priors.astype(np.float32)
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    clip = np.float32(BBOX_XFORM_CLIP)
    cx = d[:, 0] / wx * p[:, 2] + p[:, 0]
    cy = d[:, 1] / wy * p[:, 3] + p[:, 1]
    w = np.exp(np.minimum(d[:, 2] / ww, clip)) * p[:, 2]
    h = np.exp(np.minimum(d[:, 3] / wh, clip)) * p[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0),
                                     (0.1, 0.2, 3.0, 7.0)])
def test_decode_gives_the_per_coordinate_bits(weights: tuple[float, float, float, float]
                                              ) -> None:
    # decode works on (x, y) and (w, h) column pairs; per element it must be the same float32
    # operations in the same order, so that the SDK's boxes do not move by a bit.
    rng = np.random.default_rng(3)
    deltas = (rng.standard_normal((500, 4)) * rng.choice([0.1, 1.0, 10.0, 100.0], (500, 1))
              ).astype(np.float32)
    deltas[:3] = [[np.inf, -np.inf, 50.0, np.nan], [0, 0, 1e4, -1e4], [1e-30, -1e-30, 0, 0]]
    priors = np.abs(rng.standard_normal((500, 4)) * 100).astype(np.float32)
    got = decode(deltas, priors, weights)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _decode_per_coordinate(deltas, priors, weights))
    boxes = got[3:]
    x1, y1, x2, y2 = boxes.T
    np.testing.assert_array_equal(
        xyxy_to_cxcywh(boxes), np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1))
