"""Channel-wise L2 normalisation with a learned per-channel scale (ParseNet, used by SSD).

SSD rescales VGG's ``conv4_3`` this way because its activations are an order of magnitude
larger than those of the later layers; the scale starts at 20 as in the SSD paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class L2Norm(nn.Module):
    """``y = scale[c] * x / ||x||_2`` with the norm taken over channels at every position.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``. The parameter is named ``weight`` as in
    ssd.pytorch, so its checkpoints load by name.
    """

    def __init__(self, channels: int, initial_scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(initial_scale)))

    def forward(self, x: Tensor) -> Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)
