import numpy as np
import pytest
import torch

from edgedet import box_coding
from edgedet.models import box_coder


def _random_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, 300, size=(n, 2))
    wh = rng.uniform(2, 150, size=(n, 2))
    boxes_xyxy = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    priors_cxcywh = np.concatenate(
        [rng.uniform(0, 300, size=(n, 2)), rng.uniform(4, 200, size=(n, 2))], axis=1
    ).astype(np.float32)
    return boxes_xyxy, priors_cxcywh


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_match_numpy(weights):
    rng = np.random.default_rng(0)
    boxes_xyxy, priors_cxcywh = _random_boxes(rng, 200)
    expected = box_coding.encode(boxes_xyxy, priors_cxcywh, weights)
    got = box_coder.encode(torch.from_numpy(boxes_xyxy).double(),
                           torch.from_numpy(priors_cxcywh).double(), weights)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)

    # Include deltas large enough to hit the exp clamp.
    deltas = rng.normal(0, 3, size=(200, 4)).astype(np.float32) * np.array(weights, np.float32)
    deltas[0, 2] = 100.0
    expected = box_coding.decode(deltas, priors_cxcywh, weights)
    got = box_coder.decode(torch.from_numpy(deltas), torch.from_numpy(priors_cxcywh), weights)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-3)


def test_round_trip_and_hand_value():
    prior = torch.tensor([[50.0, 40.0, 20.0, 10.0]])
    box = torch.tensor([[45.0, 37.0, 65.0, 53.0]])  # centre (55, 45), size 20 x 16
    deltas = box_coder.encode(box, prior, (10.0, 10.0, 5.0, 5.0))
    expected = torch.tensor([[10 * 5 / 20, 10 * 5 / 10, 0.0, 5 * np.log(1.6)]],
                            dtype=torch.float32)
    torch.testing.assert_close(deltas, expected)
    torch.testing.assert_close(box_coder.decode(deltas, prior, (10.0, 10.0, 5.0, 5.0)), box)
    torch.testing.assert_close(
        box_coder.decode_cxcywh(deltas, prior, (10.0, 10.0, 5.0, 5.0)),
        torch.tensor([[55.0, 45.0, 20.0, 16.0]]),
    )
