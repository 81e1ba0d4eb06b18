"""Bilinear sampling of per-tap maps by Gather: the core of the P&A and deformable-conv rewrites.

Both layers compute, for every output cell and kernel tap ``t``, a bilinear sample of the input
at a point that moves with the cell, then contract the samples with the conv weights. Bilinear
sampling is linear in the input, so the contraction can come first: a 1x1 projection of the
input to ``taps x outputs`` channels (one matrix product, the same FLOPs as the plain conv) gives
each tap its own narrow map, and each output only needs 4 reads per tap from that map. The
projected maps are kept channels-last, so one read is a contiguous row of ``outputs`` values,
fetched by a single ONNX ``Gather`` with corner indices and weights computed in the graph.

Boundary rule (deformable conv / ``grid_sample(padding_mode="zeros", align_corners=False)``):
each of the 4 corners that lies outside the map reads 0, so a point at ``x <= -1`` or ``x >= W``
reads exactly 0.

Two ways to read the samples, the same function (``SAMPLERS``); targets pick the faster one
for their runtime (``quantize.targets``):

``gather``       ``bilinear_tap_sum``: corner indices and weights computed in the graph, one
                 ``Gather`` of 4 rows per tap, a small MatMul per output position. Every
                 runtime and converter takes it (TFLite, TensorRT).
``grid_sample``  ``grid_sample_tap_sum``: one ONNX ``GridSample`` (opset 16) per level over
                 the projected maps laid out channels-first, then a sum over taps: no 4x
                 gathered intermediate and no per-position MatMul. Measured faster in ONNX
                 Runtime; in OpenVINO the two forms are within noise
                 (``benchmarks/pa_attend_conv.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLERS = ("gather", "grid_sample")
# Rows computed in float32 below this many (a float32 step there is 1/16: a few reassociated
# operations stay well within rounding distance of the whole number; 2**24 would be exact).
_FLOAT_ROWS_LIMIT = 2**20


def check_sampler(sampler: str) -> str:
    """``sampler`` if it is one of ``SAMPLERS``; ValueError naming them otherwise."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    return sampler


def bilinear_tap_sum(
    table: Tensor,
    points_xy: Tensor,
    height: int,
    width: int,
    tap_weights: Tensor | None = None,
) -> Tensor:
    """Sum over taps of bilinear samples, each tap read from its own map.

    Args:
        table: ``(N, H*W, G, T, O)``: for source position ``q = y*W + x``, group ``g`` (an
            anchor of P&A, an offset group of a deformable conv) and tap ``t`` the ``O``
            values of that tap's projected map.
        points_xy: ``(N, P, G, T, 2)`` sampling points ``(x, y)`` in source-map coordinates
            (the centre of cell ``(y, x)`` is at ``(x, y)``), one per output position ``p``.
        height, width: ``H`` and ``W`` of the source map.
        tap_weights: optional ``(N, P, G, T)`` multipliers of each tap's sample (the
            modulation mask of a modulated deformable conv).

    Returns:
        ``(N, P, G, O)``: ``sum_t bilinear(table[n, :, g, t, :], points_xy[n, p, g, t])``.
    """
    return bilinear_tap_sum_xy(table, points_xy[..., 0], points_xy[..., 1], height, width,
                               tap_weights)


