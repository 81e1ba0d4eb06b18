"""HAR-Net: contract shapes, anchors, gradients, attention switches, incremental training."""

import json

import pytest
import torch

from edgedet.models import harnet
from edgedet.models.attention import AlignedAttention, CrossLevelGroupNorm, SpatialAttention
from edgedet.models.harnet import (
    harnet_resnet18_small,
    harnet_resnet50,
    harnet_resnet101,
    harnet_se_resnet50,
)
from edgedet.models.retinanet import retinanet_resnet50

SWITCHES = ("use_aligned_attention", "use_clgn", "use_spatial_attention", "use_extra_conv",
            "use_channel_attention")


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([t.flatten(1) for t in model.forward_export(images)], dim=1)


@pytest.mark.parametrize(("height", "width"), [(128, 128), (100, 75)])
def test_forward_shapes_match_anchor_spec(height: int, width: int) -> None:
    model = harnet_resnet18_small(num_classes=4).eval()
    images = torch.randn(2, 3, height, width)
    with torch.no_grad():
        out = model(images)
        exported = model.forward_export(images)
    num_anchors = model.anchor_spec((width, height)).num_anchors
    assert out["cls_logits"].shape == (2, num_anchors, 4)
    assert out["box_deltas"].shape == (2, num_anchors, 4)
    assert model.export_output_names == ("cls_logits", "box_deltas")
    torch.testing.assert_close(exported[0], out["cls_logits"])
    assert model.box_coder_weights == (1.0, 1.0, 1.0, 1.0)


def test_structure_follows_the_paper() -> None:
    model = harnet_resnet50()
    assert set(model.aligned_attention) == {"c4", "c5"}  # Table III: AA on C4 and C5
    assert isinstance(model.aligned_attention["c5"], AlignedAttention)
    assert model.aligned_attention["c5"].deform.in_channels == 2048 // 4
    head = model.head
    for task in ("cls", "box"):
        branch = head.branches[task]
        assert len(branch.convs) == 4 and all(c.out_channels == 256 for c in branch.convs)
        assert all(isinstance(n, CrossLevelGroupNorm) for n in branch.norms)
        assert branch.channel_attention.fc1.in_features == 5 * 256  # 5 levels concatenated
    assert head.branches["cls"].channel_attention is not head.branches["box"].channel_attention
    assert isinstance(head.spatial_attention, SpatialAttention)
    assert head.cls_logits.out_channels == 9 * 80 and head.box_deltas.out_channels == 9 * 4
    small = harnet_resnet18_small()
    assert len(small.head.branches["cls"].convs) == 2
    assert small.head.branches["cls"].convs[0].out_channels == 128


