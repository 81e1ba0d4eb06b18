import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgedet.models.pa_head import (
    BoxOffsetConv2d,
    PlainConvHead,
    ProposeAttendHead,
    box_sampling_points,
    project_then_sample,
    sample_box_taps,
)


def _cell_boxes(h: int, w: int, stride: int, sides: list[float]) -> torch.Tensor:
    """Boxes centred on every cell, one per entry of ``sides``: ``(1, H, W, A, 4)``."""
    cy, cx = torch.meshgrid((torch.arange(h) + 0.5) * stride, (torch.arange(w) + 0.5) * stride,
                            indexing="ij")
    boxes = [torch.stack([cx, cy, torch.full_like(cx, s), torch.full_like(cx, s)], -1)
             for s in sides]
    return torch.stack(boxes, dim=2)[None]


def test_box_of_side_3d_strides_is_a_dilated_conv():
    # Identity case of eqs. 4-5: no centre displacement and a box of side 3*d*stride put the
    # nine taps exactly on the cells of a 3x3 conv with dilation d (zero padding outside).
    torch.manual_seed(0)
    stride, h, w, cin, cout = 16, 6, 7, 5, 4
    features = torch.randn(2, cin, h, w, dtype=torch.float64)
    conv = BoxOffsetConv2d(cin, cout, num_anchors=2).double()
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
    boxes = _cell_boxes(h, w, stride, [3 * stride, 6 * stride]).double().expand(2, -1, -1, -1, -1)
    out = conv(features, box_sampling_points(boxes, stride))
    for anchor, dilation in enumerate((1, 2)):
        channels = slice(anchor * cout, (anchor + 1) * cout)
        expected = F.conv2d(features, conv.weight[channels], conv.bias[channels],
                            padding=dilation, dilation=dilation)
        torch.testing.assert_close(out[:, channels], expected, rtol=1e-9, atol=1e-9)


def test_sampling_points_of_one_cell_by_hand():
    # Cell (y=1, x=3) at stride 8 has its centre at pixel (28, 12). Its adjusted box is moved
    # by (+4, +6) pixels and is 24 x 12: centre (32, 18) -> feature (3.5, 1.75); tap spacing
    # (24 / (3*8), 12 / (3*8)) = (1, 0.5) cells.
    boxes = torch.zeros(1, 2, 5, 1, 4)
    boxes[0, 1, 3, 0] = torch.tensor([32.0, 18.0, 24.0, 12.0])
    points = box_sampling_points(boxes, stride=8)  # (1, A, 9, H, W, 2)
    got = points[0, 0, :, 1, 3]
    expected = torch.tensor([[x, y] for y in (1.25, 1.75, 2.25) for x in (2.5, 3.5, 4.5)])
    torch.testing.assert_close(got, expected)
    # Eq. 4: offsets O = R * (b_hat / k) + Delta - R relative to the plain 3x3 grid, in cells.
    r = torch.tensor([[rx, ry] for ry in (-1, 0, 1) for rx in (-1, 0, 1)], dtype=torch.float32)
    offsets = r * torch.tensor([24.0, 12.0]) / (3 * 8) + torch.tensor([4.0, 6.0]) / 8 - r
    torch.testing.assert_close(got, torch.tensor([3.0, 1.0]) + r + offsets)


def test_bilinear_sampling_values_and_zero_outside():
    # f(y, x) = 10 y + x is reproduced exactly by bilinear interpolation inside the map.
    h, w = 4, 5
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    features = (10 * ys + xs)[None, None]
    points = torch.tensor([[2.5, 1.25], [0.0, 0.0], [3.75, 2.5]]).view(1, 1, 3, 1, 1, 2)
    points = points.expand(1, 1, 3, h, w, 2)
    taps = sample_box_taps(features, points)  # (1, 1, 3, H*W)
    torch.testing.assert_close(taps[0, 0, :, 0], torch.tensor([15.0, 0.0, 28.75]))
    # Corners outside the map read 0: half-way past the left edge of a map of ones gives 0.5.
    ones = torch.ones(1, 1, h, w)
    outside = torch.tensor([[-0.5, 1.0], [1.0, -1.0], [4.5, 3.0]]).view(1, 1, 3, 1, 1, 2)
    taps = sample_box_taps(ones, outside.expand(1, 1, 3, h, w, 2))
    torch.testing.assert_close(taps[0, 0, :, 0], torch.tensor([0.5, 0.0, 0.5]))


