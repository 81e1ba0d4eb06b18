"""RetinaNet meta-architecture: contract shapes, anchors, gradients, config, parameter count."""

import json

import pytest
import torch

from edgedet.models import retinanet
from edgedet.models.retinanet import retinanet_resnet18, retinanet_resnet50


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("height", "width"), [(128, 128), (100, 75)])
def test_forward_shapes_match_anchor_spec(height: int, width: int) -> None:
    model = retinanet_resnet18(num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
        exported = model.forward_export(torch.randn(2, 3, height, width))
    num_anchors = model.anchor_spec((width, height)).num_anchors
    assert set(out) == {"cls_logits", "box_deltas"}
    assert out["cls_logits"].shape == (2, num_anchors, 5)
    assert out["box_deltas"].shape == (2, num_anchors, 4)
    assert model.export_output_names == ("cls_logits", "box_deltas")
    assert [tuple(t.shape) for t in exported] == [(2, num_anchors, 5), (2, num_anchors, 4)]
    assert model.box_coder_weights == (1.0, 1.0, 1.0, 1.0)


def test_gradients_reach_every_parameter() -> None:
    model = retinanet_resnet18(num_classes=3).train()
    out = model(torch.randn(2, 3, 64, 64))
    sum(t.sum() for t in out.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_config_rebuilds_the_same_model() -> None:
    model = retinanet_resnet18(num_classes=7, img_size=(320, 256))
    config = json.loads(json.dumps(model.config))
    assert config == {"architecture": "retinanet_resnet18",
                      "kwargs": {"num_classes": 7, "img_size": [320, 256]}}
    rebuilt = getattr(retinanet, config["architecture"])(**config["kwargs"])
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        retinanet_resnet18()(torch.zeros(1, 1, 32, 32))


def test_resnet50_parameter_count_matches_torchvision_retinanet() -> None:
    # torchvision's retinanet_resnet50_fpn (91 classes) has 34,014,999 parameters; it keeps the
    # trunk's 53,120 BN affine values as FrozenBatchNorm buffers and computes P6 from P5
    # (256 input channels) where the RetinaNet paper (and this model) uses C5 (2048).
    torchvision_total = 34_014_999
    frozen_bn_affine = 53_120
    p6_from_c5_extra = (2048 - 256) * 256 * 9
    expected = torchvision_total + frozen_bn_affine + p6_from_c5_extra
    assert _params(retinanet_resnet50(num_classes=91)) == expected


def test_resnet50_at_paper_size() -> None:
    model = retinanet_resnet50().eval()
    with torch.no_grad():
        cls_logits, box_deltas = model.forward_export(torch.randn(1, 3, 600, 1000))
    num_anchors = model.anchor_spec((1000, 600)).num_anchors
    assert num_anchors == 9 * (75 * 125 + 38 * 63 + 19 * 32 + 10 * 16 + 5 * 8)
    assert cls_logits.shape == (1, num_anchors, 80) and box_deltas.shape == (1, num_anchors, 4)