def test_gradients_reach_every_parameter() -> None:
    model = harnet_resnet18_small(num_classes=3).train()
    # The spatial mask's last conv starts at zero (its hidden convs get no gradient by
    # construction until it moves, as DSANet's Q, K, V with gamma = 0): moved here.
    assert model.head.spatial_attention is not None
    last = model.head.spatial_attention.layers[-1]
    assert not last.weight.any() and not last.bias.any()
    with torch.no_grad():
        last.weight.normal_(std=0.01, generator=torch.Generator().manual_seed(0))
    out = model(torch.randn(2, 3, 64, 64))
    sum(t.sum() for t in out.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_changes_the_output(switch: str) -> None:
    torch.manual_seed(0)
    full = harnet_resnet18_small(num_classes=3).eval()
    ablated = harnet_resnet18_small(num_classes=3, **{switch: False}).eval()
    # Same weights for everything both have, so only the switched module differs.
    missing, _ = ablated.load_state_dict(full.state_dict(), strict=False)
    assert missing == []
    assert _params(ablated) < _params(full)
    images = torch.randn(1, 3, 64, 64)
    assert not torch.equal(_outputs(full, images), _outputs(ablated, images))


@pytest.mark.parametrize(("switch", "runtime"), [("use_spatial_attention", "spatial"),
                                                 ("use_channel_attention", "channel")])
def test_runtime_bypass_equals_model_built_without(switch: str, runtime: str) -> None:
    torch.manual_seed(0)
    full = harnet_resnet18_small(num_classes=3).eval()
    ablated = harnet_resnet18_small(num_classes=3, **{switch: False}).eval()
    ablated.load_state_dict(full.state_dict(), strict=False)
    images = torch.randn(1, 3, 64, 64)
    with_attention = _outputs(full, images)
    full.set_attention_enabled(**{runtime: False})
    torch.testing.assert_close(_outputs(full, images), _outputs(ablated, images))
    full.set_attention_enabled(**{runtime: True})
    torch.testing.assert_close(_outputs(full, images), with_attention)


def test_incremental_training_switches_gradients_of_attention() -> None:
    model = harnet_resnet18_small(num_classes=3).train()
    attention_ids = {id(p) for p in model.attention_parameters()}
    assert len(attention_ids) > 0
    # Stage 1: main network only.
    model.set_attention_enabled(spatial=False, channel=False)
    out = model(torch.randn(1, 3, 64, 64))
    sum(t.sum() for t in out.values()).backward()
    for param in model.parameters():
        if id(param) in attention_ids:
            assert param.grad is None
        else:
            assert param.grad is not None
    # Stage 2: attention on; its parameters now learn (the spatial mask's last conv first:
    # it starts at zero, so the convs before it learn once it has moved, as here).
    model.zero_grad(set_to_none=True)
    model.set_attention_enabled(spatial=True, channel=True)
    out = model(torch.randn(1, 3, 64, 64))
    sum(t.sum() for t in out.values()).backward()
    assert all(p.grad is not None for p in model.attention_parameters())
    assert model.head.spatial_attention is not None
    last = model.head.spatial_attention.layers[-1]
    assert last.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        last.weight.normal_(std=0.01, generator=torch.Generator().manual_seed(0))
    out = model(torch.randn(1, 3, 64, 64))
    sum(t.sum() for t in out.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.attention_parameters())


def test_enabling_an_attention_that_was_not_built_fails() -> None:
    model = harnet_resnet18_small(use_spatial_attention=False)
    with pytest.raises(ValueError, match="use_spatial_attention=False"):
        model.set_attention_enabled(spatial=True)


def test_spatial_mask_is_applied_to_both_branches() -> None:
    torch.manual_seed(0)
    model = harnet_resnet18_small(num_classes=3, use_channel_attention=False).eval()
    images_a, images_b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    out_a, out_b = model(images_a), model(images_b)
    assert not torch.equal(out_a["cls_logits"], out_b["cls_logits"])
    # Force the mask to ~0: both branches lose their input, so both outputs stop depending on
    # the image (cls AND box), which only happens if the one mask multiplies both branches.
    last_conv = model.head.spatial_attention.layers[-1]
    torch.nn.init.zeros_(last_conv.weight)
    torch.nn.init.constant_(last_conv.bias, -200.0)
    with torch.no_grad():
        out_a, out_b = model(images_a), model(images_b)
    torch.testing.assert_close(out_a["cls_logits"], out_b["cls_logits"])
    torch.testing.assert_close(out_a["box_deltas"], out_b["box_deltas"])


def test_config_rebuilds_the_same_model() -> None:
    model = harnet_resnet18_small(num_classes=5, use_clgn=False)
    config = json.loads(json.dumps(model.config))
    assert config["architecture"] == "harnet_resnet18_small"
    assert config["kwargs"]["use_clgn"] is False
    rebuilt = getattr(harnet, config["architecture"])(**config["kwargs"])
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_parameter_counts_equal_retinanet_plus_attention() -> None:
    # The paper gives no parameter counts, so check the breakdown against RetinaNet-R50 (whose
    # count matches torchvision, see test_retinanet.py) plus each module's hand count.
    def aligned(d: int) -> int:
        h = d // 4
        return _conv_params(d, h, 1) + _conv_params(h, 18, 3) + _conv_params(h, h, 3) + \
            _conv_params(h, d, 1)

    clgn = 2 * 4 * 2 * 256  # 2 branches x 4 convs x (scale + shift) x 256 channels
    spatial = _conv_params(256, 16, 3) + 3 * _conv_params(16, 16, 3) + _conv_params(16, 1, 3)
    extra_convs = 2 * _conv_params(256, 256, 3)
    clse = 2 * ((1280 * 80 + 80) + (80 * 256 + 256))
    expected = (_params(retinanet_resnet50()) + aligned(1024) + aligned(2048) + clgn + spatial
                + extra_convs + clse)
    counts = {f.__name__: _params(f()) for f in (harnet_resnet50, harnet_resnet101,
                                                 harnet_se_resnet50, harnet_resnet18_small)}
    print({name: f"{n / 1e6:.2f}M" for name, n in counts.items()})
    assert counts["harnet_resnet50"] == expected
    # ResNet-101 adds exactly torchvision's 19.0M trunk difference; SE adds the SE blocks.
    assert counts["harnet_resnet101"] - counts["harnet_resnet50"] == 42_500_160 - 23_508_032
    assert counts["harnet_se_resnet50"] - counts["harnet_resnet50"] == 26_039_024 - 23_508_032
    assert counts["harnet_resnet18_small"] < counts["harnet_resnet50"] / 3


def test_resnet50_at_paper_size() -> None:
    model = harnet_resnet50().eval()
    with torch.no_grad():
        cls_logits, box_deltas = model.forward_export(torch.randn(1, 3, 600, 1000))
    num_anchors = model.anchor_spec((1000, 600)).num_anchors
    assert cls_logits.shape == (1, num_anchors, 80) and box_deltas.shape == (1, num_anchors, 4)
