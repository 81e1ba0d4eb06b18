"""ResNet trunks: parameter counts vs torchvision, feature shapes, torchvision naming."""

import pytest
import torch

from edgedet.models.backbones.resnet import resnet18, resnet50, resnet101, se_resnet50


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# torchvision's published totals (11,689,512 / 25,557,032 / 44,549,160) minus the fc layer
# (512*1000+1000 for ResNet-18, 2048*1000+1000 otherwise); SE-ResNet-50: timm's seresnet50
# total 28,088,024 minus the same fc.
@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (resnet18, 11_689_512 - 513_000),
        (resnet50, 25_557_032 - 2_049_000),
        (resnet101, 44_549_160 - 2_049_000),
        (se_resnet50, 28_088_024 - 2_049_000),
    ],
)
def test_parameter_count_matches_reference_without_fc(builder, expected) -> None:
    assert _count(builder()) == expected


def test_resnet18_feature_shapes_and_out_channels() -> None:
    model = resnet18().eval()
    with torch.no_grad():
        features = model(torch.zeros(2, 3, 64, 96))
    assert model.out_channels == (64, 128, 256, 512)
    expected = [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]
    assert [tuple(f.shape) for f in features] == expected


def test_bottleneck_names_and_stride_in_3x3_conv() -> None:
    model = resnet50()
    names = set(model.state_dict())
    for name in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
                 "layer1.0.downsample.1.weight", "layer4.2.conv3.weight"):
        assert name in names
    assert not any(n.startswith(("fc.", "avgpool")) for n in names)
    assert model.out_channels == (256, 512, 1024, 2048)
    # torchvision v1.5: the downsampling block strides in its 3x3 conv, not the first 1x1.
    assert model.layer2[0].conv1.stride == (1, 1)
    assert model.layer2[0].conv2.stride == (2, 2)


def test_se_block_sits_before_the_residual_add() -> None:
    model = se_resnet50()
    block = model.layer1[0]
    assert block.se.fc1.out_channels == 256 // 16
    # Forcing the SE gate to zero leaves only the identity path: out = relu(downsample(x)).
    torch.nn.init.zeros_(block.se.fc2.weight)
    torch.nn.init.constant_(block.se.fc2.bias, -1e4)
    block.eval()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.downsample(x)))
