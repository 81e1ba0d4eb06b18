"""PASSD's propose-and-attend (P&A) prediction module (Jang et al., section 5.1).

Propose (5.1.1): a 3x3 conv with 2A filters (binary objectness) and a 3x3 conv with 4A filters
(offsets of the default boxes, R-CNN parameterisation), shared by all pyramid levels. The
centre offsets are clipped by eq. 2, ``delta'_x = tanh(delta_x) * c_x / (2 b_w)`` with ``c_x``
the cell stride: the adjusted centre moves at most half a cell from the default one
(``b_w * delta'_x = tanh(delta_x) * c_x / 2``). Width and height are not clipped.

Attend (5.1.2): a 3x3 "offset conv" whose nine sampling points are spread over the adjusted
box (eqs. 4-5). For default box ``i`` of the cell at feature position ``p_o`` the taps are

    p_o + p_s + Delta p_s = p_o + (Delta x, Delta y) / stride + p_s * (b^_w, b^_h) / (k * stride)

with ``p_s`` in ``{-1, 0, 1}^2``, ``(b^_w, b^_h)`` the adjusted box size and
``(Delta x, Delta y)`` its centre displacement, all converted from pixels to feature cells by
the level's stride; the taps are therefore the centres of the 3x3 bins of the adjusted box,
like a 3x3 RoIAlign. The offsets are computed from the boxes, not learned, and each of the A
default boxes of a cell has its own grid for its own output channels (C classes or 4 box
offsets per box). Features are read by bilinear interpolation in which every corner outside
the map reads 0 (deformable-conv semantics) and contracted with the weights.

Bilinear sampling is linear in the features, so contracting first is exact: a 1x1 conv
projects every cell to ``A x k*k x out`` values and each (box, tap) then samples only its own
``out`` channels (``project_then_sample``), instead of sampling all ``C`` channels at every tap
and contracting afterwards (``sample_box_taps`` + ``BoxOffsetConv2d.project``, kept as the
reference). With C=128, A=3 and 25 outputs this samples ~5x fewer values and makes a training
step of the zoo PASSD several times faster; the export rewrite uses the same order.

The adjusted boxes are detached before they place the sampling points: the propose stage is
trained by its own loss and the attend stage treats its boxes as given geometry (the paper is
silent; this is what RefineDet does with refined anchors and S2A-Net with its AlignConv).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.models.box_coder import BoxWeights, decode_cxcywh


def flatten_head_output(x: Tensor, values_per_anchor: int) -> Tensor:
    """``(N, A*k, H, W) -> (N, H*W*A, k)`` in the level -> y -> x -> anchor order."""
    n = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(n, -1, values_per_anchor)


def box_sampling_points(boxes_cxcywh: Tensor, stride: float, kernel_size: int = 3) -> Tensor:
    """Sampling points of the attend conv (eqs. 4-5) for every box of one pyramid level.

    Args:
        boxes_cxcywh: ``(N, H, W, A, 4)`` adjusted boxes in input pixels; the box of cell
            ``(y, x)`` is the one predicted there.
        stride: pixels per feature cell of this level.
        kernel_size: ``k``; taps sit at ``centre + r * size / k`` for ``r`` in
            ``-(k-1)/2 .. (k-1)/2``.

    Returns:
        ``(N, A, k*k, H, W, 2)`` points as ``(x, y)`` in feature-map coordinates (cell
        ``(y, x)`` has its centre at ``(x, y)``), taps in row-major order like a conv kernel.
    """
    half = (kernel_size - 1) / 2
    r = torch.arange(kernel_size, dtype=boxes_cxcywh.dtype, device=boxes_cxcywh.device) - half
    ry, rx = torch.meshgrid(r, r, indexing="ij")
    taps = torch.stack([rx.reshape(-1), ry.reshape(-1)], dim=-1)  # (k*k, 2) as (x, y)
    # Pixel (cx, cy) lies at feature coordinate (cx / stride - 0.5, cy / stride - 0.5).
    centres = boxes_cxcywh[..., :2] / stride - 0.5  # (N, H, W, A, 2)
    sizes = boxes_cxcywh[..., 2:] / (stride * kernel_size)  # tap spacing in cells
    points = centres.unsqueeze(-2) + taps * sizes.unsqueeze(-2)  # (N, H, W, A, k*k, 2)
    return points.permute(0, 3, 4, 1, 2, 5)


def sample_box_taps(features: Tensor, points_xy: Tensor) -> Tensor:
    """Bilinear samples of ``features`` at every tap, laid out for the matrix product.

    Args:
        features: ``(N, C, H, W)``.
        points_xy: ``(N, A, K, H, W, 2)`` from ``box_sampling_points``.

    Returns:
        ``(N, A, C*K, H*W)``: row ``c*K + t`` is channel ``c`` at tap ``t``, matching a conv
        weight ``(out, C, k, k)`` flattened to ``(out, C*K)``.
    """
    n, c, h, w = features.shape
    _, a, k = points_xy.shape[:3]
    # grid_sample's align_corners=False maps x = ((gx + 1) * W - 1) / 2; invert it. Unlike
    # align_corners=True this is also right for maps one cell wide. Zero padding gives the
    # deformable-conv rule: corners outside the map read 0.
    size = torch.tensor([w, h], dtype=points_xy.dtype, device=points_xy.device)
    grid = (2 * points_xy + 1) / size - 1
    grid = grid.reshape(n, a * k, h * w, 2)
    samples = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (N, C, A*K, H*W)
    samples = samples.reshape(n, c, a, k, h * w).permute(0, 2, 1, 3, 4)
    return samples.reshape(n, a, c * k, h * w)


class BoxOffsetConv2d(nn.Module):
    """The attend-stage offset conv: one k x k conv whose taps follow each box's grid.

    ``weight (A*out, C, k, k)`` and ``bias (A*out,)`` have exactly the shapes of the plain
    ``nn.Conv2d(C, A*out, k)`` it replaces (same parameter count, Table 2); output channels
    ``[i*out, (i+1)*out)`` belong to default box ``i`` and read the features on box ``i``'s
    sampling grid.
    """

    def __init__(self, in_channels: int, out_channels_per_anchor: int, num_anchors: int,
                 kernel_size: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels_per_anchor = out_channels_per_anchor
        self.num_anchors = num_anchors
        self.kernel_size = kernel_size
        out_channels = num_anchors * out_channels_per_anchor
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, features: Tensor, points_xy: Tensor) -> Tensor:
        """``features (N, C, H, W)``, ``points_xy (N, A, k*k, H, W, 2)`` -> ``(N, A*out, H, W)``."""
        return project_then_sample(features, points_xy, [self])[0]

    def forward_reference(self, features: Tensor, points_xy: Tensor) -> Tensor:
        """``forward`` in the sample-then-contract order (slower, same result)."""
        return self.project(sample_box_taps(features, points_xy), features.shape[-2:])

    def project(self, taps: Tensor, feature_hw: Sequence[int]) -> Tensor:
        """Contract samples ``(N, A, C*k*k, H*W)`` with the weights -> ``(N, A*out, H, W)``."""
        n = taps.shape[0]
        weight = self.weight.reshape(self.num_anchors, self.out_channels_per_anchor, -1)
        out = torch.einsum("aok,nakp->naop", weight, taps)
        out = out + self.bias.reshape(1, self.num_anchors, self.out_channels_per_anchor, 1)
        return out.reshape(n, -1, *feature_hw)


def project_then_sample(features: Tensor, points_xy: Tensor,
                        convs: Sequence[BoxOffsetConv2d]) -> list[Tensor]:
    """Offset convs that share one sampling grid, run in the contract-first order.

    Args:
        features: ``(N, C, H, W)``.
        points_xy: ``(N, A, k*k, H, W, 2)`` from ``box_sampling_points``.
        convs: offset convs with the same ``in_channels``, ``num_anchors`` and ``kernel_size``.

    Returns:
        Each conv's output ``(N, A*out_i, H, W)``, equal to ``conv.forward_reference``.
    """
    n, c, h, w = features.shape
    a, taps = points_xy.shape[1:3]
    sizes = [conv.out_channels_per_anchor for conv in convs]
    # (A*out, C, k, k) -> rows ordered (anchor, tap, output), one 1x1 conv for all convs.
    weight = torch.cat([conv.weight.reshape(a, size, c, taps)
                        for conv, size in zip(convs, sizes, strict=True)], dim=1)
    weight = weight.permute(0, 3, 1, 2).reshape(-1, c, 1, 1)
    table = F.conv2d(features, weight)  # (N, A*T*O, H, W)
    table = table.reshape(n * a * taps, sum(sizes), h, w)
    # Same grid convention as sample_box_taps; one grid_sample batch entry per (box, tap).
    scale = torch.tensor([w, h], dtype=points_xy.dtype, device=points_xy.device)
    grid = ((2 * points_xy + 1) / scale - 1).reshape(n * a * taps, h, w, 2)
    samples = F.grid_sample(table, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (N*A*T, O, H, W)
    summed = samples.reshape(n, a, taps, sum(sizes), h, w).sum(dim=2)  # (N, A, O, H, W)
    return [
        (part + conv.bias.reshape(1, a, size, 1, 1)).reshape(n, a * size, h, w)
        for part, conv, size in zip(summed.split(sizes, dim=2), convs, sizes, strict=True)
    ]


def _normal_init(module: nn.Conv2d) -> None:
    # PASSD section 6.1: new layers start from N(0, 0.01) weights and zero bias.
    nn.init.normal_(module.weight, std=0.01)
    nn.init.zeros_(module.bias)


class ProposeAttendHead(nn.Module):
    """The P&A module, shared by all pyramid levels.

    With ``use_attend=False`` the attend convs are plain 3x3 convs (Table 1, exp. 2-3:
    propose stage, fixed sampling); with ``clip_propose_offsets=False`` eq. 2 is skipped
    (exp. 2). ``contract_first=False`` runs the attend convs in the slower sample-then-contract
    order (same result; ``train/bench.py --variants`` measures the two).

    Parameter names: ``propose_objectness``, ``propose_box`` (3x3 convs), ``attend_cls``,
    ``attend_box`` (offset convs or 3x3 convs).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        box_coder_weights: BoxWeights,
        use_attend: bool = True,
        clip_propose_offsets: bool = True,
        contract_first: bool = True,
    ) -> None:
        super().__init__()
        self.num_logits = num_classes + 1  # background at index 0
        self.contract_first = contract_first
        self.num_anchors = num_anchors
        self.box_coder_weights = box_coder_weights
        self.use_attend = use_attend
        self.clip_propose_offsets = clip_propose_offsets
        a = num_anchors
        self.propose_objectness = nn.Conv2d(in_channels, 2 * a, 3, padding=1)
        self.propose_box = nn.Conv2d(in_channels, 4 * a, 3, padding=1)
        _normal_init(self.propose_objectness)
        _normal_init(self.propose_box)
        self.attend_cls: nn.Module
        self.attend_box: nn.Module
        if use_attend:
            self.attend_cls = BoxOffsetConv2d(in_channels, self.num_logits, a)
            self.attend_box = BoxOffsetConv2d(in_channels, 4, a)
        else:
            self.attend_cls = nn.Conv2d(in_channels, self.num_logits * a, 3, padding=1)
            self.attend_box = nn.Conv2d(in_channels, 4 * a, 3, padding=1)
            _normal_init(self.attend_cls)
            _normal_init(self.attend_box)

    def forward(self, features: Sequence[Tensor], priors_cxcywh: Sequence[Tensor],
                strides: Sequence[int]) -> dict[str, Tensor]:
        """Run the module on every level.

        Args:
            features: pyramid maps ``(N, C, H_l, W_l)``.
            priors_cxcywh: default boxes of each level, ``(H_l, W_l, A, 4)`` in pixels.
            strides: pixels per cell of each level.

        Returns:
            ``objectness_logits (N, T, 2)``, ``propose_deltas (N, T, 4)`` (clipped, in the
            weighted units of ``box_coder_weights``), ``cls_logits (N, T, K+1)``,
            ``box_deltas (N, T, 4)`` relative to the adjusted boxes and
            ``adjusted_priors_cxcywh (N, T, 4)`` (detached), ``T`` = all default boxes.
        """
        outputs: dict[str, list[Tensor]] = {
            "objectness_logits": [], "propose_deltas": [], "cls_logits": [],
            "box_deltas": [], "adjusted_priors_cxcywh": [],
        }
        for feature, priors, stride in zip(features, priors_cxcywh, strides, strict=True):
            n, _, h, w = feature.shape
            a = self.num_anchors
            objectness = self.propose_objectness(feature)
            raw = self.propose_box(feature).permute(0, 2, 3, 1).reshape(n, h, w, a, 4)
            deltas = self._clip(raw, priors, stride)  # (N, H, W, A, 4)
            adjusted = decode_cxcywh(deltas.detach(), priors, self.box_coder_weights)
            if self.use_attend:
                points = box_sampling_points(adjusted, float(stride))
                if self.contract_first:
                    cls, box = project_then_sample(feature, points,
                                                   [self.attend_cls, self.attend_box])
                else:
                    taps = sample_box_taps(feature, points)
                    cls = self.attend_cls.project(taps, (h, w))
                    box = self.attend_box.project(taps, (h, w))
            else:
                cls = self.attend_cls(feature)
                box = self.attend_box(feature)
            outputs["objectness_logits"].append(flatten_head_output(objectness, 2))
            outputs["propose_deltas"].append(deltas.reshape(n, -1, 4))
            outputs["cls_logits"].append(flatten_head_output(cls, self.num_logits))
            outputs["box_deltas"].append(flatten_head_output(box, 4))
            outputs["adjusted_priors_cxcywh"].append(adjusted.reshape(n, -1, 4))
        return {key: torch.cat(value, dim=1) for key, value in outputs.items()}

    def _clip(self, raw: Tensor, priors: Tensor, stride: int) -> Tensor:
        """Eq. 2 on the centre offsets of ``raw (N, H, W, A, 4)``; ``priors (H, W, A, 4)``.

        ``tanh`` acts on the raw conv output and the result is expressed in the weighted
        units of the box coder, so ``decode`` moves the centre by ``tanh(.) * stride / 2``.
        """
        if not self.clip_propose_offsets:
            return raw
        xy_weights = raw.new_tensor(self.box_coder_weights[:2])
        max_shift = xy_weights * stride / (2 * priors[..., 2:])  # (H, W, A, 2)
        return torch.cat([torch.tanh(raw[..., :2]) * max_shift, raw[..., 2:]], dim=-1)


class PlainConvHead(nn.Module):
    """SSD-style predictor of PASSD's ablation (Table 1, exp. 1): one shared 3x3 conv for
    ``(K+1)*A`` class logits and one for ``4*A`` box offsets relative to the default boxes.
    """

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int) -> None:
        super().__init__()
        self.num_logits = num_classes + 1
        self.num_anchors = num_anchors
        self.cls_conv = nn.Conv2d(in_channels, self.num_logits * num_anchors, 3, padding=1)
        self.box_conv = nn.Conv2d(in_channels, 4 * num_anchors, 3, padding=1)
        _normal_init(self.cls_conv)
        _normal_init(self.box_conv)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        """``features [(N, C, H_l, W_l)]`` -> ``cls_logits (N, T, K+1)``,
        ``box_deltas (N, T, 4)``."""
        cls = [flatten_head_output(self.cls_conv(f), self.num_logits) for f in features]
        box = [flatten_head_output(self.box_conv(f), 4) for f in features]
        return {"cls_logits": torch.cat(cls, dim=1), "box_deltas": torch.cat(box, dim=1)}
