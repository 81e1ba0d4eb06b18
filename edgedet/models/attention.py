"""Attention layers of HAR-Net (Li & Wang 2019) and DSANet (Wu et al.).

HAR-Net (paper section III):
    ``AlignedAttention``  1x1 reduce -> 3x3 deformable conv -> 1x1 expand, residual (Fig. 4).
    ``CrossLevelGroupNorm``  group norm whose statistics span all pyramid levels, followed by
        a per-channel feature scaling shared by the levels (CLGN, Fig. 3).
    ``SpatialAttention``  stacked dilated 3x3 convs (1-2-5-2-1, C=16) -> 1-channel sigmoid mask.
    ``CrossLevelSE``  squeeze-excitation over the concatenated global-max-pooled vectors of
        all levels, one channel weighting shared by the levels (CLSE).
DSANet (paper section 3.1):
    ``SelfAttention2d``  ``x + gamma * softmax(Q K^T / sqrt(d)) V`` over the H*W positions.
    ``DecoupledSelfAttention``  separate cls / loc self-attention on P4-P7 (or one shared).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.models.deform_conv import DeformConv2d


class AlignedAttention(nn.Module):
    """HAR-Net's aligned attention on a backbone map: ``(N, C, H, W) -> (N, C, H, W)``.

    ``out = relu(x + expand(relu(deform(relu(reduce(x)), offsets))))`` with the 18 offsets of
    the 3x3 deformable conv predicted by a 3x3 conv over the reduced map (zero-initialised, so
    training starts from a plain conv, as in Deformable ConvNets). The paper's Fig. 4 reduces
    ``d -> d/k`` without stating k (the figure is lost); k = 4 follows the ResNet bottleneck
    the module mimics ("another 1x1 convolution layer is added to equalize the dimension for
    residual unit"). No normalisation: the module sits between a trunk and the FPN, neither of
    which normalises its new layers in RetinaNet.
    """

    def __init__(self, channels: int, reduction: int = 4, use_torchvision: bool = False) -> None:
        super().__init__()
        hidden = channels // reduction
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.offset = nn.Conv2d(hidden, 2 * 3 * 3, 3, padding=1)
        self.deform = DeformConv2d(hidden, hidden, 3, padding=1, use_torchvision=use_torchvision)
        self.expand = nn.Conv2d(hidden, channels, 1)
        for conv in (self.reduce, self.expand):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        # Small expand weights: the residual unit starts close to the identity, so a
        # pretrained trunk's C4/C5 reach the FPN nearly unchanged at the start of training.
        nn.init.normal_(self.expand.weight, std=0.01)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        reduced = F.relu(self.reduce(x))
        aligned = F.relu(self.deform(reduced, self.offset(reduced)))
        return F.relu(x + self.expand(aligned))


class CrossLevelGroupNorm(nn.Module):
    """CLGN: group normalisation with statistics over all pyramid levels jointly.

    For sample n and channel group g the mean and variance are taken over the group's channels
    and every position of every level, so the levels (processed by shared convs) are normalised
    relative to each other instead of each to unit variance. The per-channel affine ``weight``
    and ``bias`` are the paper's "feature scaling", shared by all levels.

    ``forward([(N, C, H_l, W_l)]) -> [(N, C, H_l, W_l)]``.
    """

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"{num_channels} channels cannot form {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        n, c = levels[0].shape[:2]
        lengths = [level.shape[2] * level.shape[3] for level in levels]
        # Concatenating the flattened levels turns CLGN into one ordinary group norm over
        # (N, C, sum_l H_l*W_l), which every runtime has.
        joined = torch.cat([level.reshape(n, c, -1) for level in levels], dim=2)
        normalised = F.group_norm(joined, self.num_groups, self.weight, self.bias, self.eps)
        return [
            part.reshape(level.shape)
            for part, level in zip(normalised.split(lengths, dim=2), levels, strict=True)
        ]


class SpatialAttention(nn.Module):
    """HAR-Net spatial attention: ``(N, C_in, H, W) -> mask (N, 1, H, W)`` in (0, 1).

    Stacked 3x3 convs with dilations ``dilations`` (paper: 1-2-5-2-1, rising to gather context
    then falling to avoid gridding artefacts), ``channels`` (C = 16) wide with ReLU, the last
    one giving one channel, then a sigmoid.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 16,
        dilations: tuple[int, ...] = (1, 2, 5, 2, 1),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, dilation in enumerate(dilations):
            last = index == len(dilations) - 1
            layers.append(
                nn.Conv2d(in_channels if index == 0 else channels, 1 if last else channels, 3,
                          padding=dilation, dilation=dilation)
            )
            if not last:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init for the hidden convs, zeros for the last: the mask starts as 0.5
        everywhere, and the branch can learn.

        The paper gives no init. RetinaNet's N(0, 0.01) for every conv, as this module had
        until 2026-12-07, keeps about a tenth of the signal per 16-channel conv: at init the
        mask varied by 5e-6 and its convs' gradients were about 1e-5, and the four HAR-Nets
        in ``checkpoints/`` trained with it ended with the branch inert (masks within
        0.48-0.54; in ``harnet_pruned_distilled`` the fourth conv dead, the mask a constant
        0.501; ``docs/harnet_spatial_attention.md``). A zero last conv gives the same
        constant start with gradients of He-scale activations; ``harnet_pruned_spatial``,
        trained with it, learned a mask (mean 0.99, range 0.48-1.00).
        """
        convs = [module for module in self.layers if isinstance(module, nn.Conv2d)]
        for conv in convs[:-1]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(convs[-1].weight)
        nn.init.zeros_(convs[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.layers(x))


class CrossLevelSE(nn.Module):
    """CLSE: one channel weighting from the global-max-pooled vectors of all levels.

    ``v = concat_l maxpool(F_l)`` (N, L*C) -> FC (L*C -> L*C/r) -> ReLU -> FC (-> C) -> sigmoid
    gives ``A(c)``, multiplied into every level (eq. 2: the attention is indexed by channel
    only, i.e. shared by the pyramid levels). r = 16 as in SE-Nets, applied to the
    concatenated vector's length.

    ``forward([(N, C, H_l, W_l)] * L) -> [(N, C, H_l, W_l)] * L``.
    """

    def __init__(self, channels: int, num_levels: int, reduction: int = 16) -> None:
        super().__init__()
        self.num_levels = num_levels
        concatenated = channels * num_levels
        self.fc1 = nn.Linear(concatenated, max(concatenated // reduction, 1))
        self.fc2 = nn.Linear(max(concatenated // reduction, 1), channels)

    def channel_weights(self, levels: list[Tensor]) -> Tensor:
        """``(N, C)`` attention weights in (0, 1)."""
        if len(levels) != self.num_levels:
            raise ValueError(f"CrossLevelSE was built for {self.num_levels} levels, "
                             f"got {len(levels)}")
        pooled = torch.cat([level.amax(dim=(2, 3)) for level in levels], dim=1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        weights = self.channel_weights(levels)[:, :, None, None]
        return [level * weights for level in levels]


class SelfAttention2d(nn.Module):
    """DSANet's self-attention over the H*W positions of one map: ``(N, C, H, W) -> same``.

    ``out = x + gamma * V softmax(Q^T K / sqrt(C))^T`` with Q, K = 1x1 convs to ``C / 8``
    channels, V = 1x1 conv to C channels, ``gamma`` a learned scalar initialised to 0 (paper
    eq. 2 and sec. 3.2). The paper states neither the Q/K width nor d of eq. (5); the authors'
    released code uses ``C // 8`` (as DANet) and divides by ``sqrt(C)``, which is followed here.
    """

    def __init__(self, channels: int, qk_reduction: int = 8) -> None:
        super().__init__()
        qk_channels = max(channels // qk_reduction, 1)
        self.query = nn.Conv2d(channels, qk_channels, 1)
        self.key = nn.Conv2d(channels, qk_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.scale = 1.0 / math.sqrt(channels)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        query = self.query(x).reshape(n, -1, h * w).transpose(1, 2)  # (N, HW, C/8)
        key = self.key(x).reshape(n, -1, h * w)  # (N, C/8, HW)
        attention = torch.softmax(torch.bmm(query, key) * self.scale, dim=-1)  # (N, HW, HW)
        value = self.value(x).reshape(n, c, h * w)  # (N, C, HW)
        attended = torch.bmm(value, attention.transpose(1, 2)).reshape(n, c, h, w)
        return x + self.gamma * attended


class DecoupledSelfAttention(nn.Module):
    """DSA between the FPN and the head: ``[P3..P7] -> ([cls features], [box features])``.

    Levels in ``attention_levels`` (indices into the pyramid; DSANet uses P4-P7 = 1..4, P3 runs
    out of memory in the paper) get their own self-attention per task (``shared=False``) or
    one self-attention feeding both tasks (``shared=True``, Table 2's "DSANet(share)"); other
    levels pass through unchanged. Modules are per level, as in the authors' code.
    """

    def __init__(
        self,
        channels: int,
        attention_levels: tuple[int, ...] = (1, 2, 3, 4),
        shared: bool = False,
        qk_reduction: int = 8,
    ) -> None:
        super().__init__()
        self.attention_levels = tuple(attention_levels)
        self.shared = shared
        self.cls_attention = nn.ModuleDict(
            {str(i): SelfAttention2d(channels, qk_reduction) for i in self.attention_levels}
        )
        self.box_attention = None if shared else nn.ModuleDict(
            {str(i): SelfAttention2d(channels, qk_reduction) for i in self.attention_levels}
        )

    def forward(self, pyramid: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        cls_features, box_features = [], []
        for index, level in enumerate(pyramid):
            key = str(index)
            if key not in self.cls_attention:
                cls_features.append(level)
                box_features.append(level)
                continue
            cls_out = self.cls_attention[key](level)
            cls_features.append(cls_out)
            box_features.append(cls_out if self.box_attention is None
                                else self.box_attention[key](level))
        return cls_features, box_features
