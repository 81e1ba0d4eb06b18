"""The P&A attend stage's tap sum, compiled: what ``edgedet.attend_tail`` runs after the model.

For every position ``p`` and anchor ``g`` of one pyramid level, each of the ``T`` taps reads a
bilinear sample of its own projected map at its own point, and the samples are summed:
``out[p, g] = sum_t bilinear(table[:, g, t, :], points[g, t, p]) + bias[g]``. The table is
channels-last, ``(H*W, G, T, O)``, so a corner read is one contiguous row of ``O`` values,
added in place (the inner loop, which the compiler vectorises).

Same function as ``quantize.rewrites.sampling.bilinear_tap_sum`` (zero padding: a corner outside
the map reads 0; points clamped to one cell beyond the map first, so ``floor`` and the integer
conversion stay finite), summed in another order: equal to float32 rounding. A NaN point (a
NaN box delta) reads nothing here, so the output is the bias; the graph forms fail on it
(``Gather``) or return NaN (``GridSample``). Why the runtimes do not do this themselves:
``docs/architecture_export.md`` ("The attend tail").

A uint8 table (an INT8 model's projection output, ``value = scale * (q - zero_point)``) is read
as it is, a quarter of the float table's bytes: the kernel sums ``w * q`` and the weights
``w``, and applies ``scale * (sum_wq - zero_point * sum_w)`` once per output.

The kernel holds no lock on the interpreter (``nogil``): ``AttendTail`` runs slices of the
positions on several threads at once.
"""

from __future__ import annotations

import math

import numpy as np

from edgedet.kernels._common import CLIP32, ONE, ZERO, compiled


@compiled(nogil=True)
def tap_sum_rows(table, points, height, width, scale, zero_point, bias, split, first_row,
                 start, stop, out_a, out_b):  # type: ignore[no-untyped-def]
    """Positions ``start:stop`` of one level, written as rows of two outputs.

    Args:
        table: ``(H*W, G, T, O)`` float32 or uint8, C-contiguous.
        points: ``(G, T, P, 2)`` float32 sampling points ``(x, y)`` in map coordinates.
        height, width: the map's ``H`` and ``W`` (``P`` need not be ``H*W``).
        scale, zero_point: float32; ``1, 0`` for a float table.
        bias: ``(G, O)`` float32, added to each sum.
        split: the first ``split`` of the ``O`` values go to ``out_a``, the rest to ``out_b``.
        first_row: the row of ``out_a`` / ``out_b`` for ``(p=0, g=0)``; ``(p, g)`` goes to
            ``first_row + p*G + g`` (the head outputs' y -> x -> anchor order).
        out_a, out_b: ``(rows, split)`` and ``(rows, O - split)`` float32, written in place.
    """
    groups, taps = points.shape[0], points.shape[1]
    outputs = table.shape[3]
    count = stop - start
    low = np.float32(-2.0)
    x_high, y_high = np.float32(width + 1), np.float32(height + 1)
    # First every tap's four corner weights and rows, one (group, tap) at a time over the
    # positions, then the sums: the bilinear arithmetic apart from the reads. The zoo
    # PASSD's INT8 tables on one thread: 1.45 -> 1.23 ms; its model and tail on ONNX Runtime
    # 0.05-0.07 ms faster (four interleaved runs; the same sums, bit for bit). A corner
    # outside the map gets weight 0 and a clamped row.
    weights = np.zeros((count, groups, taps, 4), np.float32)
    rows = np.zeros((count, groups, taps, 4), np.int32)
    weight_sums = np.zeros((count, groups), np.float32)
    for g in range(groups):
        for t in range(taps):
            for i in range(count):
                x, y = points[g, t, start + i, 0], points[g, t, start + i, 1]
                if x != x or y != y:  # a NaN point reads nothing
                    continue
                x = min(max(x, low), x_high)
                y = min(max(y, low), y_high)
                x0, y0 = np.floor(x), np.floor(y)
                fx, fy = x - x0, y - y0
                ix, iy = int(x0), int(y0)
                inside_x0, inside_x1 = 0 <= ix < width, 0 <= ix + 1 < width
                inside_y0, inside_y1 = 0 <= iy < height, 0 <= iy + 1 < height
                w00 = (ONE - fy) * (ONE - fx) if inside_y0 and inside_x0 else ZERO
                w01 = (ONE - fy) * fx if inside_y0 and inside_x1 else ZERO
                w10 = fy * (ONE - fx) if inside_y1 and inside_x0 else ZERO
                w11 = fy * fx if inside_y1 and inside_x1 else ZERO
                weights[i, g, t, 0], weights[i, g, t, 1] = w00, w01
                weights[i, g, t, 2], weights[i, g, t, 3] = w10, w11
                weight_sums[i, g] += w00 + w01 + w10 + w11
                x_0, x_1 = min(max(ix, 0), width - 1), min(max(ix + 1, 0), width - 1)
                y_0, y_1 = min(max(iy, 0), height - 1), min(max(iy + 1, 0), height - 1)
                rows[i, g, t, 0], rows[i, g, t, 1] = y_0 * width + x_0, y_0 * width + x_1
                rows[i, g, t, 2], rows[i, g, t, 3] = y_1 * width + x_0, y_1 * width + x_1
    acc = np.empty(outputs, np.float32)
    for i in range(count):
        for g in range(groups):
            acc[:] = ZERO
            for t in range(taps):
                w00, w01 = weights[i, g, t, 0], weights[i, g, t, 1]
                w10, w11 = weights[i, g, t, 2], weights[i, g, t, 3]
                if w00 + w01 + w10 + w11 == ZERO:  # off the map (or a NaN point)
                    continue
                # The four corners in one pass over the outputs (a quarter of the passes of
                # one corner at a time: 3.89 -> 3.25 ms for a float32 paper-width P3 on one
                # thread).
                r00, r01 = table[rows[i, g, t, 0], g, t], table[rows[i, g, t, 1], g, t]
                r10, r11 = table[rows[i, g, t, 2], g, t], table[rows[i, g, t, 3], g, t]
                for o in range(outputs):
                    acc[o] += w00 * r00[o] + w01 * r01[o] + w10 * r10[o] + w11 * r11[o]
            offset = zero_point * weight_sums[i, g]
            r = first_row + (start + i) * groups + g
            for o in range(split):
                out_a[r, o] = scale * (acc[o] - offset) + bias[g, o]
            for o in range(split, outputs):
                out_b[r, o - split] = scale * (acc[o] - offset) + bias[g, o]


