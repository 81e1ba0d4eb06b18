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
"""

from __future__ import annotations

import torch
from torch import Tensor


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
    n, q, g, t, o = table.shape
    p = points_xy.shape[1]
    # Points far outside read 0 either way; clamping first keeps floor() and the int cast
    # finite for any input (an exp() of a large box delta can reach inf).
    x = points_xy[..., 0].clamp(-2.0, width + 1.0)
    y = points_xy[..., 1].clamp(-2.0, height + 1.0)
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x - x0
    fy = y - y0
    # Corners on a new last axis, (N, P, G, T, 4): top-left, top-right, bottom-left, bottom-right.
    corner_x = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    corner_y = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    weight_x = torch.stack([1 - fx, fx, 1 - fx, fx], dim=-1)
    weight_y = torch.stack([1 - fy, 1 - fy, fy, fy], dim=-1)
    inside = (corner_x >= 0) & (corner_x <= width - 1) & (corner_y >= 0) & (corner_y <= height - 1)
    weights = weight_x * weight_y * inside.to(table.dtype)
    if tap_weights is not None:
        weights = weights * tap_weights.unsqueeze(-1)
    # Row of table.reshape(N*Q*G*T, O) for (n, q, g, t): ((n*Q + q)*G + g)*T + t.
    source = (corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)).long()
    batch_rows = torch.arange(n, device=table.device).reshape(n, 1, 1, 1, 1) * (q * g * t)
    group_tap_rows = torch.arange(g * t, device=table.device).reshape(1, 1, g, t, 1)
    rows = batch_rows + source * (g * t) + group_tap_rows
    samples = table.reshape(n * q * g * t, o)[rows.reshape(n, p, g, t * 4)]  # (N, P, G, 4T, O)
    return torch.matmul(weights.reshape(n, p, g, 1, t * 4), samples).reshape(n, p, g, o)
