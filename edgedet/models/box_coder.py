"""Torch twin of ``edgedet.box_coding`` (R-CNN box parameterisation with weights).

``deltas = (dx, dy, dw, dh) * weights`` with ``dx = (gx - px) / pw``, ``dw = log(gw / pw)``;
SSD / PASSD / DAIPNet variances (0.1, 0.2) are ``weights = (10, 10, 5, 5)``. The functions
mirror the numpy ones operation for operation (same clamp, same order) and are tested against
them; they are differentiable and run inside exported graphs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgedet.box_coding import BBOX_XFORM_CLIP

BoxWeights = tuple[float, float, float, float]


def xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """``(..., 4)`` x1,y1,x2,y2 -> cx,cy,w,h."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """``(..., 4)`` cx,cy,w,h -> x1,y1,x2,y2."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def encode(boxes_xyxy: Tensor, priors_cxcywh: Tensor,
           weights: BoxWeights = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets ``(..., 4)`` of ``boxes_xyxy (..., 4)`` w.r.t. ``priors_cxcywh``."""
    g = xyxy_to_cxcywh(boxes_xyxy)
    p = priors_cxcywh
    wx, wy, ww, wh = weights
    return torch.stack(
        [
            wx * (g[..., 0] - p[..., 0]) / p[..., 2],
            wy * (g[..., 1] - p[..., 1]) / p[..., 3],
            ww * torch.log(g[..., 2] / p[..., 2]),
            wh * torch.log(g[..., 3] / p[..., 3]),
        ],
        dim=-1,
    )


def decode_cxcywh(deltas: Tensor, priors_cxcywh: Tensor,
                  weights: BoxWeights = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Boxes ``(..., 4)`` as cx,cy,w,h from ``deltas (..., 4)`` against ``priors_cxcywh``."""
    p = priors_cxcywh
    wx, wy, ww, wh = weights
    dw = torch.clamp(deltas[..., 2] / ww, max=BBOX_XFORM_CLIP)
    dh = torch.clamp(deltas[..., 3] / wh, max=BBOX_XFORM_CLIP)
    cx = deltas[..., 0] / wx * p[..., 2] + p[..., 0]
    cy = deltas[..., 1] / wy * p[..., 3] + p[..., 1]
    return torch.stack([cx, cy, torch.exp(dw) * p[..., 2], torch.exp(dh) * p[..., 3]], dim=-1)


def decode(deltas: Tensor, priors_cxcywh: Tensor,
           weights: BoxWeights = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Boxes ``(..., 4)`` xyxy from ``deltas (..., 4)`` against ``priors_cxcywh (..., 4)``."""
    return cxcywh_to_xyxy(decode_cxcywh(deltas, priors_cxcywh, weights))