def tap_sum(table: np.ndarray, points_xy: np.ndarray, height: int, width: int,
            scale: float = 1.0, zero_point: float = 0.0,
            bias: np.ndarray | None = None) -> np.ndarray:
    """One level's tap sums, ``(P, G, O)`` float32 (a reference form of ``tap_sum_rows``).

    Args:
        table: ``(H*W, G, T, O)`` float32, or uint8 with ``scale`` and ``zero_point``.
        points_xy: ``(G, T, P, 2)`` sampling points ``(x, y)`` in map coordinates.
        height, width: the map's ``H`` and ``W``.
        bias: ``(G, O)`` added to each sum (default 0).

    Raises:
        ValueError: shapes or dtypes that do not fit together.
    """
    if table.ndim != 4 or points_xy.ndim != 4 or points_xy.shape[3] != 2:
        raise ValueError(f"tap_sum takes a (H*W, G, T, O) table and (G, T, P, 2) points, got "
                         f"{table.shape} and {points_xy.shape}")
    if table.shape[0] != height * width or table.shape[1:3] != points_xy.shape[:2]:
        raise ValueError(f"table {table.shape} does not match points {points_xy.shape} on a "
                         f"{height}x{width} map")
    if table.dtype not in (np.float32, np.uint8):
        raise ValueError(f"tap_sum reads float32 or uint8 tables, got {table.dtype}")
    groups, outputs = table.shape[1], table.shape[3]
    positions = points_xy.shape[2]
    bias = np.zeros((groups, outputs), np.float32) if bias is None else np.asarray(bias)
    if bias.shape != (groups, outputs):
        raise ValueError(f"bias {bias.shape} is not (G, O) = {(groups, outputs)}")
    out = np.empty((positions * groups, outputs), np.float32)
    tap_sum_rows(np.ascontiguousarray(table), np.ascontiguousarray(points_xy, np.float32),
                 height, width, np.float32(scale), np.float32(zero_point),
                 np.ascontiguousarray(bias, np.float32), outputs, 0, 0, positions, out,
                 np.empty((positions * groups, 0), np.float32))
    return out.reshape(positions, groups, outputs)


_HALF = np.float32(0.5)


@compiled(nogil=True)
def tail_points(deltas, priors, weights, stride, stride_times_kernel, offsets, first_row,
                start, stop, out):  # type: ignore[no-untyped-def]
    """One image's sampling points of one level, from the propose stage's deltas: the box
    decoding of ``models.box_coder.decode_cxcywh`` and the points of
    ``quantize.rewrites.pa_head.planar_sampling_points``, operation by operation in float32
    (``exp`` is numba's float32 one: within an ulp of a runtime's; where it is exact, at a
    delta of 0, the points equal PyTorch's to the bit, as the tests check).

    Args:
        deltas: ``(rows, 4)`` float32 clipped propose deltas of every level (y -> x -> anchor).
        priors: ``(rows, 4)`` float32 priors ``(cx, cy, w, h)``, the same order.
        weights: ``(4,)`` float32 box coder weights.
        stride, stride_times_kernel: float32, the level's stride and stride * kernel size.
        offsets: ``(2, T)`` float32, each tap's x and y offset in box sizes.
        first_row: the level's first row of ``deltas``; position ``p``, anchor ``g`` is row
            ``first_row + p*G + g``.
        start, stop: the positions to compute, ``start <= p < stop`` (a thread's share of
            the level's ``H*W``, as the tap sums that read them: ``tap_sum_rows``).
        out: ``(G, T, H*W, 2)`` float32; those positions written in place.
    """
    groups, taps = out.shape[0], out.shape[1]
    for p in range(start, stop):
        for g in range(groups):
            r = first_row + p * groups + g
            dw = deltas[r, 2] / weights[2]
            dh = deltas[r, 3] / weights[3]
            if dw > CLIP32:  # (torch.clamp(max=): a NaN stays NaN)
                dw = CLIP32
            if dh > CLIP32:
                dh = CLIP32
            cx = deltas[r, 0] / weights[0] * priors[r, 2] + priors[r, 0]
            cy = deltas[r, 1] / weights[1] * priors[r, 3] + priors[r, 1]
            # (numba's exp of a float32 is float32; the cast keeps the product float32 even
            # where a version would widen it)
            w = np.float32(math.exp(dw)) * priors[r, 2]
            h = np.float32(math.exp(dh)) * priors[r, 3]
            centre_x = cx / stride - _HALF
            centre_y = cy / stride - _HALF
            size_x = w / stride_times_kernel
            size_y = h / stride_times_kernel
            for t in range(taps):
                out[g, t, p, 0] = centre_x + offsets[0, t] * size_x
                out[g, t, p, 1] = centre_y + offsets[1, t] * size_y
