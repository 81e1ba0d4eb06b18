"""The reduction sizes behind the long-int8-reduction rule (no runtime needed)."""

from __future__ import annotations

import numpy as np

from edgedet.backends.xnnpack_int8 import INT8_REDUCTION_LIMIT, is_long, reduction_size


def test_a_reduction_size_is_unknown_where_a_dim_or_the_axes_are():
    assert reduction_size([1, 16, 6, 1706], np.array([2, 3])) == 10236
    assert reduction_size([-1, 16, 6, 1706], np.array([-2, -1])) == 10236  # batch: not reduced
    assert reduction_size([1, 16, -1, 1706], np.array([2, 3])) is None
    assert reduction_size(None, np.array([2])) is None
    assert reduction_size([1, 4], None) is None
    assert reduction_size([1, 4], np.array([5])) is None
    assert reduction_size([1, 16, 6, 1706], np.array([3, -1])) == 1706  # an axis counts once
    assert reduction_size([1, 16, 6, 1706], np.array(2)) == 6
    assert reduction_size([1, 16, 6, 1706], (1, 2)) == 96


def test_long_means_past_the_limit_or_unknown():
    # 8 192 x 128 = 2^20: the longest int8 sum that cannot pass the magnitude XNNPACK mishandled.
    assert INT8_REDUCTION_LIMIT * 128 == 2 ** 20
    assert not is_long(INT8_REDUCTION_LIMIT)
    assert is_long(INT8_REDUCTION_LIMIT + 1)
    assert not is_long(1706)
    assert is_long(None)
