"""DSANet: contract shapes, anchors, gradients, switches, confidence branch, parameters."""

import json

import pytest
import torch

from edgedet.models import dsanet
from edgedet.models.attention import SelfAttention2d
from edgedet.models.dsanet import (
    dsanet_resnet18,
    dsanet_resnet18_small,
    dsanet_resnet50,
    dsanet_resnet101,
)
from edgedet.models.retinanet import retinanet_resnet50


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _set_gammas(model: torch.nn.Module, value: float) -> None:
    for module in model.modules():
        if isinstance(module, SelfAttention2d):
            module.gamma.data.fill_(value)


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([t.flatten(1) for t in model.forward_export(images)], dim=1)


@pytest.mark.parametrize(("height", "width"), [(128, 128), (100, 75)])
def test_forward_shapes_match_anchor_spec(height: int, width: int) -> None:
    model = dsanet_resnet18(num_classes=4, with_confidence=True).eval()
    images = torch.randn(2, 3, height, width)
    with torch.no_grad():
        out = model(images)
        exported = model.forward_export(images)
    num_anchors = model.anchor_spec((width, height)).num_anchors
    assert out["cls_logits"].shape == (2, num_anchors, 4)
    assert out["box_deltas"].shape == (2, num_anchors, 4)
    assert out["conf_logits"].shape == (2, num_anchors, 1)
    assert model.export_output_names == ("cls_logits", "box_deltas", "conf_logits")
    for name, tensor in zip(model.export_output_names, exported, strict=True):
        torch.testing.assert_close(tensor, out[name])


def test_without_confidence_there_is_no_conf_output() -> None:
    model = dsanet_resnet18(num_classes=2).eval()
    assert model.export_output_names == ("cls_logits", "box_deltas")
    with torch.no_grad():
        assert set(model(torch.randn(1, 3, 64, 64))) == {"cls_logits", "box_deltas"}


def test_attention_sits_on_p4_to_p7_with_separate_branches() -> None:
    model = dsanet_resnet50()
    dsa = model.pyramid_attention
    assert dsa.attention_levels == (1, 2, 3, 4)  # indices of P4..P7 in [P3..P7]
    assert set(dsa.cls_attention) == set(dsa.box_attention) == {"1", "2", "3", "4"}
    attention = dsa.cls_attention["1"]
    assert attention.query.out_channels == 256 // 8 and attention.value.out_channels == 256
    assert all(m.gamma.item() == 0.0 for m in model.modules() if isinstance(m, SelfAttention2d))


def test_with_gamma_zero_dsanet_equals_retinanet() -> None:
    # gamma starts at 0, so a fresh DSANet computes exactly its RetinaNet baseline.
    torch.manual_seed(0)
    model = dsanet_resnet18(num_classes=3).eval()
    baseline = dsanet_resnet18(num_classes=3, use_dsa=False).eval()
    baseline.load_state_dict(model.state_dict(), strict=False)
    images = torch.randn(1, 3, 64, 64)
    assert torch.equal(_outputs(model, images), _outputs(baseline, images))
    _set_gammas(model, 0.5)
    assert not torch.equal(_outputs(model, images), _outputs(baseline, images))


def test_gradients_reach_every_parameter() -> None:
    model = dsanet_resnet18(num_classes=3, with_confidence=True).train()
    # With gamma = 0 (its initial value) Q, K and V get no gradient by construction.
    _set_gammas(model, 0.5)
    # 256 x 192 gives P7 2x2: on a 1x1 map softmax over one position is constant and Q, K
    # rightly get no gradient.
    out = model(torch.randn(2, 3, 256, 192))
    sum(t.sum() for t in out.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("switch", "value"), [("use_dsa", False), ("shared_attention", True),
                                               ("with_confidence", True)])
def test_each_switch_changes_the_output(switch: str, value: bool) -> None:
    torch.manual_seed(0)
    reference = dsanet_resnet18(num_classes=3).eval()
    _set_gammas(reference, 0.5)
    variant = dsanet_resnet18(num_classes=3, **{switch: value}).eval()
    variant.load_state_dict(reference.state_dict(), strict=False)
    images = torch.randn(1, 3, 64, 64)
    assert not torch.equal(_outputs(reference, images), _outputs(variant, images))


def test_config_rebuilds_the_same_model() -> None:
    model = dsanet_resnet18(num_classes=5, shared_attention=True, with_confidence=True)
    config = json.loads(json.dumps(model.config))
    assert config["architecture"] == "dsanet_resnet18"
    rebuilt = getattr(dsanet, config["architecture"])(**config["kwargs"])
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_parameter_counts_equal_retinanet_plus_self_attention() -> None:
    # The paper gives no parameter counts; check against RetinaNet-R50 plus hand counts:
    # one SelfAttention2d(256) = Q, K (256->32) + V (256->256) + gamma.
    per_attention = 2 * (256 * 32 + 32) + (256 * 256 + 256) + 1
    assert per_attention == 82_241
    retina = _params(retinanet_resnet50())
    counts = {
        "dsanet_resnet50": _params(dsanet_resnet50()),
        "dsanet_resnet50_shared": _params(dsanet_resnet50(shared_attention=True)),
        "dsanet_resnet50_conf": _params(dsanet_resnet50(with_confidence=True)),
        "dsanet_resnet101": _params(dsanet_resnet101()),
        "dsanet_resnet18": _params(dsanet_resnet18()),
    }
    print({name: f"{n / 1e6:.2f}M" for name, n in counts.items()})
    assert counts["dsanet_resnet50"] == retina + 8 * per_attention  # 4 levels x 2 tasks
    assert counts["dsanet_resnet50_shared"] == retina + 4 * per_attention
    assert counts["dsanet_resnet50_conf"] == counts["dsanet_resnet50"] + 256 * 9 * 9 + 9
    assert counts["dsanet_resnet101"] - counts["dsanet_resnet50"] == 42_500_160 - 23_508_032


def test_resnet50_at_paper_size() -> None:
    model = dsanet_resnet50(with_confidence=True).eval()
    _set_gammas(model, 0.5)
    with torch.no_grad():
        cls_logits, box_deltas, conf_logits = model.forward_export(torch.randn(1, 3, 600, 1000))
    num_anchors = model.anchor_spec((1000, 600)).num_anchors
    assert cls_logits.shape == (1, num_anchors, 80)
    assert box_deltas.shape == (1, num_anchors, 4)
    assert conf_logits.shape == (1, num_anchors, 1)


def test_edge_configuration_narrows_fpn_head_and_attention_together() -> None:
    model = dsanet_resnet18_small(num_classes=12, img_size=(320, 256)).eval()
    assert model.config["architecture"] == "dsanet_resnet18_small"
    convs = [m for m in model.head.cls_tower.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and all(c.out_channels == 128 for c in convs)
    attention = model.pyramid_attention.cls_attention["1"]
    assert attention.query.out_channels == 128 // 8 and attention.value.out_channels == 128
    # ResNet-18 trunk 11.18 M + 128-channel FPN, DSA and 2-conv towers.
    assert 13.3e6 < _params(model) < 13.5e6
    images = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        out = model(images)
    num_anchors = model.anchor_spec((320, 256)).num_anchors
    assert out["cls_logits"].shape == (1, num_anchors, 12)
