"""Box parameterisation of Girshick et al. (R-CNN), in numpy, for the runtime.

``deltas = (dx, dy, dw, dh) * weights`` where ``dx = (gx - px) / pw``, ``dw = log(gw / pw)``.
SSD-style "variances" (0.1, 0.2) are ``weights = (10, 10, 5, 5)``; RetinaNet uses
``(1, 1, 1, 1)``. The torch twin lives in ``edgedet.models.box_coder`` and is tested against
this one.
"""

from __future__ import annotations

import math

import numpy as np

# Same clamp as torchvision / Detectron: exp() of larger dw/dh only produces absurd boxes.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def xyxy_to_cxcywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``(..., 4)`` x1,y1,x2,y2 → cx,cy,w,h."""
    x1, y1, x2, y2 = np.moveaxis(boxes_xyxy, -1, 0)
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes_cxcywh: np.ndarray) -> np.ndarray:
    """``(..., 4)`` cx,cy,w,h → x1,y1,x2,y2."""
    cx, cy, w, h = np.moveaxis(boxes_cxcywh, -1, 0)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def encode(
    boxes_xyxy: np.ndarray,
    priors_cxcywh: np.ndarray,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> np.ndarray:
    """Regression targets ``(..., 4)`` of ``boxes_xyxy`` relative to ``priors_cxcywh``."""
    g = xyxy_to_cxcywh(np.asarray(boxes_xyxy, dtype=np.float64))
    p = np.asarray(priors_cxcywh, dtype=np.float64)
    wx, wy, ww, wh = weights
    deltas = np.stack(
        [
            wx * (g[..., 0] - p[..., 0]) / p[..., 2],
            wy * (g[..., 1] - p[..., 1]) / p[..., 3],
            ww * np.log(g[..., 2] / p[..., 2]),
            wh * np.log(g[..., 3] / p[..., 3]),
        ],
        axis=-1,
    )
    return deltas.astype(np.float32)


def decode(
    deltas: np.ndarray,
    priors_cxcywh: np.ndarray,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> np.ndarray:
    """Boxes ``(..., 4)`` xyxy from ``deltas (..., 4)`` against ``priors_cxcywh (..., 4)``."""
    d = np.asarray(deltas, dtype=np.float32)
    p = np.asarray(priors_cxcywh, dtype=np.float32)
    wx, wy, ww, wh = weights
    dw = np.minimum(d[..., 2] / ww, BBOX_XFORM_CLIP)
    dh = np.minimum(d[..., 3] / wh, BBOX_XFORM_CLIP)
    cx = d[..., 0] / wx * p[..., 2] + p[..., 0]
    cy = d[..., 1] / wy * p[..., 3] + p[..., 1]
    w = np.exp(dw) * p[..., 2]
    h = np.exp(dh) * p[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