def test_offset_conv_output_of_one_cell_matches_explicit_sum():
    torch.manual_seed(1)
    h, w, cin, cout, stride = 5, 6, 3, 2, 8
    features = torch.randn(1, cin, h, w, dtype=torch.float64)
    conv = BoxOffsetConv2d(cin, cout, num_anchors=2).double()
    with torch.no_grad():
        conv.weight.normal_()
    boxes = _cell_boxes(h, w, stride, [20.0, 33.0]).double()
    boxes[..., 0] += 5.0
    boxes[..., 1] -= 3.0
    with torch.no_grad():
        out = conv(features, box_sampling_points(boxes, stride))

    def bilinear(c: int, y: float, x: float) -> float:
        y0, x0 = math.floor(y), math.floor(x)
        total = 0.0
        for yy in (y0, y0 + 1):
            for xx in (x0, x0 + 1):
                if 0 <= yy < h and 0 <= xx < w:
                    total += (1 - abs(y - yy)) * (1 - abs(x - xx)) * float(features[0, c, yy, xx])
        return total

    y, x = 2, 4
    for anchor, side in enumerate((20.0, 33.0)):
        cx = x + 5.0 / stride
        cy = y - 3.0 / stride
        for o in range(cout):
            expected = 0.0
            for ky in range(3):
                for kx in range(3):
                    sy = cy + (ky - 1) * side / (3 * stride)
                    sx = cx + (kx - 1) * side / (3 * stride)
                    for c in range(cin):
                        weight = float(conv.weight.detach()[anchor * cout + o, c, ky, kx])
                        expected += weight * bilinear(c, sy, sx)
            assert float(out[0, anchor * cout + o, y, x]) == pytest.approx(expected, abs=1e-9)


def _head_inputs(stride: int = 8, h: int = 4, w: int = 5):
    torch.manual_seed(2)
    features = [torch.randn(2, 16, h, w)]
    priors = _cell_boxes(h, w, stride, [32.0, 40.0, 50.0])[0]
    return features, [priors], [stride]


def test_propose_offsets_clipped_to_half_a_stride():
    features, priors, strides = _head_inputs()
    head = ProposeAttendHead(16, num_classes=3, num_anchors=3,
                             box_coder_weights=(10.0, 10.0, 5.0, 5.0))
    with torch.no_grad():
        head.propose_box.weight.zero_()
        # raw x offset atanh(0.5) -> shift 0.5 * stride / 2 = 2 px; raw y huge -> 4 px max.
        head.propose_box.bias.copy_(torch.tensor([math.atanh(0.5), 50.0, 0.0, 0.0] * 3))
    out = head(features, priors, strides)
    shift = out["adjusted_priors_cxcywh"] - priors[0].reshape(1, -1, 4)
    torch.testing.assert_close(shift[..., 0], torch.full_like(shift[..., 0], 2.0))
    torch.testing.assert_close(shift[..., 1], torch.full_like(shift[..., 1], 4.0))
    torch.testing.assert_close(shift[..., 2:], torch.zeros_like(shift[..., 2:]))

    unclipped = ProposeAttendHead(16, 3, 3, (10.0, 10.0, 5.0, 5.0), clip_propose_offsets=False)
    unclipped.load_state_dict(head.state_dict())
    out = unclipped(features, priors, strides)
    shift = out["adjusted_priors_cxcywh"] - priors[0].reshape(1, -1, 4)
    assert shift[..., 1].min() > 100  # 50 / 10 * box side: far beyond half a cell


