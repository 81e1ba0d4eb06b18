"""ResNet-18/50/101 and SE-ResNet-50 trunks returning the C2..C5 feature maps.

Parameter names follow torchvision's ``resnet.py`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ...) so an ImageNet state dict saved from torchvision loads by name
(see ``weights.py``). The stride of a downsampling bottleneck sits in its 3x3 conv
(torchvision's "ResNet v1.5"). The squeeze-excitation block of SE-ResNet uses timm's names
(``se.fc1``, ``se.fc2``, 1x1 convs with bias) so timm's ``seresnet50`` weights load too.
There is no average pool and no fc: detectors only need the trunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))``.

    Shapes: ``(N, C, H, W) -> (N, C, H, W)``; the bottleneck width is ``C // reduction``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(squeezed))))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, width)
        self.bn2 = norm_layer(width)
        self.se = SqueezeExcitation(width) if use_se else None
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, residual (ResNet-50/101).

    With ``use_se`` the SE block rescales the expanded output before the residual add, as in
    SE-ResNet (Hu et al., Fig. 3).
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcitation(out_channels) if use_se else None
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk: ``forward(x (N,3,H,W)) -> [C2, C3, C4, C5]`` at strides 4, 8, 16, 32.

    Attributes:
        out_channels: channels of ``(C2, C3, C4, C5)``, e.g. ``(256, 512, 1024, 2048)`` for
            ResNet-50.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        norm_layer: NormLayer = nn.BatchNorm2d,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        stages = []
        for stage_index, (width, num_blocks) in enumerate(zip((64, 128, 256, 512), layers,
                                                               strict=True)):
            stride = 1 if stage_index == 0 else 2
            out_channels = width * block.expansion
            downsample = None
            if stride != 1 or in_channels != out_channels:
                downsample = nn.Sequential(
                    conv1x1(in_channels, out_channels, stride), norm_layer(out_channels)
                )
            blocks = [block(in_channels, width, stride, downsample, norm_layer, use_se)]
            blocks += [
                block(out_channels, width, 1, None, norm_layer, use_se)
                for _ in range(num_blocks - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels: tuple[int, int, int, int] = tuple(
            w * block.expansion for w in (64, 128, 256, 512)
        )  # type: ignore[assignment]
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation: He-normal convs, BN at identity.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x (N, 3, H, W)`` -> ``[C2 (N,c2,H/4,W/4), C3 (/8), C4 (/16), C5 (/32)]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def resnet18(norm_layer: NormLayer = nn.BatchNorm2d) -> ResNet:
    """ResNet-18 trunk, out_channels (64, 128, 256, 512)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), norm_layer)


def resnet50(norm_layer: NormLayer = nn.BatchNorm2d) -> ResNet:
    """ResNet-50 trunk, out_channels (256, 512, 1024, 2048)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), norm_layer)


def resnet101(norm_layer: NormLayer = nn.BatchNorm2d) -> ResNet:
    """ResNet-101 trunk, out_channels (256, 512, 1024, 2048)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), norm_layer)


def se_resnet50(norm_layer: NormLayer = nn.BatchNorm2d) -> ResNet:
    """SE-ResNet-50 trunk (SE with reduction 16 in every bottleneck), as HAR-Net uses."""
    return ResNet(Bottleneck, (3, 4, 6, 3), norm_layer, use_se=True)
