"""``edgedet.kernels.tap_sum``: hand-computed samples, the rewrite's Gather form, uint8 tables."""

import numpy as np
import pytest
import torch

from edgedet.kernels.tap_sum import tap_sum, tap_sum_rows
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
        [np.nan, 0],  # NaN: nothing
    ], np.float32).reshape(1, 1, -1, 2)
    out = tap_sum(table, points, 2, 2)[:, 0, 0]
    np.testing.assert_allclose(out, [2.5, 4.0, 1.25, 0.5, 0.0, 0.0, 0.0, 0.0], rtol=0, atol=1e-7)


def test_a_uint8_table_is_read_with_its_scale_and_zero_point_by_hand() -> None:
    # value = 0.5 * (q - 10): q = 12, 14, 16, 18 are 1, 2, 3, 4 as above. Half a cell outside
    # the zero point must not count for the missing corners (zero padding is value 0, not q 0).
    table = np.array([12, 14, 16, 18], np.uint8).reshape(4, 1, 1, 1)
    points = np.array([[0.5, 0.5], [0.25, 0.0], [-0.5, 0.0]], np.float32).reshape(1, 1, -1, 2)
    out = tap_sum(table, points, 2, 2, scale=0.5, zero_point=10)[:, 0, 0]
    np.testing.assert_allclose(out, [2.5, 1.25, 0.5], rtol=0, atol=1e-6)


def test_the_taps_are_summed_and_match_the_rewrites_gather_form() -> None:
    rng = np.random.default_rng(0)
    height, width, groups, taps, outputs = 5, 7, 3, 9, 6
    table = rng.standard_normal((height * width, groups, taps, outputs)).astype(np.float32)
    points = rng.uniform(-3, 9, (groups, taps, height * width, 2)).astype(np.float32)
    bias = rng.standard_normal((groups, outputs)).astype(np.float32)
    got = tap_sum(table, points, height, width, bias=bias)  # (P, G, O)
    expected = bilinear_tap_sum(
        torch.from_numpy(table).double()[None], torch.from_numpy(points).double()
        .permute(2, 0, 1, 3)[None], height, width)[0].numpy() + bias
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    # uint8: the same as the float table its values stand for
    quantized = rng.integers(0, 256, table.shape).astype(np.uint8)
    as_float = (0.03 * (quantized.astype(np.float32) - 120)).astype(np.float32)
    np.testing.assert_allclose(tap_sum(quantized, points, height, width, 0.03, 120),
                               tap_sum(as_float, points, height, width), rtol=0, atol=3e-5)


def test_rows_land_after_first_row_split_between_the_two_outputs() -> None:
    rng = np.random.default_rng(1)
    table = rng.standard_normal((4 * 3, 2, 9, 5)).astype(np.float32)
    points = rng.uniform(-1, 4, (2, 9, 12, 2)).astype(np.float32)
    bias = np.zeros((2, 5), np.float32)
    whole = tap_sum(table, points, 4, 3).reshape(24, 5)
    out_a = np.full((30, 3), -7, np.float32)
    out_b = np.full((30, 2), -7, np.float32)
    # two slices of the positions, as AttendTail's threads run them
    for start, stop in ((0, 5), (5, 12)):
        tap_sum_rows(table, points, 4, 3, np.float32(1), np.float32(0), bias, 3, 6, start,
                     stop, out_a, out_b)
    np.testing.assert_array_equal(out_a[6:], whole[:, :3])
    np.testing.assert_array_equal(out_b[6:], whole[:, 3:])
    assert (out_a[:6] == -7).all() and (out_b[:6] == -7).all()  # rows before: untouched


def test_mismatched_shapes_and_dtypes_are_refused() -> None:
    with pytest.raises(ValueError, match="does not match"):
        tap_sum(np.zeros((6, 1, 1, 2), np.float32), np.zeros((1, 1, 3, 2), np.float32), 2, 2)
    with pytest.raises(ValueError, match="takes a"):
        tap_sum(np.zeros((4, 1, 2), np.float32), np.zeros((1, 1, 3, 2), np.float32), 2, 2)
    with pytest.raises(ValueError, match="float32 or uint8"):
        tap_sum(np.zeros((4, 1, 1, 2), np.int8), np.zeros((1, 1, 3, 2), np.float32), 2, 2)