def test_head_shapes_and_attend_switch():
    features, priors, strides = _head_inputs()
    head = ProposeAttendHead(16, num_classes=3, num_anchors=3,
                             box_coder_weights=(10.0, 10.0, 5.0, 5.0))
    out = head(features, priors, strides)
    total = 4 * 5 * 3
    assert out["objectness_logits"].shape == (2, total, 2)
    assert out["propose_deltas"].shape == (2, total, 4)
    assert out["cls_logits"].shape == (2, total, 4)
    assert out["box_deltas"].shape == (2, total, 4)
    fixed = ProposeAttendHead(16, 3, 3, (10.0, 10.0, 5.0, 5.0), use_attend=False)
    fixed.load_state_dict(head.state_dict())  # identical parameters, only sampling differs
    out_fixed = fixed(features, priors, strides)
    torch.testing.assert_close(out_fixed["propose_deltas"], out["propose_deltas"])
    assert not torch.allclose(out_fixed["cls_logits"], out["cls_logits"])


def test_plain_head_has_the_attend_parameter_count():
    pa = ProposeAttendHead(256, 20, 3, (10.0, 10.0, 5.0, 5.0))
    plain = PlainConvHead(256, 20, 3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    propose = count(pa.propose_objectness) + count(pa.propose_box)
    assert propose == 256 * 9 * 18 + 18  # the +0.04M of Table 1
    assert count(pa) - propose == count(plain) == 256 * 9 * 75 + 75


def test_gradients_reach_features_and_weights():
    features, priors, strides = _head_inputs()
    features[0].requires_grad_(True)
    head = ProposeAttendHead(16, 3, 3, (10.0, 10.0, 5.0, 5.0))
    out = head(features, priors, strides)
    sum(v.sum() for k, v in out.items() if k != "adjusted_priors_cxcywh").backward()
    assert features[0].grad is not None and features[0].grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert np.isfinite(features[0].grad.numpy()).all()


def test_contract_first_equals_sample_first_values_and_gradients():
    # The training order (1x1 projection, then sample the projection) must equal the
    # reference order (sample every channel, then contract), forward and backward, including
    # taps that fall partly or wholly outside the map.
    torch.manual_seed(3)
    n, cin, h, w, stride = 2, 6, 5, 7, 8
    convs = [BoxOffsetConv2d(cin, 4, num_anchors=3).double(),
             BoxOffsetConv2d(cin, 2, num_anchors=3).double()]
    with torch.no_grad():
        for conv in convs:
            conv.weight.normal_()
            conv.bias.normal_()
    boxes = _cell_boxes(h, w, stride, [10.0, 30.0, 90.0]).double().repeat(n, 1, 1, 1, 1)
    boxes[..., :2] += torch.randn(n, h, w, 3, 2, dtype=torch.float64) * 12  # some leave the map
    points = box_sampling_points(boxes, stride)
    assert (points < -1).any() and (points[..., 0] > w).any()

    def run(fast: bool):
        features = torch.randn(n, cin, h, w, dtype=torch.float64, generator=torch.Generator()
                               .manual_seed(4)).requires_grad_(True)
        for conv in convs:
            conv.zero_grad()
        outs = (project_then_sample(features, points, convs) if fast
                else [conv.forward_reference(features, points) for conv in convs])
        sum((out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum()
            for out in outs).backward()
        grads = [features.grad] + [p.grad.clone() for conv in convs for p in conv.parameters()]
        return [o.detach() for o in outs], grads

    fast_out, fast_grads = run(True)
    ref_out, ref_grads = run(False)
    for got, expected in zip(fast_out + fast_grads, ref_out + ref_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(convs[0](torch.ones(n, cin, h, w, dtype=torch.float64), points),
                               convs[0].forward_reference(torch.ones(n, cin, h, w,
                                                                     dtype=torch.float64), points))


def test_head_attend_order_switch_gives_the_same_outputs():
    features, priors, strides = _head_inputs()
    head = ProposeAttendHead(16, 3, 3, (10.0, 10.0, 5.0, 5.0))
    with torch.no_grad():
        head.attend_cls.weight.normal_()
        head.attend_box.weight.normal_()
    reference = ProposeAttendHead(16, 3, 3, (10.0, 10.0, 5.0, 5.0), contract_first=False)
    reference.load_state_dict(head.state_dict())
    out, expected = head(features, priors, strides), reference(features, priors, strides)
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], rtol=1e-5, atol=1e-5)
