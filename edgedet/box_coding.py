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
    # x and y as column pairs: half the numpy calls of one column at a time, the same
    # float operations per element (the SDK decodes PASSD's boxes through this per frame).
    top_left, bottom_right = boxes_xyxy[..., :2], boxes_xyxy[..., 2:]
    return np.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], axis=-1)


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
    # (x, y) and (w, h) as column pairs, each step one numpy call for both: the SDK decodes
    # every frame's candidates here, where the call count, not the arithmetic, is the cost.
    # Per element the float32 operations are those of the textbook form, in its order.
    weights_32 = np.asarray(weights, dtype=np.float32)
    centres = d[..., :2] / weights_32[:2] * p[..., 2:] + p[..., :2]
    half_sizes = np.exp(np.minimum(d[..., 2:] / weights_32[2:], np.float32(BBOX_XFORM_CLIP))
                        ) * p[..., 2:] / 2
    return np.concatenate([centres - half_sizes, centres + half_sizes], axis=-1)
