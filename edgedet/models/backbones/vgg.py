"""VGG-16 truncated for SSD, and SSD's extra layers.

The trunk is ssd.pytorch's ``vgg(base['300'], 3)``: conv1_1 .. conv5_3 with ReLUs and max
pools (pool3 with ``ceil_mode`` so a 300 input gives the 38x38 conv4_3 map), pool5 as a
3x3 / stride 1 / pad 1 pool, fc6 as a 3x3 conv with 1024 channels and dilation 6, and fc7 as a
1x1 conv with 1024 channels. Layers keep their ssd.pytorch / torchvision indices inside
``features`` (``features.0`` = conv1_1, ``features.21`` = conv4_3, ``features.28`` = conv5_3,
``features.31`` = fc6, ``features.33`` = fc7), so both torchvision's ``vgg16`` state dict
(``features.N.*``, conv layers only) and ssd.pytorch's ``vgg16_reducedfc.pth`` (``N.*``, with
prefix map ``{"": "features."}``) load by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from edgedet.models.l2norm import L2Norm

# (out_channels per conv) of each VGG-16 stage; an "M" max pool follows stages 1-4.
_VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                     dilation: int = 1, ceil_mode: bool = False) -> int:
    """Output length of a conv / pool along one axis (PyTorch's formula)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # PyTorch drops a last window that would start in the right padding
    return out


class VGG16SSD(nn.Module):
    """SSD's VGG-16: ``forward(x (N,3,H,W)) -> [conv4_3 (N,512,H/8,W/8), fc7 (N,1024,H/16,W/16)]``.

    ``conv4_3`` is returned after ReLU and the L2Norm (scale 20) of SSD; ``fc7`` after ReLU.
    Exact sizes come from ``feature_sizes``.

    Attributes:
        out_channels: ``(512, 1024)`` divided by ``width_divisor``.
        conv4_3_end: index in ``features`` just past conv4_3's ReLU (23 without BN).
        strides: ``(8, 16)``.
    """

    strides: tuple[int, int] = (8, 16)

    def __init__(self, width_divisor: int = 1, batch_norm: bool = False) -> None:
        """``width_divisor`` divides every channel count (1 = the paper's VGG-16);
        ``batch_norm`` puts a BN after every conv, which training from scratch needs
        (ScratchDet, Zhu et al. 2019) but which moves the ``features`` indices, so such a
        trunk no longer loads the ImageNet state dicts named above."""
        super().__init__()
        if width_divisor < 1 or 64 % width_divisor:
            raise ValueError(f"width_divisor must divide 64, got {width_divisor}")
        layers: list[nn.Module] = []
        in_channels = 3

        def conv(out_channels: int, kernel: int, padding: int = 0, dilation: int = 1) -> None:
            nonlocal in_channels
            layers.append(nn.Conv2d(in_channels, out_channels, kernel, padding=padding,
                                    dilation=dilation, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels

        for stage_index, stage in enumerate(_VGG16_STAGES):
            for out_channels in stage:
                conv(out_channels // width_divisor, 3, padding=1)
            if stage_index < 3:
                # ceil_mode on pool3 only, as in ssd.pytorch ('C'): 75 -> 38 for a 300 input.
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=stage_index == 2))
            elif stage_index == 3:
                self.conv4_3_end = len(layers)  # conv4_3's ReLU is the last layer so far
                layers.append(nn.MaxPool2d(2, 2))  # pool4
        layers.append(nn.MaxPool2d(3, stride=1, padding=1))  # pool5
        conv(1024 // width_divisor, 3, padding=6, dilation=6)  # fc6
        conv(1024 // width_divisor, 1)  # fc7
        self.features = nn.Sequential(*layers)
        self.out_channels: tuple[int, int] = (512 // width_divisor, 1024 // width_divisor)
        self.l2norm = L2Norm(self.out_channels[0], initial_scale=20.0)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                # Used when training from scratch; ImageNet weights overwrite it by name.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        conv4_3 = self.features[: self.conv4_3_end](x)
        fc7 = self.features[self.conv4_3_end:](conv4_3)
        return [self.l2norm(conv4_3), fc7]

    @staticmethod
    def feature_sizes(image_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """``[(h, w) of conv4_3, (h, w) of fc7]`` for an input of ``image_hw``."""
        out = []
        for size in image_hw:
            s = conv_output_size(size, 2, 2)  # pool1
            s = conv_output_size(s, 2, 2)  # pool2
            conv4_3 = conv_output_size(s, 2, 2, ceil_mode=True)  # pool3
            fc7 = conv_output_size(conv4_3, 2, 2)  # pool4; pool5, fc6, fc7 keep the size
            out.append((conv4_3, fc7))
        (h4, h7), (w4, w7) = out
        return [(h4, w4), (h7, w7)]


@dataclass(frozen=True)
class ExtraBlockSpec:
    """One SSD extra block: 1x1 conv to ``mid_channels``, then a ``kernel`` conv."""

    mid_channels: int
    out_channels: int
    kernel: int = 3
    stride: int = 2
    padding: int = 1


# SSD's extra layers (Liu et al. 2016 / ssd.pytorch ``extras``): conv8_2 .. conv11_2 / conv12_2.
SSD300_EXTRAS: tuple[ExtraBlockSpec, ...] = (
    ExtraBlockSpec(256, 512),  # conv8: 19 -> 10
    ExtraBlockSpec(128, 256),  # conv9: 10 -> 5
    ExtraBlockSpec(128, 256, stride=1, padding=0),  # conv10: 5 -> 3
    ExtraBlockSpec(128, 256, stride=1, padding=0),  # conv11: 3 -> 1
)
SSD512_EXTRAS: tuple[ExtraBlockSpec, ...] = (
    ExtraBlockSpec(256, 512),  # conv8: 32 -> 16
    ExtraBlockSpec(128, 256),  # conv9: 16 -> 8
    ExtraBlockSpec(128, 256),  # conv10: 8 -> 4
    ExtraBlockSpec(128, 256),  # conv11: 4 -> 2
    ExtraBlockSpec(128, 256, kernel=4, stride=1, padding=1),  # conv12: 2 -> 1
)


class SsdExtraLayers(nn.Module):
    """SSD's extra feature layers on top of fc7.

    ``forward(x) -> [output of block 0, block 1, ...]``; block ``i`` is
    ``blocks.i = Sequential(conv1x1, ReLU, conv kxk, ReLU)`` (ssd.pytorch applies the same
    ReLUs, outside the modules), with a BN before each ReLU when ``batch_norm``.

    Attributes:
        out_channels: output channels of each block.
    """

    def __init__(self, in_channels: int, specs: Sequence[ExtraBlockSpec],
                 batch_norm: bool = False) -> None:
        """``batch_norm`` adds a BN after each conv (for trunks trained from scratch)."""
        super().__init__()
        self.specs = tuple(specs)
        blocks = []
        for spec in self.specs:
            layers: list[nn.Module] = []
            for conv in (nn.Conv2d(in_channels, spec.mid_channels, 1, bias=not batch_norm),
                         nn.Conv2d(spec.mid_channels, spec.out_channels, spec.kernel,
                                   stride=spec.stride, padding=spec.padding,
                                   bias=not batch_norm)):
                layers.append(conv)
                if batch_norm:
                    layers.append(nn.BatchNorm2d(conv.out_channels))
                layers.append(nn.ReLU(inplace=True))
            blocks.append(nn.Sequential(*layers))
            in_channels = spec.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels: tuple[int, ...] = tuple(s.out_channels for s in self.specs)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def feature_sizes(self, input_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """``(h, w)`` of every block output for an input map of ``input_hw``."""
        sizes = []
        h, w = input_hw
        for spec in self.specs:
            h = conv_output_size(h, spec.kernel, spec.stride, spec.padding)
            w = conv_output_size(w, spec.kernel, spec.stride, spec.padding)
            sizes.append((h, w))
        return sizes
