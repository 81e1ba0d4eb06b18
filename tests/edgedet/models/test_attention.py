"""HAR-Net and DSANet attention layers, checked against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from edgedet.models.attention import (
    AlignedAttention,
    CrossLevelGroupNorm,
    CrossLevelSE,
    DecoupledSelfAttention,
    SelfAttention2d,
    SpatialAttention,
)


def test_clgn_statistics_span_all_levels() -> None:
    torch.manual_seed(0)
    levels = [torch.randn(2, 4, 3, 3) * 3 + 1, torch.randn(2, 4, 2, 1) - 2]
    norm = CrossLevelGroupNorm(4, num_groups=2, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
    out = norm(levels)
    # Manual: per sample and group of 2 channels, gather the values of BOTH levels.
    for n in range(2):
        for group in range(2):
            channels = slice(2 * group, 2 * group + 2)
            values = torch.cat([lv[n, channels].flatten() for lv in levels])
            mean, var = values.mean(), values.var(unbiased=False)
            for lv, lv_out in zip(levels, out, strict=True):
                for c in range(2 * group, 2 * group + 2):
                    expected = (lv[n, c] - mean) / torch.sqrt(var + 1e-5)
                    expected = expected * norm.weight[c] + norm.bias[c]
                    torch.testing.assert_close(lv_out[n, c], expected)
    # Per-level GroupNorm (statistics of one level only) gives something else.
    per_level = F.group_norm(levels[1], 2, norm.weight, norm.bias, 1e-5)
    assert not torch.allclose(per_level, out[1], atol=1e-3)
    assert [o.shape for o in out] == [lv.shape for lv in levels]


def test_spatial_attention_mask_shape_range_and_dilations() -> None:
    module = SpatialAttention(8)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 2, 5, 2, 1]
    assert [c.out_channels for c in convs] == [16, 16, 16, 16, 1]
    for conv in convs:
        torch.nn.init.normal_(conv.weight, std=0.1)
    mask = module(torch.randn(2, 8, 9, 7))
    assert mask.shape == (2, 1, 9, 7)
    assert mask.min() > 0 and mask.max() < 1
    assert mask.std() > 1e-3  # not a constant: the mask depends on position


def test_spatial_attention_starts_as_a_constant_half_mask_that_can_learn() -> None:
    torch.manual_seed(2)
    module = SpatialAttention(32)
    # FPN-like input: non-negative, a few units large (the zoo HAR-Net's reach 100s).
    features = torch.randn(2, 32, 12, 10).relu() * 5
    mask = module(features)
    torch.testing.assert_close(mask, torch.full_like(mask, 0.5))  # the start changes nothing
    # Where the objective wants another mask, the last conv's gradient is that of He-scale
    # activations (with RetinaNet's N(0, 0.01) everywhere it was about 1e-5 and the branch
    # never came alive in a trained HAR-Net) ...
    energy = features.pow(2).mean(1, keepdim=True)
    target = (energy > energy.median()).float()  # half the positions in, half out
    (mask - target).pow(2).mean().backward()
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1].weight.grad.norm() > 1e-2
    # ... and the hidden convs pass the input on at its scale, not a tenth of it per conv.
    hidden = features
    for layer in list(module.layers)[:-1]:
        hidden = layer(hidden)
    assert hidden.pow(2).mean().sqrt() > 0.1 * features.pow(2).mean().sqrt()
    # A few optimiser steps on that objective give a mask that varies with position.
    optimiser = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(20):
        optimiser.zero_grad()
        (module(features) - target).pow(2).mean().backward()
        optimiser.step()
    assert module(features).std() > 0.1


def test_clse_weights_are_shared_by_levels_and_match_hand_computation() -> None:
    torch.manual_seed(1)
    module = CrossLevelSE(channels=4, num_levels=2, reduction=2)
    levels = [torch.rand(3, 4, 5, 5) + 0.1, torch.rand(3, 4, 2, 3) + 0.1]
    out = module(levels)
    pooled = torch.cat([levels[0].amax(dim=(2, 3)), levels[1].amax(dim=(2, 3))], dim=1)
    hidden = torch.relu(pooled @ module.fc1.weight.T + module.fc1.bias)
    weights = torch.sigmoid(hidden @ module.fc2.weight.T + module.fc2.bias)  # (3, 4)
    assert module.fc1.in_features == 8 and module.fc1.out_features == 4
    for level, level_out in zip(levels, out, strict=True):
        torch.testing.assert_close(level_out, level * weights[:, :, None, None])


def test_self_attention_with_zero_gamma_returns_input_exactly() -> None:
    module = SelfAttention2d(16)
    assert module.gamma.item() == 0.0
    assert module.query.out_channels == 2 and module.key.out_channels == 2
    x = torch.randn(2, 16, 5, 4)
    assert torch.equal(module(x), x)


def test_self_attention_matches_hand_computation() -> None:
    torch.manual_seed(2)
    module = SelfAttention2d(16)
    with torch.no_grad():
        module.gamma.fill_(0.7)
    x = torch.randn(2, 16, 3, 4)
    out = module(x)
    assert not torch.equal(out, x)
    q = F.conv2d(x, module.query.weight, module.query.bias).flatten(2)  # (N, 2, HW)
    k = F.conv2d(x, module.key.weight, module.key.bias).flatten(2)
    v = F.conv2d(x, module.value.weight, module.value.bias).flatten(2)  # (N, 16, HW)
    expected = torch.empty_like(v)
    for n in range(2):
        for i in range(12):  # output position i attends to every position j
            logits = torch.stack([q[n, :, i] @ k[n, :, j] for j in range(12)]) / math.sqrt(16)
            expected[n, :, i] = v[n] @ torch.softmax(logits, dim=0)
    torch.testing.assert_close(out, x + 0.7 * expected.reshape(2, 16, 3, 4))


@pytest.mark.parametrize("shared", [False, True])
def test_decoupled_attention_routes_levels(shared: bool) -> None:
    torch.manual_seed(3)
    module = DecoupledSelfAttention(8, attention_levels=(1, 2), shared=shared)
    for param in module.parameters():
        if param.numel() == 1:
            param.data.fill_(0.5)  # gamma != 0 so attention shows
    pyramid = [torch.randn(1, 8, 6, 6), torch.randn(1, 8, 3, 3), torch.randn(1, 8, 2, 2)]
    cls_features, box_features = module(pyramid)
    assert cls_features[0] is pyramid[0] and box_features[0] is pyramid[0]  # P3 untouched
    for index in (1, 2):
        torch.testing.assert_close(cls_features[index],
                                   module.cls_attention[str(index)](pyramid[index]))
        assert not torch.equal(cls_features[index], pyramid[index])
        if shared:
            assert box_features[index] is cls_features[index]
        else:
            assert not torch.equal(box_features[index], cls_features[index])
    expected_modules = 2 if shared else 4
    assert sum(isinstance(m, SelfAttention2d) for m in module.modules()) == expected_modules


def test_aligned_attention_at_zero_offsets_is_a_plain_conv_bottleneck() -> None:
    torch.manual_seed(4)
    module = AlignedAttention(16, reduction=4)
    assert module.reduce.out_channels == 4 and module.expand.out_channels == 16
    assert module.offset.out_channels == 18
    torch.nn.init.normal_(module.expand.weight, std=0.3)
    x = torch.relu(torch.randn(2, 16, 6, 5))
    reduced = torch.relu(module.reduce(x))
    plain = torch.relu(F.conv2d(reduced, module.deform.weight, module.deform.bias, padding=1))
    expected = torch.relu(x + module.expand(plain))
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
    # Non-zero offsets change the result.
    torch.nn.init.normal_(module.offset.weight, std=0.3)
    assert not torch.allclose(module(x), expected, atol=1e-4)
