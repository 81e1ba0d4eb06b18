"""The P&A attend stage's tap sum as a compiled kernel outside the runtime: a measurement.

The runtimes read the bilinear samples with ops made for other jobs: ONNX Runtime's
``GridSample`` walks its sampling plan once per channel in scalar code (4.3 ms for the paper
level's 3.5 M samples on the AMX CPU), OpenVINO's ``Gather`` of table rows runs a reference
kernel and writes every corner row out before a batch of one-row products sums them
(``docs/performance_amx.md``). This kernel does the same sum straight from a channels-last
table: for each position and anchor, each tap's four corner rows are read and added in place,
the inner loop over the contiguous outputs, positions split over the threads.
``benchmarks/pa_attend_conv.py`` times it behind a
runtime that computes the projection and the sampling points (the variant "project in the
runtime, tap sum in a compiled kernel"), to measure what a split of the attend stage between
runtime and SDK would cost; nothing in the SDK runs it.

Same function as ``quantize.rewrites.sampling.bilinear_tap_sum`` (zero padding: a corner
outside the map reads 0; points clamped to one cell beyond the map first), summed in another
order: equal to float32 rounding.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from edgedet.kernels._common import compiled


@compiled(parallel=True)
def _tap_sum(table, points, height, width, bounds, out):  # type: ignore[no-untyped-def]
    # bounds: (-2, W + 1, H + 1, 1) in the table's dtype, so that no operation below widens
    # float32 to float64 (numba types a Python int or float constant as 64-bit).
    groups, taps, positions = points.shape[0], points.shape[1], points.shape[2]
    outputs = table.shape[3]
    low, x_high, y_high, one = bounds[0], bounds[1], bounds[2], bounds[3]
    for p in prange(positions):
        for g in range(groups):
            acc = out[p, g]
            acc[:] = 0
            for t in range(taps):
                x, y = points[g, t, p, 0], points[g, t, p, 1]
                if x != x or y != y:  # NaN: reads nothing (the rewrite's Gather would fail)
                    continue
                x = min(max(x, low), x_high)
                y = min(max(y, low), y_high)
                x0, y0 = np.floor(x), np.floor(y)
                fx, fy = x - x0, y - y0
                ix, iy = int(x0), int(y0)
                for dy in range(2):
                    cy = iy + dy
                    if cy < 0 or cy >= height:
                        continue
                    wy = fy if dy == 1 else one - fy
                    for dx in range(2):
                        cx = ix + dx
                        if cx < 0 or cx >= width:
                            continue
                        weight = wy * (fx if dx == 1 else one - fx)
                        row = table[cy * width + cx, g, t]
                        for o in range(outputs):
                            acc[o] += weight * row[o]


def tap_sum(table: np.ndarray, points_xy: np.ndarray, height: int, width: int,
            threads: int | None = None) -> np.ndarray:
    """Sum over taps of bilinear samples, each tap read from its own map.

    Args:
        table: ``(H*W, G, T, O)``, channels-last: for source position ``q = y*W + x``, group
            ``g`` (an anchor) and tap ``t`` the ``O`` values of that tap's projected map.
        points_xy: ``(G, T, P, 2)`` sampling points ``(x, y)`` in map coordinates (the
            planar layout of ``quantize.rewrites.pa_head.planar_sampling_points``).
        height, width: the map's ``H`` and ``W``.
        threads: how many threads the kernel runs on (default: numba's, every CPU it sees);
            a benchmark gives the runtimes' count, so that no variant gets more cores.

    Returns:
        ``(P, G, O)`` in ``table``'s dtype.
    """
    if table.ndim != 4 or points_xy.ndim != 4 or points_xy.shape[3] != 2:
        raise ValueError(f"tap_sum takes a (H*W, G, T, O) table and (G, T, P, 2) points, got "
                         f"{table.shape} and {points_xy.shape}")
    if table.shape[0] != height * width or table.shape[1:3] != points_xy.shape[:2]:
        raise ValueError(f"table {table.shape} does not match points {points_xy.shape} on a "
                         f"{height}x{width} map")
    table = np.ascontiguousarray(table)
    points_xy = np.ascontiguousarray(points_xy, dtype=table.dtype)
    out = np.empty((points_xy.shape[2], table.shape[1], table.shape[3]), table.dtype)
    bounds = np.array([-2, width + 1, height + 1, 1], table.dtype)
    if threads is not None:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    _tap_sum(table, points_xy, height, width, bounds, out)
    return out
