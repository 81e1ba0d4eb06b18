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
