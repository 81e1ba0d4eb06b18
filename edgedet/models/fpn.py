"""RetinaNet's feature pyramid (Lin et al., "Focal Loss for Dense Object Detection", sec. 4).

P3-P5 come from the backbone's C3-C5 by 1x1 lateral convs, a nearest-neighbour top-down
pathway and 3x3 output convs; P6 is a 3x3 stride-2 conv on C5 (not on P5: the RetinaNet paper
computes P6 from C5, and HAR-Net / DSANet build on that RetinaNet, mmdetection's
``add_extra_convs="on_input"``), and P7 is ReLU then a 3x3 stride-2 conv on P6.
All levels have ``out_channels`` channels (256 in every paper). PASSD's FPN lives in
``passd_fpn.py``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

RETINANET_STRIDES = (8, 16, 32, 64, 128)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Spatial size after a conv / pool with these settings (floor mode, like PyTorch)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def retinanet_feature_sizes(image_height: int, image_width: int) -> tuple[tuple[int, int], ...]:
    """``(height, width)`` of P3..P7 for a ResNet trunk + this FPN at the given input size.

    Follows the real layer arithmetic: conv1 (7x7/2, pad 3), max-pool (3x3/2, pad 1), then a
    3x3/2 pad-1 conv per stage (C3, C4, C5) and per extra level (P6, P7).
    """
    sizes = []
    h, w = image_height, image_width
    h, w = conv_output_size(h, 7, 2, 3), conv_output_size(w, 7, 2, 3)  # conv1
    h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)  # max-pool -> C2
    for _ in range(5):  # C3, C4, C5 (stage strides), P6, P7 (extra convs)
        h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)
        sizes.append((h, w))
    return tuple(sizes)


class RetinaFPN(nn.Module):
    """``forward([C3, C4, C5]) -> [P3, P4, P5, P6, P7]``, each ``(N, out_channels, H_l, W_l)``.

    Args:
        in_channels: channels of C3, C4, C5 (e.g. ``(512, 1024, 2048)`` for ResNet-50).
        out_channels: channels of every pyramid level.
    """

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.p6 = nn.Conv2d(in_channels[-1], out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # Detectron / torchvision FPN initialisation.
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``features``: ``[C3, C4, C5]`` -> ``[P3, P4, P5, P6, P7]``."""
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"RetinaFPN expects [C3, C4, C5], got {len(features)} maps")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=True)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            # Upsample to the lateral's exact size: odd input sizes do not halve evenly.
            top_down = F.interpolate(merged[0], size=lateral.shape[-2:], mode="nearest")
            merged.insert(0, lateral + top_down)
        outputs = [conv(m) for conv, m in zip(self.output_convs, merged, strict=True)]
        p6 = self.p6(features[-1])
        p7 = self.p7(F.relu(p6))
        return [*outputs, p6, p7]
