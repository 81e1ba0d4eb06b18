"""HAR-Net: hybrid-attention RetinaNet (Li & Wang, 2019; paper 000 in the seeds).

Structure (paper sec. III-D and IV-B):

    C4, C5 --aligned attention--> C4', C5'; FPN on (C3, C4', C5') -> P3..P7 (256 ch), then a
    head shared by the levels:
      cls / box branch: 4 x (3x3 conv -> CLGN + feature scaling -> ReLU)      (channel att.)
      spatial branch on P_l: dilated convs 1-2-5-2-1 (C=16) -> sigmoid mask, multiplied into
                             both branches                                    (spatial att.)
      per branch: extra 3x3 conv + ReLU -> CLSE channel weighting              (channel att.)
      -> 3x3 conv to A*K class logits / A*4 box deltas (RetinaNet's predictors).

Every attention is a builder switch; with all off the model is RetinaNet. Incremental training
(train the main network, then switch on spatial and channel attention, sec. IV-B) uses
``HarNet.set_attention_enabled`` and ``HarNet.attention_parameters``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from torch import Tensor, nn

from edgedet.models.attention import (
    AlignedAttention,
    CrossLevelGroupNorm,
    CrossLevelSE,
    SpatialAttention,
)
from edgedet.models.contract import model_config
from edgedet.models.fpn import RetinaFPN
from edgedet.models.retinanet import BACKBONE_BUILDERS, RetinaNet, image_size_pair
from edgedet.models.retinanet_head import RETINANET_ANCHORS_PER_CELL, prior_probability_bias

NUM_PYRAMID_LEVELS = 5  # P3..P7


class HarNetHead(nn.Module):
    """HAR-Net head over the pyramid ``[(N, in_channels, H_l, W_l)] * 5``.

    ``forward(cls_features, box_features=None)`` returns per-level ``cls_logits``
    ``(N, A*K, H_l, W_l)`` and ``box_deltas`` ``(N, A*4, H_l, W_l)``. The spatial attention
    reads ``cls_features`` (both are the same pyramid in HAR-Net).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int = RETINANET_ANCHORS_PER_CELL,
        feat_channels: int = 256,
        num_convs: int = 4,
        num_levels: int = NUM_PYRAMID_LEVELS,
        use_clgn: bool = True,
        clgn_groups: int = 32,
        use_spatial_attention: bool = True,
        spatial_channels: int = 16,
        spatial_dilations: tuple[int, ...] = (1, 2, 5, 2, 1),
        use_extra_conv: bool = True,
        use_channel_attention: bool = True,
        se_reduction: int = 16,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.with_confidence = False
        self.branches = nn.ModuleDict()
        for task in ("cls", "box"):
            branch = nn.Module()
            branch.convs = nn.ModuleList(
                nn.Conv2d(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1)
                for i in range(num_convs)
            )
            branch.norms = nn.ModuleList(
                CrossLevelGroupNorm(feat_channels, clgn_groups) for _ in range(num_convs)
            ) if use_clgn else None
            branch.extra_conv = (
                nn.Conv2d(feat_channels, feat_channels, 3, padding=1) if use_extra_conv else None
            )
            branch.channel_attention = (
                CrossLevelSE(feat_channels, num_levels, se_reduction)
                if use_channel_attention else None
            )
            self.branches[task] = branch
        self.spatial_attention = (
            SpatialAttention(in_channels, spatial_channels, spatial_dilations)
            if use_spatial_attention else None
        )
        self.cls_logits = nn.Conv2d(feat_channels, num_anchors * num_classes, 3, padding=1)
        self.box_deltas = nn.Conv2d(feat_channels, num_anchors * 4, 3, padding=1)
        for task in ("cls", "box"):
            for module in self.branches[task].modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.normal_(module.weight, std=0.01)
                    nn.init.zeros_(module.bias)
        for predictor in (self.cls_logits, self.box_deltas):
            nn.init.normal_(predictor.weight, std=0.01)
            nn.init.zeros_(predictor.bias)
        nn.init.constant_(self.cls_logits.bias, prior_probability_bias(prior_prob))
        # Runtime switches for incremental training; only built modules can be enabled.
        self.spatial_attention_enabled = use_spatial_attention
        self.channel_attention_enabled = use_channel_attention

    def set_attention_enabled(self, spatial: bool | None = None, channel: bool | None = None
                              ) -> None:
        """Bypass (False) or apply (True) the spatial mask / CLSE weighting; None = unchanged."""
        if spatial is not None:
            if spatial and self.spatial_attention is None:
                raise ValueError("this head was built with use_spatial_attention=False")
            self.spatial_attention_enabled = spatial
        if channel is not None:
            if channel and self.branches["cls"].channel_attention is None:
                raise ValueError("this head was built with use_channel_attention=False")
            self.channel_attention_enabled = channel

    def attention_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the switchable attention (spatial branch and both CLSE blocks)."""
        modules = [self.spatial_attention] + [
            self.branches[t].channel_attention for t in ("cls", "box")
        ]
        for module in modules:
            if module is not None:
                yield from module.parameters()

    def _branch(self, branch: nn.Module, levels: list[Tensor], masks: list[Tensor] | None
                ) -> list[Tensor]:
        for index, conv in enumerate(branch.convs):
            levels = [conv(level) for level in levels]
            if branch.norms is not None:
                levels = branch.norms[index](levels)
            levels = [level.relu() for level in levels]
        if masks is not None:
            levels = [level * mask for level, mask in zip(levels, masks, strict=True)]
        if branch.extra_conv is not None:
            levels = [branch.extra_conv(level).relu() for level in levels]
        if self.channel_attention_enabled and branch.channel_attention is not None:
            levels = branch.channel_attention(levels)
        return levels

    def forward(self, cls_features: list[Tensor], box_features: list[Tensor] | None = None
                ) -> dict[str, list[Tensor]]:
        if box_features is None:
            box_features = cls_features
        masks = None
        if self.spatial_attention_enabled and self.spatial_attention is not None:
            # Task-sharing spatial attention: one mask per level for both branches.
            masks = [self.spatial_attention(level) for level in cls_features]
        cls_levels = self._branch(self.branches["cls"], list(cls_features), masks)
        box_levels = self._branch(self.branches["box"], list(box_features), masks)
        return {
            "cls_logits": [self.cls_logits(level) for level in cls_levels],
            "box_deltas": [self.box_deltas(level) for level in box_levels],
        }


class HarNet(RetinaNet):
    """RetinaNet with HAR-Net's aligned attention and ``HarNetHead`` (see module docstring)."""

    head: HarNetHead
    # Sec. III-E: Soft-NMS, then box voting over the candidates it suppressed.
    default_nms_mode: ClassVar[str] = "soft+voting"

    def set_attention_enabled(self, spatial: bool | None = None, channel: bool | None = None
                              ) -> None:
        """Switch the head's spatial / channel (CLSE) attention on or off at run time.

        Incremental training: build with the attention, call
        ``set_attention_enabled(spatial=False, channel=False)`` to train the main network, then
        ``set_attention_enabled(spatial=True, channel=True)`` and keep training. Bypassed
        modules get no gradient. The switch state is not part of the config or state dict:
        a checkpoint is meant to be used with the attention on (the default).
        """
        self.head.set_attention_enabled(spatial=spatial, channel=channel)

    def attention_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the switchable head attention (e.g. to freeze them, or own an LR)."""
        return self.head.attention_parameters()


def _harnet(
    architecture: str,
    backbone_name: str,
    kwargs: dict[str, Any],
    fpn_channels: int = 256,
    head_convs: int = 4,
    clgn_groups: int = 32,
) -> HarNet:
    """Assemble a HAR-Net; ``kwargs`` are the public builder's arguments (kept in config)."""
    backbone = BACKBONE_BUILDERS[backbone_name]()
    aligned = None
    if kwargs["use_aligned_attention"]:
        c4_channels, c5_channels = backbone.out_channels[2], backbone.out_channels[3]
        aligned = nn.ModuleDict({
            "c4": AlignedAttention(c4_channels, use_torchvision=kwargs["use_torchvision_deform"]),
            "c5": AlignedAttention(c5_channels, use_torchvision=kwargs["use_torchvision_deform"]),
        })
    fpn = RetinaFPN(backbone.out_channels[1:], fpn_channels)
    head = HarNetHead(
        fpn_channels,
        kwargs["num_classes"],
        feat_channels=fpn_channels,
        num_convs=head_convs,
        use_clgn=kwargs["use_clgn"],
        clgn_groups=clgn_groups,
        use_spatial_attention=kwargs["use_spatial_attention"],
        use_extra_conv=kwargs["use_extra_conv"],
        use_channel_attention=kwargs["use_channel_attention"],
    )
    kwargs = {**kwargs, "img_size": image_size_pair(kwargs["img_size"])}
    config = model_config(architecture, kwargs)
    return HarNet(backbone, fpn, head, config, aligned_attention=aligned)


