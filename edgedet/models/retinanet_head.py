"""RetinaNet's prediction head and anchors (Lin et al. 2017), shared by HAR-Net and DSANet.

The head is shared by all pyramid levels: a classification tower and a box tower of
``num_convs`` x (3x3 conv + ReLU), then a 3x3 conv to ``A * K`` sigmoid class logits (bias set
so every anchor starts at probability ``prior_prob``) and a 3x3 conv to ``A * 4`` box deltas.
DSANet-Conf adds a 3x3 conv to ``A`` object-confidence logits on the classification tower.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edgedet.anchors import GridAnchorSpec

# Three octave scales x three aspect ratios (w/h) per cell; base size 4 x stride (32..512).
RETINANET_ANCHOR_SCALES = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
RETINANET_ASPECT_RATIOS = (0.5, 1.0, 2.0)
RETINANET_ANCHORS_PER_CELL = len(RETINANET_ANCHOR_SCALES) * len(RETINANET_ASPECT_RATIOS)


def retinanet_anchor_spec(
    image_size: tuple[int, int],
    feature_sizes: tuple[tuple[int, int], ...],
    strides: tuple[int, ...] = (8, 16, 32, 64, 128),
) -> GridAnchorSpec:
    """RetinaNet anchors for an input of ``image_size = (width, height)``.

    ``feature_sizes`` are the ``(height, width)`` of P3..P7 (see
    ``fpn.retinanet_feature_sizes``).
    """
    return GridAnchorSpec(
        image_size=(int(image_size[0]), int(image_size[1])),
        feature_sizes=tuple((int(h), int(w)) for h, w in feature_sizes),
        strides=tuple(strides),
        base_sizes=tuple(4.0 * s for s in strides),
        scales=RETINANET_ANCHOR_SCALES,
        aspect_ratios=RETINANET_ASPECT_RATIOS,
    )


def flatten_anchor_maps(maps: list[Tensor], values_per_anchor: int) -> Tensor:
    """``[(N, A*k, H_l, W_l)]`` -> ``(N, sum_l H_l*W_l*A, k)`` in the anchors.py ordering."""
    flat = []
    for level_map in maps:
        n = level_map.shape[0]
        flat.append(level_map.permute(0, 2, 3, 1).reshape(n, -1, values_per_anchor))
    return torch.cat(flat, dim=1)


def prior_probability_bias(prior_prob: float) -> float:
    """Bias giving ``sigmoid(bias) == prior_prob``: rare positives do not swamp early training."""
    return -math.log((1.0 - prior_prob) / prior_prob)


def _conv_tower(in_channels: int, channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(num_convs):
        layers += [nn.Conv2d(in_channels if index == 0 else channels, channels, 3, padding=1),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Shared-across-levels RetinaNet head.

    ``forward(cls_features, box_features=None)`` takes the pyramid maps
    ``[(N, in_channels, H_l, W_l)]`` for the classification tower and (DSANet's decoupled
    attention gives different ones) for the box tower; ``box_features=None`` reuses
    ``cls_features``. Returns per-level raw maps: ``cls_logits`` ``(N, A*K, H_l, W_l)``,
    ``box_deltas`` ``(N, A*4, H_l, W_l)`` and with ``with_confidence`` ``conf_logits``
    ``(N, A, H_l, W_l)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int = RETINANET_ANCHORS_PER_CELL,
        feat_channels: int = 256,
        num_convs: int = 4,
        prior_prob: float = 0.01,
        with_confidence: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.with_confidence = with_confidence
        self.cls_tower = _conv_tower(in_channels, feat_channels, num_convs)
        self.box_tower = _conv_tower(in_channels, feat_channels, num_convs)
        self.cls_logits = nn.Conv2d(feat_channels, num_anchors * num_classes, 3, padding=1)
        self.box_deltas = nn.Conv2d(feat_channels, num_anchors * 4, 3, padding=1)
        # DSANet-Conf (authors' code) predicts the object confidence from the cls tower.
        self.conf_logits = (
            nn.Conv2d(feat_channels, num_anchors, 3, padding=1) if with_confidence else None
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, prior_probability_bias(prior_prob))

    def forward(
        self, cls_features: list[Tensor], box_features: list[Tensor] | None = None
    ) -> dict[str, list[Tensor]]:
        if box_features is None:
            box_features = cls_features
        outputs: dict[str, list[Tensor]] = {"cls_logits": [], "box_deltas": []}
        if self.conf_logits is not None:
            outputs["conf_logits"] = []
        for cls_in, box_in in zip(cls_features, box_features, strict=True):
            cls_feat = self.cls_tower(cls_in)
            outputs["cls_logits"].append(self.cls_logits(cls_feat))
            outputs["box_deltas"].append(self.box_deltas(self.box_tower(box_in)))
            if self.conf_logits is not None:
                outputs["conf_logits"].append(self.conf_logits(cls_feat))
        return outputs
