"""``benchmarks.common.tap_sum_kernel``: hand-computed samples, and the rewrite's Gather form."""

import numpy as np
import pytest
import torch

from benchmarks.common.tap_sum_kernel import tap_sum
from quantize.rewrites.sampling import bilinear_tap_sum


def test_samples_of_a_two_by_two_map_by_hand() -> None:
    table = np.array([1, 2, 3, 4], np.float32).reshape(4, 1, 1, 1)  # rows y*2 + x
    points = np.array([
        [0.5, 0.5],   # the centre: the mean of the four
        [1.0, 1.0],   # a cell centre: that cell
        [0.25, 0.0],  # on the top row: 0.75 * 1 + 0.25 * 2
        [-0.5, 0.0],  # half a cell outside: half the corner (zero padding)
        [-1.0, 0.0],  # a whole cell outside: nothing
        [2.0, 1.0],   # a whole cell past the right edge: nothing
        [-1e9, 1e9],  # far outside (clamped first): nothing
    ], np.float32).reshape(1, 1, -1, 2)
    out = tap_sum(table, points, 2, 2)[:, 0, 0]
    np.testing.assert_allclose(out, [2.5, 4.0, 1.25, 0.5, 0.0, 0.0, 0.0], rtol=0, atol=1e-7)


def test_the_taps_are_summed_and_match_the_rewrites_gather_form() -> None:
    rng = np.random.default_rng(0)
    height, width, groups, taps, outputs = 5, 7, 3, 9, 6
    table = rng.standard_normal((height * width, groups, taps, outputs)).astype(np.float32)
    points = rng.uniform(-3, 9, (groups, taps, height * width, 2)).astype(np.float32)
    got = tap_sum(table, points, height, width)  # (P, G, O)
    expected = bilinear_tap_sum(
        torch.from_numpy(table).double()[None], torch.from_numpy(points).double()
        .permute(2, 0, 1, 3)[None], height, width)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        tap_sum(np.zeros((6, 1, 1, 2), np.float32), np.zeros((1, 1, 3, 2), np.float32), 2, 2)
    with pytest.raises(ValueError, match="takes a"):
        tap_sum(np.zeros((4, 1, 2), np.float32), np.zeros((1, 1, 3, 2), np.float32), 2, 2)