def harnet_resnet50(
    num_classes: int = 80,
    img_size: int | tuple[int, int] = (1000, 600),
    use_aligned_attention: bool = True,
    use_clgn: bool = True,
    use_spatial_attention: bool = True,
    use_extra_conv: bool = True,
    use_channel_attention: bool = True,
    use_torchvision_deform: bool = False,
) -> HarNet:
    """HAR-Net with ResNet-50 (Tables I-IV; 600x1000 inputs in Tables I-III).

    ``use_clgn`` + ``use_channel_attention`` together are the paper's "CLSEGN-CA";
    ``use_extra_conv`` is the 3x3 conv + ReLU between spatial and CLSE attention.
    ``use_torchvision_deform`` only selects the faster deformable-conv kernel.
    """
    return _harnet("harnet_resnet50", "resnet50", dict(
        num_classes=num_classes, img_size=img_size, use_aligned_attention=use_aligned_attention,
        use_clgn=use_clgn, use_spatial_attention=use_spatial_attention,
        use_extra_conv=use_extra_conv, use_channel_attention=use_channel_attention,
        use_torchvision_deform=use_torchvision_deform,
    ))


def harnet_resnet101(
    num_classes: int = 80,
    img_size: int | tuple[int, int] = (1000, 600),
    use_aligned_attention: bool = True,
    use_clgn: bool = True,
    use_spatial_attention: bool = True,
    use_extra_conv: bool = True,
    use_channel_attention: bool = True,
    use_torchvision_deform: bool = False,
) -> HarNet:
    """HAR-Net with ResNet-101 (Tables IV, V). Switches as in ``harnet_resnet50``."""
    return _harnet("harnet_resnet101", "resnet101", dict(
        num_classes=num_classes, img_size=img_size, use_aligned_attention=use_aligned_attention,
        use_clgn=use_clgn, use_spatial_attention=use_spatial_attention,
        use_extra_conv=use_extra_conv, use_channel_attention=use_channel_attention,
        use_torchvision_deform=use_torchvision_deform,
    ))


