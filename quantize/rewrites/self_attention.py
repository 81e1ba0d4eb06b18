"""Export rewrite of DSANet's ``SelfAttention2d``: one fused QKV conv, MatMul, Softmax.

The training module already uses static-shape ops (1x1 convs, ``bmm``, ``softmax``); the rewrite
removes what costs at inference: the three 1x1 convs become one (one read of the input), the
``1/sqrt(C)`` scale is folded into the query weights and ``gamma`` into the value weights, so
the graph is ``Conv -> Split -> MatMul -> Softmax -> MatMul -> Add`` with every shape fixed by
the input size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgedet.models.attention import SelfAttention2d


class ExportSelfAttention2d(nn.Module):
    """Drop-in replacement of ``SelfAttention2d``: ``(N, C, H, W) -> (N, C, H, W)``.

    ``out = x + (gamma V) softmax((Q / sqrt(C))^T K)^T`` over the ``H*W`` positions.
    """

    def __init__(self, attention: SelfAttention2d) -> None:
        super().__init__()
        query, key, value = attention.query, attention.key, attention.value
        self.qk_channels = query.out_channels
        self.channels = value.out_channels
        gamma = attention.gamma.detach()
        scale = attention.scale
        self.qkv = nn.Conv2d(query.in_channels, 2 * self.qk_channels + self.channels, 1)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([query.weight * scale, key.weight,
                                             value.weight * gamma]))
            self.qkv.bias.copy_(torch.cat([query.bias * scale, key.bias, value.bias * gamma]))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(x).reshape(n, 2 * self.qk_channels + self.channels, h * w)
        query, key, value = qkv.split([self.qk_channels, self.qk_channels, self.channels], dim=1)
        attention = torch.softmax(torch.matmul(query.transpose(1, 2), key), dim=-1)  # (N,HW,HW)
        attended = torch.matmul(value, attention.transpose(1, 2))  # (N, C, HW)
        return x + attended.reshape(n, c, h, w)