def bilinear_tap_sum_xy(
    table: Tensor,
    x: Tensor,
    y: Tensor,
    height: int,
    width: int,
    tap_weights: Tensor | None = None,
    groups_in_one_product: bool = False,
    rows_in_float: bool = False,
) -> Tensor:
    """``bilinear_tap_sum`` with the points' ``x`` and ``y`` as two ``(N, P, G, T)`` tensors.

    A graph that computes them apart (``quantize.rewrites.pa_head.xy_sampling_points``) then
    splits no interleaved pairs: OpenVINO runs that split as a reference kernel.

    ``groups_in_one_product``: the ``G`` tap sums of a position as one matrix product, the
    bilinear weights laid out block-diagonally (``(G, G*4T) x (G*4T, O)``, G times the
    multiply-adds, most of them by zero) instead of ``G`` one-row products. The same
    function; faster where the runtime reads and sums the samples in INT8 on matrix units
    (``quantize.targets``' ``int8_reads_in_one_product``), slower in float.

    ``rows_in_float``: the row indices computed in float32, rounded and cast once (below
    ``_FLOAT_ROWS_LIMIT`` rows), instead of integer arithmetic after the cast of the source
    cell. For a runtime that computes the coordinates in float32 (OpenVINO with f32 or
    precise-marked coordinates); not where the float ops may run in FP16 (TensorRT), whose
    steps are 32 apart at 43 200, PASSD's rows at 320 pixels.
    """
    n, q, g, t, o = table.shape
    p = x.shape[1]
    # Points far outside read 0 either way; clamping first keeps floor() and the int cast
    # finite for any input (an exp() of a large box delta can reach inf).
    x = x.clamp(-2.0, width + 1.0)
    y = y.clamp(-2.0, height + 1.0)
    # Each axis's two corners on a new axis before the taps, (N, P, G, 2, T), as broadcast
    # adds of constant steps rather than stacks (a stack exports as Concat, which OpenVINO
    # runs in a slow reference kernel). The bilinear weight of a corner at distance d <= 1
    # along an axis is 1 - d, and 0 where the corner lies outside the map.
    #
    # Why this layout (the paper-width PASSD's OpenVINO INT8 IR): OpenVINO's fused float
    # subgraphs vectorise along the last axis. With the four corners last, the math of P3's
    # 172 800 corner values ran as one subgraph over rows of 4 (0.42 ms, 0.50 with the
    # rows); per axis, before the taps, and joined only once on the four corners, the same
    # math takes 0.3 ms. The weights and rows are the same to the bit: each corner's weight
    # is still the one product of its x and y weights (a factor 0 or 1 is exact), each row
    # the same whole number (the parts are whole numbers below 2**24, exact in float32).
    # The tap sum adds the same products corner by corner instead of tap by tap: in float a
    # rounding apart (INT8 sums are exact: the OpenVINO INT8 IR's outputs did not change).
    step = x.new_tensor([[0.0], [1.0]])
    x, y = x.unsqueeze(-2), y.unsqueeze(-2)
    corner_x = torch.floor(x) + step
    corner_y = torch.floor(y) + step
    weight_x = (1 - (x - corner_x).abs()) * ((corner_x >= 0) & (corner_x <= width - 1)).to(
        table.dtype)
    weight_y = (1 - (y - corner_y).abs()) * ((corner_y >= 0) & (corner_y <= height - 1)).to(
        table.dtype)
    # Row of table.reshape(N*Q*G*T, O) for (n, q, g, t): ((n*Q + q)*G + g)*T + t, with
    # q = y*W + x: a part of each axis, added on the four corners (top-left, top-right,
    # bottom-left, bottom-right), laid out (N, P, G, 4, T).
    in_float = rows_in_float and n * q * g * t <= _FLOAT_ROWS_LIMIT and (
        table.dtype == x.dtype == torch.float32)
    cell_x = corner_x.clamp(0, width - 1)
    cell_y = corner_y.clamp(0, height - 1)
    if not in_float:
        cell_x, cell_y = cell_x.long(), cell_y.long()
    index_dtype = cell_x.dtype
    batch_rows = torch.arange(n, dtype=index_dtype, device=table.device).reshape(
        n, 1, 1, 1, 1) * (q * g * t)
    group_tap_rows = torch.arange(g * t, dtype=index_dtype,
                                  device=table.device).reshape(1, 1, g, 1, t)
    rows_x = cell_x * (g * t) + group_tap_rows + batch_rows
    rows = (cell_y.unsqueeze(-2) * (width * g * t) + rows_x.unsqueeze(-3)).flatten(-3, -2)
    if in_float:
        # The row arithmetic in float32 joins the element-wise float math before it, and
        # the indices are cast once (in OpenVINO one fused float subgraph instead of integer
        # multiplies and adds of their own; with the x / y planes, paper-width PASSD INT8 3-4%
        # faster). Rounded before the cast: a runtime may reassociate the arithmetic
        # (OpenVINO's INT8 pipeline computed (source + tap / (G*T)) * (G*T), a hair below
        # the whole number, and the cast truncated it to the row before).
        rows = torch.round(rows).long()
    weights = (weight_y.unsqueeze(-2) * weight_x.unsqueeze(-3)).flatten(-3, -2)  # (N,P,G,4,T)
    if tap_weights is not None:
        weights = weights * tap_weights.unsqueeze(-2)
    if groups_in_one_product:
        # (A constant from a list: torch.eye exports as an EyeLike op. Folding it into the y
        # weights, one product on seven axes, ran as a plain Multiply node in OpenVINO,
        # 4x slower than the two.)
        block = table.new_tensor([[float(i == j) for j in range(g)] for i in range(g)])
        weights = weights.reshape(n, p, 1, g, 4 * t) * block.reshape(1, 1, g, g, 1)
        samples = table.reshape(n * q * g * t, o)[rows.reshape(n, p, g * 4 * t)]  # (N, P, 4GT, O)
        return torch.matmul(weights.reshape(n, p, g, g * 4 * t), samples)  # (N, P, G, O)
    samples = table.reshape(n * q * g * t, o)[rows.reshape(n, p, g, 4 * t)]  # (N, P, G, 4T, O)
    return torch.matmul(weights.reshape(n, p, g, 1, 4 * t), samples).reshape(n, p, g, o)


def grid_sample_tap_sum(
    maps: Tensor,
    points_xy: Tensor,
    tap_weights: Tensor | None = None,
) -> Tensor:
    """``bilinear_tap_sum`` with the samples read by ``grid_sample`` (channels-first maps).

    Args:
        maps: ``(N, G, T, O, H, W)``: for group ``g`` and tap ``t`` the ``O``-channel
            projected map that tap reads.
        points_xy: ``(N, G, T, P, 2)`` sampling points ``(x, y)`` in source-map coordinates,
            one per output position ``p``.
        tap_weights: optional ``(N, G, T, P)`` multipliers of each tap's sample.

    Returns:
        ``(N, G, O, P)``: ``sum_t bilinear(maps[n, g, t], points_xy[n, g, t, p])``.
    """
    n, g, t, o, h, w = maps.shape
    p = points_xy.shape[3]
    # Clamped as in bilinear_tap_sum: beyond one cell outside, every corner reads 0 anyway,
    # and grid_sample is then never handed an inf (exp() of a large box delta).
    x = points_xy[..., 0].clamp(-2.0, w + 1.0)
    y = points_xy[..., 1].clamp(-2.0, h + 1.0)
    # align_corners=False: pixel centre i sits at (2i + 1) / size - 1 in [-1, 1].
    grid = torch.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)
    samples = F.grid_sample(maps.reshape(n * g * t, o, h, w), grid.reshape(n * g * t, p, 1, 2),
                            mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.reshape(n, g, t, o, p)
    if tap_weights is not None:
        samples = samples * tap_weights.unsqueeze(3)
    return samples.sum(dim=2)
