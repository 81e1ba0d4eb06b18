"""RetinaNet FPN: output shapes, P6 from C5, feature-size arithmetic."""

import pytest
import torch

from edgedet.models.backbones.resnet import resnet18
from edgedet.models.fpn import RetinaFPN, conv_output_size, retinanet_feature_sizes


def test_conv_output_size_hand_values() -> None:
    assert conv_output_size(600, 7, 2, 3) == 300
    assert conv_output_size(75, 3, 2, 1) == 38
    assert conv_output_size(10, 3, 1, 2, dilation=2) == 10


@pytest.mark.parametrize(("height", "width"), [(128, 96), (100, 75), (33, 65)])
def test_feature_sizes_match_real_backbone_and_fpn(height: int, width: int) -> None:
    backbone = resnet18().eval()
    fpn = RetinaFPN(backbone.out_channels[1:], 32).eval()
    with torch.no_grad():
        pyramid = fpn(backbone(torch.zeros(1, 3, height, width))[1:])
    assert tuple(tuple(p.shape[-2:]) for p in pyramid) == retinanet_feature_sizes(height, width)
    assert all(p.shape[:2] == (1, 32) for p in pyramid)


def test_paper_size_pyramid() -> None:
    # 600x1000 (DSANet / HAR-Net Tables I-III): strides 8..128, sizes rounded up.
    assert retinanet_feature_sizes(600, 1000) == ((75, 125), (38, 63), (19, 32), (10, 16), (5, 8))


def test_p6_reads_c5_and_p7_reads_relu_p6() -> None:
    fpn = RetinaFPN((8, 16, 32), 8)
    assert fpn.p6.in_channels == 32  # C5 channels: P6 from C5 as in the RetinaNet paper
    c3, c4, c5 = torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)
    p3, p4, p5, p6, p7 = fpn([c3, c4, c5])
    torch.testing.assert_close(p6, fpn.p6(c5))
    torch.testing.assert_close(p7, fpn.p7(torch.relu(p6)))
    # Top-down: P5 only sees C5, P4 sees C4 plus upsampled C5.
    torch.testing.assert_close(p5, fpn.output_convs[2](fpn.lateral_convs[2](c5)))
    up = torch.nn.functional.interpolate(fpn.lateral_convs[2](c5), scale_factor=2.0)
    torch.testing.assert_close(p4, fpn.output_convs[1](fpn.lateral_convs[1](c4) + up))
    assert p3.shape == (1, 8, 16, 16) and p7.shape == (1, 8, 1, 1)


def test_wrong_number_of_inputs_is_rejected() -> None:
    with pytest.raises(ValueError, match="C3, C4, C5"):
        RetinaFPN((8, 16, 32), 8)([torch.zeros(1, 8, 4, 4)])
