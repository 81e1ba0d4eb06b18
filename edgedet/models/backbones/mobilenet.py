"""MobileNet v1 (Howard et al. 2017) without the classifier; width multiplier alpha (default 1).

Layer names follow the widely used PyTorch port in qfgaohao/pytorch-ssd (``model.0`` is the
stem ``conv3x3-BN-ReLU``; ``model.i`` for ``i >= 1`` is a depthwise-separable block
``[dw conv3x3, BN, ReLU, pw conv1x1, BN, ReLU]``, so e.g. ``model.13.3.weight`` is the last
pointwise conv), so its ImageNet weights (``mobilenet_v1_with_relu_69_5.pth``) load by name.
"""

from __future__ import annotations

from torch import Tensor, nn

from edgedet.models.backbones.vgg import conv_output_size

# (out_channels, stride) of the 13 depthwise-separable blocks after the stem.
_MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
# Indices in ``model`` of the last block at stride 8, 16 and 32.
STRIDE8_INDEX, STRIDE16_INDEX, STRIDE32_INDEX = 5, 11, 13


def conv_bn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Dense 3x3 conv (no bias), BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (carries the stride), BN, ReLU, pointwise 1x1, BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def scaled_channels(channels: int, width_mult: float) -> int:
    """MobileNet's width multiplier: ``channels * alpha`` rounded to a multiple of 8 (min 8)."""
    return max(8, int(channels * width_mult + 4) // 8 * 8)


class MobileNetV1(nn.Module):
    """``forward(x (N,3,H,W)) -> [C8 (N,256a,H/8,W/8), C16 (N,512a,/16), C32 (N,1024a,/32)]``.

    Each map is the output of the last block at that stride (blocks 5, 11 and 13); ``a`` is
    the width multiplier alpha of the MobileNet paper (1.0 = the standard network).

    Attributes:
        out_channels: ``(256, 512, 1024)`` at alpha 1.
        strides: ``(8, 16, 32)``.
    """

    strides: tuple[int, int, int] = (8, 16, 32)

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        stem = scaled_channels(32, width_mult)
        layers: list[nn.Module] = [conv_bn(3, stem, 2)]
        in_channels = stem
        for out_channels, stride in _MOBILENET_V1_BLOCKS:
            out_channels = scaled_channels(out_channels, width_mult)
            layers.append(depthwise_separable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.out_channels: tuple[int, int, int] = tuple(  # type: ignore[assignment]
            scaled_channels(_MOBILENET_V1_BLOCKS[i - 1][0], width_mult)
            for i in (STRIDE8_INDEX, STRIDE16_INDEX, STRIDE32_INDEX)
        )
        self.model = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        c8 = self.model[: STRIDE8_INDEX + 1](x)
        c16 = self.model[STRIDE8_INDEX + 1: STRIDE16_INDEX + 1](c8)
        c32 = self.model[STRIDE16_INDEX + 1: STRIDE32_INDEX + 1](c16)
        return [c8, c16, c32]

    @staticmethod
    def feature_sizes(image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """``(h, w)`` of the stride 8, 16 and 32 maps for an input of ``image_hw``."""
        sizes = []
        h, w = image_hw
        # Every stride-2 layer is a 3x3 conv with padding 1.
        for _ in range(3):
            h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)
        sizes.append((h, w))
        for _ in range(2):
            h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)
            sizes.append((h, w))
        return sizes