def harnet_se_resnet50(
    num_classes: int = 80,
    img_size: int | tuple[int, int] = (1000, 600),
    use_aligned_attention: bool = True,
    use_clgn: bool = True,
    use_spatial_attention: bool = True,
    use_extra_conv: bool = True,
    use_channel_attention: bool = True,
    use_torchvision_deform: bool = False,
) -> HarNet:
    """HAR-Net with SE-ResNet-50 (Table IV). Switches as in ``harnet_resnet50``."""
    return _harnet("harnet_se_resnet50", "se_resnet50", dict(
        num_classes=num_classes, img_size=img_size, use_aligned_attention=use_aligned_attention,
        use_clgn=use_clgn, use_spatial_attention=use_spatial_attention,
        use_extra_conv=use_extra_conv, use_channel_attention=use_channel_attention,
        use_torchvision_deform=use_torchvision_deform,
    ))


def harnet_resnet18_small(
    num_classes: int = 80,
    img_size: int | tuple[int, int] = (640, 384),
    use_aligned_attention: bool = True,
    use_clgn: bool = True,
    use_spatial_attention: bool = True,
    use_extra_conv: bool = True,
    use_channel_attention: bool = True,
    use_torchvision_deform: bool = False,
) -> HarNet:
    """Edge configuration (not in the paper): ResNet-18, 128-channel FPN/head, 2 head convs.

    The paper's head (5 levels x 2 branches x 5 convs at 256 channels, ~20 GFLOPs at
    600x1000) costs more than a ResNet-18 trunk, so the trunk, the widths and the depth are
    cut together: 128 channels keep 16 CLGN groups of 8 channels (GN's smallest sensible
    group) and are a multiple of 8/16 for INT8 kernels and channel pruning; 2 convs + the extra
    conv still give each branch three 3x3 layers before CLSE. All attention modules are kept
    (they are cheap: C=16 spatial branch, CLSE on pooled vectors, aligned attention on the
    small C4/C5 maps), so the same ablation switches and export rewrites apply.
    """
    return _harnet("harnet_resnet18_small", "resnet18", dict(
        num_classes=num_classes, img_size=img_size, use_aligned_attention=use_aligned_attention,
        use_clgn=use_clgn, use_spatial_attention=use_spatial_attention,
        use_extra_conv=use_extra_conv, use_channel_attention=use_channel_attention,
        use_torchvision_deform=use_torchvision_deform,
    ), fpn_channels=128, head_convs=2, clgn_groups=16)
