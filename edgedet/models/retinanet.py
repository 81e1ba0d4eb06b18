"""RetinaNet meta-architecture (ResNet + FPN P3-P7 + shared head), the base of HAR-Net and DSANet.

``RetinaNet`` composes built submodules, torchvision-style:

    images -> backbone -> [C3, C4, C5] -> (optional per-level "aligned attention", HAR-Net)
           -> FPN -> [P3..P7] -> (optional pyramid attention giving separate cls / box
              features, DSANet) -> head -> per-level maps -> flattened over anchors.

Builders ``retinanet_resnet18/50/101`` give the plain baseline the two papers compare against.
Image sizes are ``(width, height)`` like ``GridAnchorSpec.image_size``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from edgedet.anchors import GridAnchorSpec
from edgedet.models.backbones.resnet import ResNet, resnet18, resnet50, resnet101, se_resnet50
from edgedet.models.contract import model_config
from edgedet.models.fpn import RetinaFPN, retinanet_feature_sizes
from edgedet.models.retinanet_head import (
    RetinaNetHead,
    flatten_anchor_maps,
    retinanet_anchor_spec,
)

BACKBONE_BUILDERS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "se_resnet50": se_resnet50,
}
# Backbone levels the FPN reads, by name, in the order ResNet.forward returns them.
BACKBONE_LEVELS = ("c2", "c3", "c4", "c5")


def image_size_pair(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``img_size`` as ``(width, height)``; an int means a square input."""
    if isinstance(img_size, int):
        return (img_size, img_size)
    if len(img_size) != 2:
        raise ValueError(f"img_size must be an int or (width, height), got {img_size!r}")
    return (int(img_size[0]), int(img_size[1]))


class RetinaNet(nn.Module):
    """Single-stage detector with RetinaNet's structure and sigmoid class logits.

    Args:
        backbone: ResNet trunk returning ``[C2, C3, C4, C5]``.
        fpn: ``[C3, C4, C5] -> [P3..P7]``.
        head: ``head(cls_features, box_features) -> {name: [(N, A*k, H_l, W_l)]}`` with keys
            ``cls_logits`` (k = K), ``box_deltas`` (k = 4) and optionally ``conf_logits``
            (k = 1).
        config: the builder's ``model_config(architecture, kwargs)``.
        aligned_attention: optional modules applied to backbone maps before the FPN, keyed by
            level name ``"c3" / "c4" / "c5"``; each maps ``(N, C, H, W)`` to the same shape.
        pyramid_attention: optional ``[P3..P7] -> ([cls features], [box features])``.
    """

    # HAR-Net (a subclass) and DSANet (instances) share RetinaNet's sigmoid head and anchors,
    # so one decoder and one training recipe cover the three.
    head_family: ClassVar[str] = "retinanet"
    default_nms_mode: ClassVar[str] = "hard"
    # RetinaNet regresses (dx, dy, dw, dh) without variance scaling.
    box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    def __init__(
        self,
        backbone: ResNet,
        fpn: RetinaFPN,
        head: nn.Module,
        config: dict[str, Any],
        aligned_attention: nn.ModuleDict | None = None,
        pyramid_attention: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aligned_attention = aligned_attention
        self.fpn = fpn
        self.pyramid_attention = pyramid_attention
        self.head = head
        self.config = config
        names = ["cls_logits", "box_deltas"]
        if getattr(head, "with_confidence", False):
            names.append("conf_logits")
        self.export_output_names: tuple[str, ...] = tuple(names)
        self._values_per_anchor = {
            "cls_logits": head.num_classes, "box_deltas": 4, "conf_logits": 1,
        }

    def _head_maps(self, images: Tensor) -> dict[str, list[Tensor]]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        features = dict(zip(BACKBONE_LEVELS, self.backbone(images), strict=True))
        if self.aligned_attention is not None:
            for level, module in self.aligned_attention.items():
                features[level] = module(features[level])
        pyramid = self.fpn([features["c3"], features["c4"], features["c5"]])
        if self.pyramid_attention is not None:
            cls_features, box_features = self.pyramid_attention(pyramid)
        else:
            cls_features, box_features = pyramid, pyramid
        return self.head(cls_features, box_features)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Training forward: ``images (N, 3, H, W)`` -> ``cls_logits (N, A, K)``,
        ``box_deltas (N, A, 4)`` [, ``conf_logits (N, A, 1)``], anchors ordered as in
        ``anchor_spec((W, H)).generate()``."""
        maps = self._head_maps(images)
        return {
            name: flatten_anchor_maps(maps[name], self._values_per_anchor[name])
            for name in self.export_output_names
        }

    def forward_export(self, images: Tensor) -> tuple[Tensor, ...]:
        """The raw head tensors in ``export_output_names`` order (no decoding, no NMS)."""
        outputs = self.forward(images)
        return tuple(outputs[name] for name in self.export_output_names)

    def anchor_spec(self, image_size: tuple[int, int]) -> GridAnchorSpec:
        """Anchors for an input of ``image_size = (width, height)`` pixels."""
        width, height = image_size_pair(image_size)
        return retinanet_anchor_spec((width, height), retinanet_feature_sizes(height, width))


def _retinanet(
    architecture: str, backbone_name: str, num_classes: int, img_size: int | tuple[int, int]
) -> RetinaNet:
    backbone = BACKBONE_BUILDERS[backbone_name]()
    fpn = RetinaFPN(backbone.out_channels[1:], 256)
    head = RetinaNetHead(256, num_classes)
    config = model_config(
        architecture, {"num_classes": num_classes, "img_size": image_size_pair(img_size)}
    )
    return RetinaNet(backbone, fpn, head, config)


def retinanet_resnet18(num_classes: int = 80, img_size: int | tuple[int, int] = (1000, 600)
                       ) -> RetinaNet:
    """RetinaNet with a ResNet-18 trunk (small baseline)."""
    return _retinanet("retinanet_resnet18", "resnet18", num_classes, img_size)


def retinanet_resnet50(num_classes: int = 80, img_size: int | tuple[int, int] = (1000, 600)
                       ) -> RetinaNet:
    """RetinaNet-ResNet-50-FPN, the baseline of HAR-Net (Tables I-IV) and DSANet (Table 7)."""
    return _retinanet("retinanet_resnet50", "resnet50", num_classes, img_size)


def retinanet_resnet101(num_classes: int = 80, img_size: int | tuple[int, int] = (1000, 600)
                        ) -> RetinaNet:
    """RetinaNet-ResNet-101-FPN."""
    return _retinanet("retinanet_resnet101", "resnet101", num_classes, img_size)
