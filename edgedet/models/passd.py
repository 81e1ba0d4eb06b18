"""PASSD: Propose-and-Attend Single Shot Detector (Jang et al., 2019).

SSD + FPN (``passd_fpn.py``) + the P&A prediction module (``pa_head.py``). Backbones
(section 4): VGG-16 with SSD's conv8 and conv9 (both stride 2), ResNet-101 with one extra
bottleneck ``res6`` (stride 2, 512 channels), MobileNet v1 with one extra depthwise-separable
layer (stride 2, 512 channels). The pyramid uses the maps at strides 8, 16, 32 and 64, each
"selected right after the last layer that holds the corresponding stride": for VGG-16 SSD's
source layers conv4_3 (L2-normalised), fc7, conv8_2, conv9_2; for ResNet C3, C4, C5, res6; for
MobileNet the outputs of blocks 5, 11, 13 and the extra layer. For the 768 input a stride-128
level is added (footnote 1) by one more extra layer: SSD's conv10 for VGG-16 (as in SSD512), a
second ``res6``-like bottleneck for ResNet-101, a second 512-channel depthwise-separable layer
for MobileNet (the paper does not say which layer; these repeat the pattern).

Default boxes (section 5): A = 3 per cell, side ``4 * stride * s`` with
``s in {2^0, 2^(1/3), 2^(2/3)}`` (``PASSD_VOC_ANCHOR_SCALES``; footnote 3: COCO uses
``{2^(-1/3), 2^0, 2^(1/3)}``, ``PASSD_COCO_ANCHOR_SCALES``), aspect 1:1. ``passd_vgg16``
defaults to VOC (20 classes) and the VOC scales; ``passd_resnet101`` and ``passd_mobilenet``
are COCO models (80 classes, COCO scales); pass ``anchor_scales`` to change.

Box coding: the paper encodes offsets "following the standard box parameterization [8]"
(eq. 1, R-CNN). Its SSD code base scales those targets by SSD's variances (0.1, 0.2), which is
the same parameterisation with ``weights = (10, 10, 5, 5)``; we keep SSD's weighting because
the rest of the training recipe (Smooth-L1, learning rates) is SSD's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from edgedet.anchors import GridAnchorSpec
from edgedet.models.backbones.mobilenet import (
    MobileNetV1,
    depthwise_separable,
    scaled_channels,
)
from edgedet.models.backbones.resnet import Bottleneck, ResNet, conv1x1, resnet101
from edgedet.models.backbones.vgg import (
    SSD512_EXTRAS,
    VGG16SSD,
    SsdExtraLayers,
    conv_output_size,
)
from edgedet.models.box_coder import BoxWeights
from edgedet.models.contract import model_config
from edgedet.models.pa_head import PlainConvHead, ProposeAttendHead
from edgedet.models.passd_fpn import PassdFPN

PASSD_VOC_ANCHOR_SCALES: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
PASSD_COCO_ANCHOR_SCALES: tuple[float, ...] = (2 ** (-1 / 3), 1.0, 2 ** (1 / 3))
PASSD_IMAGE_SIZES = (320, 512, 768)
PASSD_BOX_CODER_WEIGHTS: BoxWeights = (10.0, 10.0, 5.0, 5.0)
ANCHOR_SIZE_PER_STRIDE = 4  # "4 times the stride size of the corresponding feature map"
FPN_CHANNELS = 256


def _num_levels(img_size: int) -> int:
    if img_size not in PASSD_IMAGE_SIZES:
        raise ValueError(f"PASSD img_size must be one of {PASSD_IMAGE_SIZES}, got {img_size}")
    return 5 if img_size == 768 else 4  # footnote 1: stride 128 only for the 768 input


def _stride2_size(size: int) -> int:
    return conv_output_size(size, 3, 2, 1)


def _normal_init_convs(module: nn.Module) -> None:
    # Section 6.1: "all new convolution layers are initialized using Gaussian weight with
    # sigma = 0.01 and bias b = 0".
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class VGG16PassdBackbone(nn.Module):
    """VGG-16 + SSD extras: ``forward(x) -> [conv4_3, fc7, conv8_2, conv9_2 (, conv10_2)]``.

    Channels ``(512, 1024, 512, 256 (, 256))`` at strides ``(8, 16, 32, 64 (, 128))``.
    """

    def __init__(self, num_levels: int = 4) -> None:
        super().__init__()
        self.vgg = VGG16SSD()
        # SSD's conv8 / conv9 (/ conv10 of SSD512): 1x1 reduce then 3x3 stride 2.
        self.extras = SsdExtraLayers(1024, SSD512_EXTRAS[: num_levels - 2])
        _normal_init_convs(self.extras)
        self.out_channels: tuple[int, ...] = (*self.vgg.out_channels, *self.extras.out_channels)
        self.strides: tuple[int, ...] = tuple(8 * 2**i for i in range(num_levels))

    def forward(self, x: Tensor) -> list[Tensor]:
        conv4_3, fc7 = self.vgg(x)
        return [conv4_3, fc7, *self.extras(fc7)]

    def feature_sizes(self, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        base = self.vgg.feature_sizes(image_hw)
        return [*base, *self.extras.feature_sizes(base[-1])]


def _extra_bottleneck(in_channels: int, out_channels: int = 512) -> Bottleneck:
    """ResNet's bottleneck at stride 2 with ``out_channels`` outputs (width = out / 4)."""
    downsample = nn.Sequential(conv1x1(in_channels, out_channels, 2), nn.BatchNorm2d(out_channels))
    return Bottleneck(in_channels, out_channels // Bottleneck.expansion, 2, downsample)


class ResNetPassdBackbone(nn.Module):
    """ResNet + ``res6`` (+ ``res7``): ``forward(x) -> [C3, C4, C5, res6 (, res7)]``.

    ``res6`` is a bottleneck residual block with stride 2 and 512 output channels
    (1x1 2048->128, 3x3 128->128 stride 2, 1x1 128->512, projection shortcut); the paper gives
    only "stride=2, channel=512", and 512 as the OUTPUT width matches its 47M total (a
    2048-wide block would add 7M).
    """

    def __init__(self, trunk: ResNet, num_levels: int = 4) -> None:
        super().__init__()
        self.resnet = trunk
        extras = []
        in_channels = trunk.out_channels[-1]
        for _ in range(num_levels - 3):
            extras.append(_extra_bottleneck(in_channels, 512))
            in_channels = 512
        self.extras = nn.ModuleList(extras)
        _normal_init_convs(self.extras)
        self.out_channels: tuple[int, ...] = (*trunk.out_channels[1:], *([512] * len(extras)))
        self.strides: tuple[int, ...] = tuple(8 * 2**i for i in range(num_levels))

    def forward(self, x: Tensor) -> list[Tensor]:
        _, c3, c4, c5 = self.resnet(x)
        outputs = [c3, c4, c5]
        for block in self.extras:
            outputs.append(block(outputs[-1]))
        return outputs

    def feature_sizes(self, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        # conv1 (7x7 s2 p3) and maxpool (3x3 s2 p1) both give ceil(size / 2), as does every
        # stride-2 3x3 pad-1 conv after them.
        h = conv_output_size(conv_output_size(image_hw[0], 7, 2, 3), 3, 2, 1)
        w = conv_output_size(conv_output_size(image_hw[1], 7, 2, 3), 3, 2, 1)
        sizes = []
        for _ in range(len(self.strides)):
            h, w = _stride2_size(h), _stride2_size(w)
            sizes.append((h, w))
        return sizes


class MobileNetPassdBackbone(nn.Module):
    """MobileNet v1 + extra depthwise-separable layer(s) (stride 2, 512 channels).

    ``forward(x) -> [C8 (256), C16 (512), C32 (1024), E64 (512) (, E128 (512))]``.
    """

    def __init__(self, num_levels: int = 4, width_mult: float = 1.0) -> None:
        super().__init__()
        self.mobilenet = MobileNetV1(width_mult)
        extra_channels = scaled_channels(512, width_mult)
        extras = []
        in_channels = self.mobilenet.out_channels[-1]
        for _ in range(num_levels - 3):
            extras.append(depthwise_separable(in_channels, extra_channels, 2))
            in_channels = extra_channels
        self.extras = nn.ModuleList(extras)
        _normal_init_convs(self.extras)
        self.out_channels: tuple[int, ...] = (*self.mobilenet.out_channels,
                                              *([extra_channels] * len(extras)))
        self.strides: tuple[int, ...] = tuple(8 * 2**i for i in range(num_levels))

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = self.mobilenet(x)
        for block in self.extras:
            outputs.append(block(outputs[-1]))
        return outputs

    def feature_sizes(self, image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        sizes = self.mobilenet.feature_sizes(image_hw)
        for _ in range(len(self.extras)):
            h, w = sizes[-1]
            sizes.append((_stride2_size(h), _stride2_size(w)))
        return sizes


PassdBackbone = VGG16PassdBackbone | ResNetPassdBackbone | MobileNetPassdBackbone


class PASSD(nn.Module):
    """Backbone -> PassdFPN -> P&A module (or the plain conv head of the ablation).

    ``forward(images (N, 3, H, W))`` returns, with ``T`` = number of default boxes:

    * P&A head: ``objectness_logits (N,T,2)``, ``propose_deltas (N,T,4)`` (after eq. 2, in
      ``box_coder_weights`` units, relative to the default boxes), ``cls_logits (N,T,K+1)``
      (background at index 0), ``box_deltas (N,T,4)`` relative to the adjusted boxes, and
      ``adjusted_priors_cxcywh (N,T,4)`` (pixels, detached).
    * plain head: ``cls_logits`` and ``box_deltas`` relative to the default boxes.

    ``forward_export`` returns the same tensors, without ``adjusted_priors_cxcywh``, in the
    order of ``export_output_names``; the attend stage's sampling points are computed from the
    propose outputs inside the graph.
    """

    # Both heads: the "passd" decoder falls back to SSD decoding when there are no
    # ``propose_deltas`` (the plain-head ablation), so the family is the meta-architecture's.
    head_family: ClassVar[str] = "passd"
    default_nms_mode: ClassVar[str] = "hard"

    def __init__(
        self,
        backbone: PassdBackbone,
        fpn: PassdFPN,
        head: ProposeAttendHead | PlainConvHead,
        anchor_scales: Sequence[float],
        config: dict,
        box_coder_weights: BoxWeights = PASSD_BOX_CODER_WEIGHTS,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.anchor_scales = tuple(float(s) for s in anchor_scales)
        if head.num_anchors != len(self.anchor_scales):
            raise ValueError(f"head predicts {head.num_anchors} boxes per cell but "
                             f"{len(self.anchor_scales)} anchor scales were given")
        self.strides: tuple[int, ...] = tuple(backbone.strides)
        self.box_coder_weights: BoxWeights = box_coder_weights
        self.config = config
        if isinstance(head, ProposeAttendHead):
            self.export_output_names: tuple[str, ...] = (
                "objectness_logits", "propose_deltas", "cls_logits", "box_deltas")
        else:
            self.export_output_names = ("cls_logits", "box_deltas")

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        pyramid = self.fpn(self.backbone(images))
        if isinstance(self.head, PlainConvHead):
            return self.head(pyramid)
        priors = [self.level_priors(p.shape[-2:], stride, p.device)
                  for p, stride in zip(pyramid, self.strides, strict=True)]
        return self.head(pyramid, priors, self.strides)

    def forward_export(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.forward(images)
        return tuple(outputs[name] for name in self.export_output_names)

    def level_priors(self, feature_hw: Sequence[int], stride: int,
                     device: torch.device | None = None) -> Tensor:
        """Default boxes of one level, ``(H, W, A, 4)`` cxcywh in pixels (float32).

        Same values and order as ``anchor_spec(...).generate()`` (tested).
        """
        h, w = int(feature_hw[0]), int(feature_hw[1])
        cx = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * stride
        cy = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * stride
        sizes = torch.tensor([ANCHOR_SIZE_PER_STRIDE * stride * s for s in self.anchor_scales],
                             dtype=torch.float32, device=device)
        a = len(self.anchor_scales)
        return torch.stack([
            cx.view(1, w, 1).expand(h, w, a),
            cy.view(h, 1, 1).expand(h, w, a),
            sizes.view(1, 1, a).expand(h, w, a),
            sizes.view(1, 1, a).expand(h, w, a),
        ], dim=-1)

    def anchor_spec(self, image_size: tuple[int, int]) -> GridAnchorSpec:
        """Default boxes for an input of ``image_size = (width, height)`` pixels."""
        width, height = image_size
        return GridAnchorSpec(
            image_size=(int(width), int(height)),
            feature_sizes=tuple(self.backbone.feature_sizes((height, width))),
            strides=self.strides,
            base_sizes=tuple(float(ANCHOR_SIZE_PER_STRIDE * s) for s in self.strides),
            scales=self.anchor_scales,
            aspect_ratios=(1.0,),
        )


def _build_passd(
    architecture: str,
    backbone: PassdBackbone,
    num_classes: int,
    img_size: int,
    use_pa: bool,
    use_attend: bool,
    clip_propose_offsets: bool,
    anchor_scales: Sequence[float],
    fpn_channels: int = FPN_CHANNELS,
    extra_kwargs: dict | None = None,
) -> PASSD:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (object classes, no background), "
                         f"got {num_classes}")
    fpn = PassdFPN(backbone.out_channels, fpn_channels)
    _normal_init_convs(fpn)
    num_anchors = len(anchor_scales)
    head: ProposeAttendHead | PlainConvHead
    if use_pa:
        head = ProposeAttendHead(fpn_channels, num_classes, num_anchors, PASSD_BOX_CODER_WEIGHTS,
                                 use_attend=use_attend,
                                 clip_propose_offsets=clip_propose_offsets)
    else:
        head = PlainConvHead(fpn_channels, num_classes, num_anchors)
    config = model_config(architecture, {
        "num_classes": num_classes,
        "img_size": img_size,
        "use_pa": use_pa,
        "use_attend": use_attend,
        "clip_propose_offsets": clip_propose_offsets,
        "anchor_scales": [float(s) for s in anchor_scales],
        **(extra_kwargs or {}),
    })
    return PASSD(backbone, fpn, head, anchor_scales, config)


def passd_vgg16(
    num_classes: int = 20,
    img_size: int = 320,
    use_pa: bool = True,
    use_attend: bool = True,
    clip_propose_offsets: bool = True,
    anchor_scales: Sequence[float] = PASSD_VOC_ANCHOR_SCALES,
) -> PASSD:
    """PASSD with VGG-16 (PASCAL VOC defaults; Table 1: 24.87M, plain head 24.82M).

    Args:
        num_classes: object classes K (the head predicts K+1 with background).
        img_size: 320, 512 or 768 (768 adds the stride-128 level).
        use_pa: False gives the plain SSD conv head of Table 1 exp. 1.
        use_attend: with ``use_pa``, False replaces the offset convs with plain 3x3 convs
            (Table 1 exp. 3).
        clip_propose_offsets: eq. 2 tanh clipping of the propose centre offsets.
        anchor_scales: multipliers of ``4 * stride``; ``PASSD_COCO_ANCHOR_SCALES`` for COCO.
    """
    return _build_passd("passd_vgg16", VGG16PassdBackbone(_num_levels(img_size)), num_classes,
                        img_size, use_pa, use_attend, clip_propose_offsets, anchor_scales)


def passd_resnet101(
    num_classes: int = 80,
    img_size: int = 320,
    use_pa: bool = True,
    use_attend: bool = True,
    clip_propose_offsets: bool = True,
    anchor_scales: Sequence[float] = PASSD_COCO_ANCHOR_SCALES,
) -> PASSD:
    """PASSD with ResNet-101 + res6 (COCO defaults; Table 5: 47M, 48M at 768). Args as
    ``passd_vgg16``."""
    backbone = ResNetPassdBackbone(resnet101(), _num_levels(img_size))
    return _build_passd("passd_resnet101", backbone, num_classes, img_size, use_pa,
                        use_attend, clip_propose_offsets, anchor_scales)


def passd_mobilenet(
    num_classes: int = 80,
    img_size: int = 320,
    use_pa: bool = True,
    use_attend: bool = True,
    clip_propose_offsets: bool = True,
    anchor_scales: Sequence[float] = PASSD_COCO_ANCHOR_SCALES,
    width_mult: float = 1.0,
    fpn_channels: int = FPN_CHANNELS,
) -> PASSD:
    """PASSD with MobileNet v1 + one extra depthwise-separable layer (COCO defaults;
    Table 6: 6.7M). Args as ``passd_vgg16``, plus two knobs for smaller edge models (the
    paper's configuration is ``width_mult=1.0, fpn_channels=256``):

    Args:
        width_mult: MobileNet's width multiplier alpha, applied to the backbone and its
            extra layer.
        fpn_channels: channels of every pyramid level and of the P&A head.
    """
    extra = {}
    if width_mult != 1.0 or fpn_channels != FPN_CHANNELS:
        extra = {"width_mult": float(width_mult), "fpn_channels": int(fpn_channels)}
    return _build_passd("passd_mobilenet",
                        MobileNetPassdBackbone(_num_levels(img_size), width_mult),
                        num_classes, img_size, use_pa, use_attend, clip_propose_offsets,
                        anchor_scales, fpn_channels, extra)


__all__ = [
    "PASSD",
    "PASSD_COCO_ANCHOR_SCALES",
    "PASSD_VOC_ANCHOR_SCALES",
    "MobileNetPassdBackbone",
    "ResNetPassdBackbone",
    "VGG16PassdBackbone",
    "passd_mobilenet",
    "passd_resnet101",
    "passd_vgg16",
]
