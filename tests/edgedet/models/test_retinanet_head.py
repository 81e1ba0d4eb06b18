"""RetinaNet head: anchors, prior-probability bias, flattening order, confidence branch."""

import math

import numpy as np
import pytest
import torch

from edgedet.models.retinanet_head import (
    RetinaNetHead,
    flatten_anchor_maps,
    prior_probability_bias,
    retinanet_anchor_spec,
)


def test_anchor_spec_sizes_and_first_cell() -> None:
    spec = retinanet_anchor_spec((64, 32), ((4, 8), (2, 4), (1, 2), (1, 1), (1, 1)))
    assert spec.base_sizes == (32.0, 64.0, 128.0, 256.0, 512.0)
    assert spec.anchors_per_cell == 9
    assert spec.num_anchors == 9 * (32 + 8 + 2 + 1 + 1)
    priors = spec.generate()
    # First anchor: P3 cell (0, 0), scale 2^0, ratio w/h = 0.5.
    np.testing.assert_allclose(priors[0], [4, 4, 32 * math.sqrt(0.5), 32 / math.sqrt(0.5)],
                               rtol=1e-6)
    # Last P3 anchor of the first cell: scale 2^(2/3), ratio 2.
    s = 2 ** (2 / 3)
    np.testing.assert_allclose(priors[8], [4, 4, 32 * s * math.sqrt(2), 32 * s / math.sqrt(2)],
                               rtol=1e-6)


def test_prior_bias_gives_prior_probability() -> None:
    head = RetinaNetHead(8, num_classes=3, feat_channels=8, num_convs=1)
    assert torch.sigmoid(head.cls_logits.bias).allclose(torch.full((27,), 0.01))
    assert prior_probability_bias(0.5) == 0.0


def test_flatten_follows_level_y_x_anchor_order() -> None:
    # Encode (y, x, anchor, value) in the map and check where each lands.
    a, k, h, w = 2, 3, 2, 3
    maps = torch.zeros(1, a * k, h, w)
    for y in range(h):
        for x in range(w):
            for anchor in range(a):
                for j in range(k):
                    maps[0, anchor * k + j, y, x] = 1000 * y + 100 * x + 10 * anchor + j
    flat = flatten_anchor_maps([maps, maps[:, :, :1, :1]], k)
    assert flat.shape == (1, h * w * a + a, k)
    for y in range(h):
        for x in range(w):
            for anchor in range(a):
                row = (y * w + x) * a + anchor
                assert flat[0, row].tolist() == [1000 * y + 100 * x + 10 * anchor + j
                                                 for j in range(k)]
    assert flat[0, h * w * a + 1].tolist() == [10, 11, 12]  # second level follows the first


@pytest.mark.parametrize("with_confidence", [False, True])
def test_head_outputs_and_separate_inputs(with_confidence: bool) -> None:
    head = RetinaNetHead(8, num_classes=4, feat_channels=8, num_convs=2,
                         with_confidence=with_confidence)
    cls_in = [torch.randn(2, 8, 5, 6), torch.randn(2, 8, 3, 3)]
    box_in = [torch.randn(2, 8, 5, 6), torch.randn(2, 8, 3, 3)]
    out = head(cls_in, box_in)
    assert [tuple(t.shape) for t in out["cls_logits"]] == [(2, 36, 5, 6), (2, 36, 3, 3)]
    assert [tuple(t.shape) for t in out["box_deltas"]] == [(2, 36, 5, 6), (2, 36, 3, 3)]
    assert ("conf_logits" in out) == with_confidence
    if with_confidence:
        assert [tuple(t.shape) for t in out["conf_logits"]] == [(2, 9, 5, 6), (2, 9, 3, 3)]
    # The cls outputs depend only on cls_in and the box outputs only on box_in.
    other = head(cls_in, [torch.randn_like(t) for t in box_in])
    torch.testing.assert_close(other["cls_logits"], out["cls_logits"])
    assert not torch.equal(other["box_deltas"][0], out["box_deltas"][0])
