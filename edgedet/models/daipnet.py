"""DAIPNet: image pyramid network with dual attention for one-stage detection.

SSD (VGG-16, 300 or 512 input) plus (section 3 of the paper):

* **IPN**, the image pyramid network (eqs. 10-13): the input is pooled to the size of each of
  the first n = 4 SSD source maps (``I_p^i``), a lightweight conv group ``G`` (two 3x3 convs
  and one 1x1 conv) turns each pooled image into ``F_p^i`` with the channels of that source
  map, and a chain ``M`` of stride-2 3x3 convs carries ``F_p^1`` down the pyramid:
  ``L_1 = F_p^1``, ``L_i = F_p^i + M^1_{i-1}``.
* **AFFM**, adaptive feature fusion (eqs. 1-3), on each of those n levels:
  ``B_i = R(D(E_{i-1}) + R(E_i)) + R(E_i)`` and ``O_i = w_i L_i + (1 - w_i) B_i`` with a
  learned scalar ``w_i`` initialised to 0 (so training starts from the backbone alone).
* **PAFM**, progressive attention fusion (eqs. 4-9), on levels 1..n-1: the higher levels are
  upsampled to level i and concatenated (``X_cat``), gated by ``sigmoid(C2(ReLU(C1(GAP))))``
  (``X_att``), and the output is ``G_i = Cat(C5(Cat(C3(X_i), C4(X_cat))), C6(X_att))``.

SSD's heads then predict from ``[G_1, G_2, G_3, O_4, E_5, E_6(, E_7)]``.

Where the paper leaves a detail open we chose, and say so next to the code:

* ``R`` is a ResNet bottleneck block (1x1 to C/4, 3x3, 1x1 back to C, BN, identity shortcut):
  "a residual block" with the channels of ``E_i``; a basic block on fc7 (1024 channels)
  would cost 19M parameters per block.
* ``D`` is a 2x2 max pool (the symbol of the image pooling of eq. 10) followed by a 1x1
  conv + BN to the channels of ``E_i`` (the sum in eq. 2 needs equal channels). For the first
  level there is no previous source map, so ``B_1 = R(R(E_1)) + R(E_1)``.
* PAFM first projects every higher level with a 1x1 conv to C = 128 channels (the paper's
  ``z_i in R^{nC}`` implies a common C; 128 as in LRF, the code base DAIPNet extends), uses
  reduction 16 in the gate (SE's default), and splits the output channels equally between
  the two halves of eqs. 8-9 so ``G_i`` keeps the channels of ``E_i``. 1x1 convs outside the
  gate are conv + BN + ReLU (LRF's ConvBlock); upsampling is bilinear (LRF).
* The SSD backbone stream itself is untouched: the fused maps only feed the heads.

The paper gives no parameter counts (Tables 1-3 report accuracy and time only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.anchors import SsdPriorSpec
from edgedet.models.backbones.vgg import (
    SSD300_EXTRAS,
    SSD512_EXTRAS,
    VGG16SSD,
    SsdExtraLayers,
)
from edgedet.models.box_coder import BoxWeights
from edgedet.models.contract import model_config
from edgedet.models.pa_head import flatten_head_output

NUM_FUSED_LEVELS = 4  # "n = 4 denotes the number of feature pyramid levels selected"
PAFM_PROJECTION_CHANNELS = 128
PAFM_GATE_REDUCTION = 16
DAIPNET_BOX_CODER_WEIGHTS: BoxWeights = (10.0, 10.0, 5.0, 5.0)  # SSD variances 0.1 / 0.2

# SSD prior settings (ssd.pytorch's 'voc' config for 300; Caffe SSD512 for 512).
_PRIORS: dict[int, dict] = {
    300: {
        "steps": (8, 16, 32, 64, 100, 300),
        "min_sizes": (30, 60, 111, 162, 213, 264),
        "max_sizes": (60, 111, 162, 213, 264, 315),
        "aspect_ratios": ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    },
    512: {
        "steps": (8, 16, 32, 64, 128, 256, 512),
        "min_sizes": (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
        "max_sizes": (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
        "aspect_ratios": ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    },
}
_EXTRAS = {300: SSD300_EXTRAS, 512: SSD512_EXTRAS}
# How each of the first source maps is reached from the previous one, as ceil_mode of a
# 2x2 pool: conv4_3 -> fc7 is VGG's pool4 (floor), the extras are stride-2 pad-1 convs, whose
# output is ceil(size / 2). Mirroring this keeps every pooled map the size of its source map.
_LEVEL_CEIL_MODE = (False, True, True)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                 relu: bool = True) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU); padding keeps the size for odd kernels."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BottleneckResidual(nn.Module):
    """``R`` of eq. 2: ``ReLU(x + BN(1x1(ReLU(BN(3x3(ReLU(BN(1x1(x)))))))))``, ``C -> C``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        width = channels // reduction
        self.body = nn.Sequential(
            conv_bn_relu(channels, width, 1),
            conv_bn_relu(width, width, 3),
            conv_bn_relu(width, channels, 1, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class LightweightConvGroup(nn.Module):
    """``G`` of eq. 11: 3x3 (3 -> C/4), 3x3 (C/4 -> C/4), 1x1 (C/4 -> C), size-preserving."""

    def __init__(self, out_channels: int, in_channels: int = 3) -> None:
        super().__init__()
        width = out_channels // 4
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, width, 3),
            conv_bn_relu(width, width, 3),
            conv_bn_relu(width, out_channels, 1, relu=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ImagePyramidNetwork(nn.Module):
    """IPN: ``forward(images (N,3,H,W)) -> [L_1 .. L_n]`` with the sizes and channels of the
    first n SSD source maps (eqs. 10-13)."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = tuple(channels)
        # D for I_p^1: pool1, pool2, pool3 of VGG (the last with ceil_mode) -> conv4_3's size.
        self.first_pool = nn.Sequential(nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2),
                                        nn.MaxPool2d(2, 2, ceil_mode=True))
        self.pools = nn.ModuleList(nn.MaxPool2d(2, 2, ceil_mode=ceil)
                                   for ceil in _LEVEL_CEIL_MODE[: len(channels) - 1])
        self.groups = nn.ModuleList(LightweightConvGroup(c) for c in self.channels)
        # M: stride-2 3x3 convs from F_p^1 down the pyramid (eq. 12).
        self.downsamples = nn.ModuleList(
            conv_bn_relu(self.channels[i], self.channels[i + 1], 3, stride=2)
            for i in range(len(self.channels) - 1)
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        image = self.first_pool(images)
        shallow = self.groups[0](image)  # F_p^1
        outputs = [shallow]
        chain = shallow
        for level in range(1, len(self.channels)):
            image = self.pools[level - 1](image)
            chain = self.downsamples[level - 1](chain)  # M^1_{level}
            outputs.append(_checked_sum(self.groups[level](image), chain, "IPN"))
        return outputs


class AdaptiveFeatureFusion(nn.Module):
    """AFFM on one level: ``O = w L + (1 - w) (R_t(D(E_prev) + R_s(E)) + R_s(E))`` (eq. 3).

    ``w`` (``omega``) is a learned scalar initialised to 0; without the IPN (``use_aux``
    False) there is no ``L`` and no ``w`` and the module returns ``B``.
    """

    def __init__(self, channels: int, prev_channels: int | None, ceil_mode: bool = True,
                 use_aux: bool = True) -> None:
        super().__init__()
        self.semantic = BottleneckResidual(channels)
        self.texture = BottleneckResidual(channels)
        self.downsample: nn.Module | None = None
        if prev_channels is not None:
            self.downsample = nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode),
                                            conv_bn_relu(prev_channels, channels, 1))
        self.omega = nn.Parameter(torch.zeros(1)) if use_aux else None

    def forward(self, e: Tensor, e_prev: Tensor | None, aux: Tensor | None) -> Tensor:
        semantic = self.semantic(e)
        texture_in = semantic
        if self.downsample is not None and e_prev is not None:
            texture_in = _checked_sum(self.downsample(e_prev), semantic, "AFFM")
        fused = self.texture(texture_in) + semantic  # B_i, eq. 2
        if self.omega is None or aux is None:
            return fused
        return self.omega * aux + (1 - self.omega) * fused


class PafmLevel(nn.Module):
    """PAFM for one level i: ``G_i`` from ``X_i (N,c,H,W)`` and ``X_cat (N,m,H,W)`` (eqs. 5-9).
    Output ``(N, c, H, W)``."""

    def __init__(self, channels: int, cat_channels: int) -> None:
        super().__init__()
        hidden = max(cat_channels // PAFM_GATE_REDUCTION, 8)
        self.gate_reduce = nn.Conv2d(cat_channels, hidden, 1)  # C1
        self.gate_expand = nn.Conv2d(hidden, cat_channels, 1)  # C2
        half = channels // 2
        self.current = conv_bn_relu(channels, half)  # C3
        self.context = conv_bn_relu(cat_channels, half)  # C4
        self.intermediate_out = conv_bn_relu(2 * half, half)  # C5
        self.attended_out = conv_bn_relu(cat_channels, channels - half)  # C6

    def forward(self, x: Tensor, x_cat: Tensor) -> Tensor:
        z = x_cat.mean(dim=(2, 3), keepdim=True)  # GAP, eq. 5
        gate = self.gate_expand(F.relu(self.gate_reduce(z)))  # eq. 6
        attended = torch.sigmoid(gate) * x_cat  # eq. 7
        intermediate = torch.cat([self.current(x), self.context(x_cat)], dim=1)  # eq. 8
        return torch.cat([self.intermediate_out(intermediate), self.attended_out(attended)],
                         dim=1)  # eq. 9


class ProgressiveAttentionFusion(nn.Module):
    """PAFM: ``forward([X_1 .. X_n]) -> [G_1 .. G_{n-1}, X_n]`` (shapes unchanged)."""

    def __init__(self, channels: Sequence[int],
                 projection_channels: int = PAFM_PROJECTION_CHANNELS) -> None:
        super().__init__()
        n = len(channels)
        c = projection_channels
        self.projections = nn.ModuleList(conv_bn_relu(ch, c) for ch in channels[1:])
        self.levels = nn.ModuleList(PafmLevel(channels[i], c * (n - 1 - i)) for i in range(n - 1))

    def forward(self, xs: Sequence[Tensor]) -> list[Tensor]:
        projected = [proj(x) for proj, x in zip(self.projections, xs[1:], strict=True)]
        outputs = []
        for i, level in enumerate(self.levels):
            size = xs[i].shape[-2:]
            upsampled = [F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                         for p in projected[i:]]  # U(X_{i+1}) .. U(X_n), eq. 4
            outputs.append(level(xs[i], torch.cat(upsampled, dim=1)))
        return [*outputs, xs[-1]]


class SsdMultiboxHead(nn.Module):
    """SSD's predictors: per level a 3x3 conv for ``(K+1)*A_l`` logits (``conf.l``) and one
    for ``4*A_l`` offsets (``loc.l``), ssd.pytorch names."""

    def __init__(self, in_channels: Sequence[int], anchors_per_cell: Sequence[int],
                 num_classes: int) -> None:
        super().__init__()
        self.num_logits = num_classes + 1
        self.loc = nn.ModuleList(nn.Conv2d(c, 4 * a, 3, padding=1)
                                 for c, a in zip(in_channels, anchors_per_cell, strict=True))
        self.conf = nn.ModuleList(nn.Conv2d(c, self.num_logits * a, 3, padding=1)
                                  for c, a in zip(in_channels, anchors_per_cell, strict=True))

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        cls = [flatten_head_output(conv(f), self.num_logits)
               for conv, f in zip(self.conf, features, strict=True)]
        box = [flatten_head_output(conv(f), 4) for conv, f in zip(self.loc, features, strict=True)]
        return {"cls_logits": torch.cat(cls, dim=1), "box_deltas": torch.cat(box, dim=1)}


class DAIPNet(nn.Module):
    """SSD-VGG16 + IPN + AFFM + PAFM.

    ``forward(images (N,3,H,W)) -> {"cls_logits": (N,T,K+1), "box_deltas": (N,T,4)}`` with
    ``T`` = number of SSD priors (background at logit 0; deltas in ``box_coder_weights``
    units). ``forward_export`` returns the same two tensors as a tuple.
    """

    # SSD's softmax head with background at 0, decoded against the priors.
    head_family: ClassVar[str] = "ssd"
    default_nms_mode: ClassVar[str] = "hard"
    export_output_names: tuple[str, ...] = ("cls_logits", "box_deltas")

    def __init__(
        self,
        vgg: VGG16SSD,
        extras: SsdExtraLayers,
        ipn: ImagePyramidNetwork | None,
        affm: nn.ModuleList | None,
        pafm: ProgressiveAttentionFusion | None,
        head: SsdMultiboxHead,
        prior_config: dict,
        config: dict,
    ) -> None:
        super().__init__()
        self.vgg = vgg
        self.extras = extras
        self.ipn = ipn
        self.affm = affm
        self.pafm = pafm
        self.head = head
        self.prior_config = prior_config
        self.config = config
        self.box_coder_weights: BoxWeights = DAIPNET_BOX_CODER_WEIGHTS

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        conv4_3, fc7 = self.vgg(images)
        sources = [conv4_3, fc7, *self.extras(fc7)]  # E_1 .. E_m
        n = NUM_FUSED_LEVELS
        aux = self.ipn(images) if self.ipn is not None else [None] * n
        fused = []
        for i in range(n):
            if self.affm is not None:
                previous = sources[i - 1] if i > 0 else None
                fused.append(self.affm[i](sources[i], previous, aux[i]))
            elif aux[i] is not None:
                fused.append(_checked_sum(sources[i], aux[i], "IPN"))  # plain fusion
            else:
                fused.append(sources[i])
        if self.pafm is not None:
            fused = self.pafm(fused)
        return self.head([*fused, *sources[n:]])

    def forward_export(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.forward(images)
        return tuple(outputs[name] for name in self.export_output_names)

    def anchor_spec(self, image_size: tuple[int, int]) -> SsdPriorSpec:
        """SSD priors for ``image_size = (width, height)``; steps and box sizes are those of
        the nominal input (300 or 512), feature sizes follow the conv arithmetic."""
        width, height = image_size
        base = self.vgg.feature_sizes((height, width))
        feature_sizes = (*base, *self.extras.feature_sizes(base[-1]))
        if any(h < 1 or w < 1 for h, w in feature_sizes):
            raise ValueError(f"input {width}x{height} is too small for this SSD: feature "
                             f"sizes {feature_sizes}")
        return SsdPriorSpec(
            image_size=(int(width), int(height)),
            feature_sizes=tuple(feature_sizes),
            steps=tuple(float(s) for s in self.prior_config["steps"]),
            min_sizes=tuple(float(s) for s in self.prior_config["min_sizes"]),
            max_sizes=tuple(float(s) for s in self.prior_config["max_sizes"]),
            aspect_ratios=tuple(tuple(float(r) for r in rs)
                                for rs in self.prior_config["aspect_ratios"]),
        )


def _checked_sum(a: Tensor, b: Tensor, where: str) -> Tensor:
    if a.shape != b.shape:
        raise ValueError(
            f"DAIPNet {where}: cannot add maps of shapes {tuple(a.shape)} and "
            f"{tuple(b.shape)}; use an input size whose SSD maps halve evenly (300 or 512)"
        )
    return a + b


def daipnet_vgg16(
    num_classes: int = 80,
    img_size: int = 300,
    use_ipn: bool = True,
    use_affm: bool = True,
    use_pafm: bool = True,
) -> DAIPNet:
    """DAIPNet with SSD300 or SSD512 (VGG-16).

    Args:
        num_classes: object classes K (heads predict K+1 with background at 0).
        img_size: 300 or 512 (selects SSD's extra layers and priors).
        use_ipn: the image pyramid auxiliary network (without it AFFM returns ``B_i``).
        use_affm: adaptive feature fusion; off, the IPN maps are added to the SSD maps.
        use_pafm: progressive attention fusion; off, the heads read the fused maps directly.
    """
    return _build_daipnet("daipnet_vgg16", num_classes, img_size, use_ipn, use_affm, use_pafm)


def daipnet_vgg16_small(
    num_classes: int = 80,
    img_size: int = 300,
    use_ipn: bool = True,
    use_affm: bool = True,
    use_pafm: bool = True,
) -> DAIPNet:
    """Edge configuration (not in the paper): every channel of VGG-16, SSD's extras and
    PAFM's projection divided by 4, BN after every trunk and extra conv. Args as
    ``daipnet_vgg16``.

    Layers, dilations, priors, IPN/AFFM/PAFM and the head are the paper's. Quarter width cuts
    the multiply-adds about 16x, so it trains from scratch on a 2-core CPU; VGG without BN
    does not train from scratch (ScratchDet), and the paper's VGG starts from ImageNet weights,
    which this project cannot download.
    """
    return _build_daipnet("daipnet_vgg16_small", num_classes, img_size, use_ipn, use_affm,
                          use_pafm, width_divisor=4, batch_norm=True)


def _build_daipnet(
    architecture: str,
    num_classes: int,
    img_size: int,
    use_ipn: bool,
    use_affm: bool,
    use_pafm: bool,
    width_divisor: int = 1,
    batch_norm: bool = False,
) -> DAIPNet:
    if img_size not in _PRIORS:
        raise ValueError(f"DAIPNet img_size must be 300 or 512, got {img_size}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (object classes), got {num_classes}")
    vgg = VGG16SSD(width_divisor, batch_norm)
    extra_specs = [replace(spec, mid_channels=spec.mid_channels // width_divisor,
                           out_channels=spec.out_channels // width_divisor)
                   for spec in _EXTRAS[img_size]]
    extras = SsdExtraLayers(vgg.out_channels[1], extra_specs, batch_norm)
    channels = (*vgg.out_channels, *extras.out_channels)
    fused_channels = channels[:NUM_FUSED_LEVELS]
    ipn = ImagePyramidNetwork(fused_channels) if use_ipn else None
    affm = None
    if use_affm:
        affm = nn.ModuleList(
            AdaptiveFeatureFusion(c, fused_channels[i - 1] if i > 0 else None,
                                  ceil_mode=_LEVEL_CEIL_MODE[i - 1] if i > 0 else True,
                                  use_aux=use_ipn)
            for i, c in enumerate(fused_channels)
        )
    pafm = (ProgressiveAttentionFusion(fused_channels,
                                       PAFM_PROJECTION_CHANNELS // width_divisor)
            if use_pafm else None)
    prior_config = _PRIORS[img_size]
    anchors_per_cell = [2 + 2 * len(r) for r in prior_config["aspect_ratios"]]
    head = SsdMultiboxHead(channels, anchors_per_cell, num_classes)
    for module in (extras, head):
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)  # ssd.pytorch's initialisation
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    config = model_config(architecture, {
        "num_classes": num_classes, "img_size": img_size, "use_ipn": use_ipn,
        "use_affm": use_affm, "use_pafm": use_pafm,
    })
    return DAIPNet(vgg, extras, ipn, affm, pafm, head, prior_config, config)
