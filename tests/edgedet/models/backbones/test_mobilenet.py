import torch

from edgedet.models.backbones.mobilenet import MobileNetV1


def test_parameter_count_and_names():
    with torch.device("meta"):
        model = MobileNetV1()
    # MobileNet v1 1.0 has 4,231,976 parameters with its 1024 x 1000 classifier.
    assert sum(p.numel() for p in model.parameters()) == 4_231_976 - (1024 * 1000 + 1000)
    names = dict(model.named_parameters())
    assert names["model.0.0.weight"].shape == (32, 3, 3, 3)
    assert names["model.1.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert names["model.13.3.weight"].shape == (1024, 1024, 1, 1)  # last pointwise


def test_feature_sizes_and_channels():
    torch.manual_seed(0)
    model = MobileNetV1().eval()
    for image_hw in ((64, 64), (70, 99)):
        with torch.no_grad():
            features = model(torch.randn(1, 3, *image_hw))
        assert [f.shape[1] for f in features] == list(model.out_channels) == [256, 512, 1024]
        assert [tuple(f.shape[-2:]) for f in features] == model.feature_sizes(image_hw)
    assert model.feature_sizes((320, 320)) == [(40, 40), (20, 20), (10, 10)]
