"""The feature pyramid of PASSD (Jang et al., section 4).

Lin et al.'s FPN built on the SSD source layers: a 1x1 lateral conv brings every selected
backbone map to 256 channels, the top-down pathway starts at the TOP EXTRA layer (footnote 2:
"from the top extra layer added to the base networks, not from the top layer of base
networks") and adds the nearest-upsampled coarser level to each lateral, and a 3x3 conv is
appended to each MERGED map. Following Lin et al. literally ("we append a 3x3 convolution on
each merged map"), the top level, which receives nothing from above, gets no 3x3 conv.

That last reading is what the paper's parameter counts require: with a 3x3 conv on every
level, PASSD-320 VGG-16 (plain conv head) would have 25.41M parameters against the 24.82M of
Table 1 and PASSD-320 MobileNet 7.32M against 6.7M (Table 6); without the top one they are
24.82M and 6.73M. No ReLU anywhere, as in FPN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class PassdFPN(nn.Module):
    """``forward([C_1 .. C_L] fine to coarse) -> [P_1 .. P_L]``, each ``(N, 256, h_l, w_l)``.

    Parameter names: ``lateral_convs.l`` (1x1, ``in_channels[l] -> 256``) and
    ``output_convs.l`` (3x3, one per level except the top one).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"PassdFPN needs at least 2 levels, got {len(in_channels)}")
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1)
            for _ in range(len(in_channels) - 1)
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.lateral_convs):
            raise ValueError(
                f"PassdFPN built for {len(self.lateral_convs)} levels got {len(features)}"
            )
        top_down = self.lateral_convs[-1](features[-1])
        pyramid = [top_down]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral_convs[level](features[level])
            # size= rather than scale_factor: SSD-style maps are not exact halves (38 -> 19).
            top_down = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            pyramid.insert(0, self.output_convs[level](top_down))
        return pyramid
