import pytest
import torch

from edgedet.models.backbones.vgg import (
    SSD300_EXTRAS,
    SSD512_EXTRAS,
    VGG16SSD,
    SsdExtraLayers,
    conv_output_size,
)


def test_conv_output_size_matches_pytorch():
    for size in (5, 37, 38, 75, 300):
        for kernel, stride, padding, ceil in ((2, 2, 0, False), (2, 2, 0, True), (3, 2, 1, False),
                                              (3, 1, 0, False)):
            pool = torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
            expected = pool(torch.zeros(1, 1, size, size)).shape[-1]
            assert conv_output_size(size, kernel, stride, padding, ceil_mode=ceil) == expected


def test_layout_names_and_parameter_count():
    with torch.device("meta"):
        vgg = VGG16SSD()
    names = dict(vgg.named_parameters())
    # ssd.pytorch / torchvision indices: conv4_3 = 21, conv5_3 = 28, fc6 = 31, fc7 = 33.
    assert names["features.21.weight"].shape == (512, 512, 3, 3)
    assert names["features.28.weight"].shape == (512, 512, 3, 3)
    assert names["features.31.weight"].shape == (1024, 512, 3, 3)
    assert names["features.33.weight"].shape == (1024, 1024, 1, 1)
    assert vgg.features[31].dilation == (6, 6) and vgg.features[31].padding == (6, 6)
    assert vgg.features[16].ceil_mode and not vgg.features[23].ceil_mode
    # 14,714,688 conv1_1..conv5_3 (torchvision's vgg16 features) + fc6 + fc7 + L2Norm.
    expected = 14_714_688 + (512 * 9 * 1024 + 1024) + (1024 * 1024 + 1024) + 512
    assert sum(p.numel() for p in vgg.parameters()) == expected


@pytest.mark.parametrize("image_hw", [(64, 64), (72, 100)])
def test_feature_sizes_match_forward(image_hw):
    torch.manual_seed(0)
    vgg = VGG16SSD()
    with torch.no_grad():
        conv4_3, fc7 = vgg(torch.randn(1, 3, *image_hw))
    assert conv4_3.shape[1] == 512 and fc7.shape[1] == 1024
    assert [tuple(conv4_3.shape[-2:]), tuple(fc7.shape[-2:])] == vgg.feature_sizes(image_hw)
    # conv4_3 comes out of the L2Norm: every position has norm 20 (the initial scale).
    norms = conv4_3.pow(2).sum(dim=1).sqrt()
    torch.testing.assert_close(norms, torch.full_like(norms, 20.0), rtol=1e-4, atol=1e-3)


def test_ssd_extra_sizes():
    assert VGG16SSD.feature_sizes((300, 300)) == [(38, 38), (19, 19)]
    assert VGG16SSD.feature_sizes((512, 512)) == [(64, 64), (32, 32)]
    with torch.device("meta"):
        extras300 = SsdExtraLayers(1024, SSD300_EXTRAS)
        extras512 = SsdExtraLayers(1024, SSD512_EXTRAS)
        outputs = extras512(torch.empty(1, 1024, 32, 32))
    assert extras300.feature_sizes((19, 19)) == [(10, 10), (5, 5), (3, 3), (1, 1)]
    assert extras512.feature_sizes((32, 32)) == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert [tuple(o.shape[1:]) for o in outputs] == [
        (512, 16, 16), (256, 8, 8), (256, 4, 4), (256, 2, 2), (256, 1, 1)]
    assert extras300.out_channels == (512, 256, 256, 256)


def test_narrow_batch_norm_trunk():
    torch.manual_seed(0)
    vgg = VGG16SSD(width_divisor=4, batch_norm=True).train()
    convs = [m for m in vgg.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in vgg.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128,
                                               128, 128, 128, 256, 256]
    assert len(norms) == 15 and all(c.bias is None for c in convs)
    assert convs[13].dilation == (6, 6)  # fc6 keeps SSD's dilation
    assert vgg.out_channels == (128, 256) and vgg.l2norm.weight.shape == (128,)
    # conv4_3's split is after its ReLU whatever the BNs do to the indices.
    assert isinstance(vgg.features[vgg.conv4_3_end - 1], torch.nn.ReLU)
    assert isinstance(vgg.features[vgg.conv4_3_end], torch.nn.MaxPool2d)
    assert VGG16SSD().conv4_3_end == 23  # ssd.pytorch's layer 22 is conv4_3's ReLU
    conv4_3, fc7 = vgg(torch.randn(2, 3, 300, 300))
    assert conv4_3.shape == (2, 128, 38, 38) and fc7.shape == (2, 256, 19, 19)
    with pytest.raises(ValueError, match="width_divisor"):
        VGG16SSD(width_divisor=3)


def test_extra_layers_with_batch_norm():
    with torch.device("meta"):
        extras = SsdExtraLayers(256, SSD300_EXTRAS, batch_norm=True)
    block = extras.blocks[0]
    assert [type(m).__name__ for m in block] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2
    assert block[0].bias is None and block[3].bias is None
