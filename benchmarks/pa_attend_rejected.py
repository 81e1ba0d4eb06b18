"""Attend-stage forms measured on the AMX CPU (2026-12-07) and not adopted, kept so that
``benchmarks/pa_attend_conv.py`` and ``speed.py`` go on timing them beside the shipped forms
(``docs/performance_amx.md``, "Forms measured here and not adopted")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.models.pa_head import BoxOffsetConv2d, box_sampling_points
from quantize.rewrites.pa_head import planar_sampling_points
from quantize.rewrites.sampling import grid_sample_tap_sum


class _PlanarProjection(nn.Module):
    """The attend conv's weights as one projection matrix ``weight (A*T*O, C)``, so that
    ``weight @ F`` computes every (anchor, tap) map planar; ``row_order`` permutes the
    ``(A, O, C, T)`` weight axes before they are flattened into the rows."""

    def __init__(self, conv: BoxOffsetConv2d, stride: float,
                 row_order: tuple[int, int, int, int]) -> None:
        super().__init__()
        a, o, c = conv.num_anchors, conv.out_channels_per_anchor, conv.in_channels
        t = conv.kernel_size**2
        weight = conv.weight.detach().reshape(a, o, c, t).permute(*row_order).reshape(-1, c)
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(conv.bias.detach().reshape(a, o).clone())
        self.shape = (a, t, o)
        self.stride = stride


class PlanarProjectionThenGridSample(_PlanarProjection):
    """Projection as ``W @ F`` (planar output: no reorder for GridSample), one GridSample of
    every (anchor, tap) map, sum over taps. Output ``(N, H*W*A, O)``. Measured 2026-12-07 on
    the AMX CPU and not adopted: 2.03-2.11x / 2.13-2.40x the plain conv (ORT / OV) in four
    runs, the shipped forms 2.08-2.16x / 2.27-2.45x in the same runs: no better."""

    def __init__(self, conv: BoxOffsetConv2d, stride: float) -> None:
        super().__init__(conv, stride, (0, 3, 1, 2))  # rows (anchor, tap, output)

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> Tensor:
        n, c, h, w = features.shape
        a, t, o = self.shape
        maps = torch.matmul(self.weight, features.reshape(n, c, h * w)).reshape(n, a, t, o, h, w)
        points = planar_sampling_points(boxes_cxcywh, self.stride).reshape(n, a, t, h * w, 2)
        out = grid_sample_tap_sum(maps, points)  # (N, A, O, H*W)
        return (out.permute(0, 3, 1, 2) + self.bias).reshape(n, h * w * a, o)


class TallMapGridSample(_PlanarProjection):
    """Every (anchor, tap) map stacked into one tall map, ``GAP`` zero rows after each (so a
    corner outside a map reads zeros, never the next map), and one GridSample of the ``O``
    channels with the taps innermost in the grid, then a sum over them. Output
    ``(N, H*W*A, O)``. Not exact to fp32's last bits: the tall map's normalised y carries
    about 30x the rounding (error about 5e-4 against 2.4-2.7e-5). Measured 2026-12-07 on the
    AMX CPU and not adopted: 2.71-2.82x / 2.18-2.32x in four runs."""

    # y is clamped to [-2, H + 1]: corners reach rows -2 .. H + 2 of a map. Two zero rows
    # suffice in exact arithmetic (row H + 2 is reached only at y = H + 1, with weight 0);
    # the third also absorbs the rounding of the normalised coordinate.
    GAP = 3

    def __init__(self, conv: BoxOffsetConv2d, stride: float) -> None:
        super().__init__(conv, stride, (1, 0, 3, 2))  # rows (output, anchor, tap)

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> Tensor:
        n, c, h, w = features.shape
        (a, t, o), gap = self.shape, self.GAP
        padded = F.pad(features, (0, 0, 0, gap))  # zero rows: the projection has no bias
        maps = torch.matmul(self.weight, padded.reshape(n, c, -1)).reshape(n, o, -1, w)
        points = box_sampling_points(boxes_cxcywh, self.stride)  # (N, A, T, H, W, 2)
        points = points.permute(0, 1, 3, 4, 2, 5).reshape(n, a, h * w, t, 2)
        x = points[..., 0].clamp(-2.0, w + 1.0)
        y = points[..., 1].clamp(-2.0, h + 1.0)
        first_row = (torch.arange(a * t, dtype=x.dtype) * (h + gap)).reshape(1, a, 1, t)
        grid = torch.stack([(2 * x + 1) / w - 1, (2 * (y + first_row) + 1) / maps.shape[2] - 1],
                           dim=-1)
        samples = F.grid_sample(maps, grid.reshape(n, a * h * w, t, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        out = samples.sum(dim=3).reshape(n, o, a, h * w).permute(0, 3, 2, 1)
        return (out + self.bias).reshape(n, h * w * a, o)
