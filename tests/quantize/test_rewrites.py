"""Every export rewrite computes what the training module computes (random weights/inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantize.rewrites.sampling as sampling_module
from edgedet.models.attention import SelfAttention2d
from edgedet.models.daipnet import daipnet_vgg16
from edgedet.models.deform_conv import DeformConv2d
from edgedet.models.dsanet import dsanet_resnet18
from edgedet.models.harnet import harnet_resnet18_small
from edgedet.models.pa_head import (
    BoxOffsetConv2d,
    ProposeAttendHead,
    box_sampling_points,
    flatten_head_output,
)
from edgedet.models.passd import passd_mobilenet
from quantize.rewrites import (
    ExportDeformConv2d,
    ExportProposeAttendHead,
    ExportSelfAttention2d,
    PackedBoxOffsetConv,
    bilinear_tap_sum,
    grid_sample_tap_sum,
    rewrite_for_export,
)
from quantize.rewrites.pa_head import planar_sampling_points, xy_sampling_points
from quantize.rewrites.sampling import SAMPLERS, bilinear_tap_sum_xy
from tests.quantize.conftest import small_passd

ATOL = 1e-5
RTOL = 1e-4


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def _boxes(n: int, h: int, w: int, a: int, stride: float, generator: torch.Generator
           ) -> torch.Tensor:
    """Boxes ``(N, H, W, A, 4)`` cxcywh around each cell, some reaching far outside the map."""
    cx = (torch.arange(w) + 0.5).view(1, 1, w, 1).expand(n, h, w, a) * stride
    cy = (torch.arange(h) + 0.5).view(1, h, 1, 1).expand(n, h, w, a) * stride
    shift = (torch.rand(2, n, h, w, a, generator=generator) - 0.5) * stride
    wh = stride * torch.exp(torch.randn(2, n, h, w, a, generator=generator)) * 3
    return torch.stack([cx + shift[0], cy + shift[1], wh[0], wh[1]], dim=-1)


def _randomise(module: nn.Module, generator: torch.Generator, std: float = 0.1) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


class TestBilinearTapSum:
    def test_hand_computed_values(self) -> None:
        # One 2x3 map with one value per cell: v(y, x) = 10*y + x + 1.
        table = torch.tensor([[1.0, 2.0, 3.0], [11.0, 12.0, 13.0]]).reshape(1, 6, 1, 1, 1)
        points = torch.tensor([
            [0.5, 0.5],   # centre of 4 cells: (1 + 2 + 11 + 12) / 4 = 6.5
            [-0.5, 0.0],  # half outside on the left: 0.5 * v(0, 0) = 0.5
            [-1.0, 1.0],  # one full cell outside: 0
            [2.25, 1.0],  # 0.75 * v(1, 2) + 0.25 * 0 (x = 3 is outside) = 9.75
            [2.0, 1.0],   # exactly on the last cell: 13
            [1.0, -0.25],  # 0.75 * v(0, 1) = 1.5
        ]).reshape(1, 6, 1, 1, 2)
        out = bilinear_tap_sum(table, points, height=2, width=3)
        expected = torch.tensor([6.5, 0.5, 0.0, 9.75, 13.0, 1.5]).reshape(1, 6, 1, 1)
        _close(out, expected)

    def test_sums_taps_and_applies_tap_weights(self) -> None:
        table = torch.arange(8.0).reshape(1, 4, 1, 2, 1)  # 2x2 map, 2 taps: tap t at q = 2q+t
        points = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).reshape(1, 1, 1, 2, 2)
        tap_weights = torch.tensor([2.0, 0.5]).reshape(1, 1, 1, 2)
        out = bilinear_tap_sum(table, points, 2, 2, tap_weights)
        # tap 0 at (0, 0) reads q=0 -> 0; tap 1 at (1, 1) reads q=3 -> 7.
        _close(out, torch.tensor([[[[2 * 0.0 + 0.5 * 7.0]]]]))

    def test_non_finite_points_read_zero(self) -> None:
        table = torch.ones(1, 4, 1, 1, 1)
        points = torch.tensor([[float("inf"), 0.0], [0.0, -float("inf")]]).reshape(1, 2, 1, 1, 2)
        _close(bilinear_tap_sum(table, points, 2, 2), torch.zeros(1, 2, 1, 1))


class TestGridSampleTapSum:
    def test_hand_computed_values_match_the_gather_form(self) -> None:
        # The same 2x3 map and points as TestBilinearTapSum, channels-first.
        maps = torch.tensor([[1.0, 2.0, 3.0], [11.0, 12.0, 13.0]]).reshape(1, 1, 1, 1, 2, 3)
        points = torch.tensor([[0.5, 0.5], [-0.5, 0.0], [-1.0, 1.0], [2.25, 1.0], [2.0, 1.0],
                               [1.0, -0.25]]).reshape(1, 1, 1, 6, 2)
        out = grid_sample_tap_sum(maps, points)
        _close(out, torch.tensor([6.5, 0.5, 0.0, 9.75, 13.0, 1.5]).reshape(1, 1, 1, 6))

    def test_sums_taps_with_tap_weights_and_non_finite_points_read_zero(self) -> None:
        maps = torch.arange(8.0).reshape(1, 1, 2, 1, 2, 2)  # tap 0: 0..3, tap 1: 4..7
        points = torch.tensor([[[0.0, 0.0], [float("inf"), 0.0]],
                               [[1.0, 1.0], [0.0, -float("inf")]]]).reshape(1, 1, 2, 2, 2)
        tap_weights = torch.tensor([[2.0, 2.0], [0.5, 0.5]]).reshape(1, 1, 2, 2)
        out = grid_sample_tap_sum(maps, points, tap_weights)
        # position 0: 2 * 0 + 0.5 * 7; position 1: both taps off the map.
        _close(out, torch.tensor([3.5, 0.0]).reshape(1, 1, 1, 2))


@pytest.mark.parametrize("stride", [8.0, 16.0, 128.0])
def test_planar_sampling_points_are_training_points_bit_for_bit(stride: float) -> None:
    generator = torch.Generator().manual_seed(2)
    boxes = _boxes(2, 5, 6, 3, stride, generator)
    boxes[0, 0, 0, 0] = torch.tensor([1e6, -3.0, 0.0, 7e5])  # far off the map, zero width
    torch.testing.assert_close(planar_sampling_points(boxes, stride),
                               box_sampling_points(boxes, stride), rtol=0, atol=0)


@pytest.mark.parametrize("stride", [8.0, 16.0, 128.0])
def test_xy_sampling_points_are_training_points_bit_for_bit(stride: float) -> None:
    generator = torch.Generator().manual_seed(3)
    boxes = _boxes(2, 5, 6, 3, stride, generator)
    boxes[1, 4, 5, 2] = torch.tensor([-2e6, 9.0, 3e5, 0.0])  # far off the map, zero height
    x, y = xy_sampling_points(boxes, stride)  # (N, H, W, A, T) each
    training = box_sampling_points(boxes, stride).permute(0, 3, 4, 1, 2, 5)  # (N, H, W, A, T, 2)
    torch.testing.assert_close(x, training[..., 0], rtol=0, atol=0)
    torch.testing.assert_close(y, training[..., 1], rtol=0, atol=0)


def test_tap_sum_rows_in_float_and_in_integers_read_the_same_samples(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two images, so a wrong batch offset in the row arithmetic reads the other image.
    generator = torch.Generator().manual_seed(4)
    table = torch.randn(2, 20, 3, 9, 5, generator=generator)  # 4x5 map
    points = (torch.rand(2, 7, 3, 9, 2, generator=generator) * 7.0) - 1.5
    x, y = points[..., 0], points[..., 1]
    in_float = bilinear_tap_sum_xy(table, x, y, 4, 5, rows_in_float=True)
    in_integers = bilinear_tap_sum(table, points, 4, 5)  # the default
    per_image = torch.cat([bilinear_tap_sum_xy(table[i:i + 1], x[i:i + 1], y[i:i + 1], 4, 5,
                                               rows_in_float=True) for i in range(2)])
    torch.testing.assert_close(in_float, in_integers, rtol=0, atol=0)
    torch.testing.assert_close(in_float, per_image, rtol=0, atol=0)
    monkeypatch.setattr(sampling_module, "_FLOAT_ROWS_LIMIT", 0)  # too many rows: integers
    torch.testing.assert_close(bilinear_tap_sum_xy(table, x, y, 4, 5, rows_in_float=True),
                               in_integers, rtol=0, atol=0)


def test_groups_in_one_product_sum_the_same_samples() -> None:
    generator = torch.Generator().manual_seed(6)
    table = torch.randn(2, 20, 3, 9, 5, generator=generator)  # 4x5 map, 3 groups
    points = (torch.rand(2, 7, 3, 9, 2, generator=generator) * 7.0) - 1.5
    tap_weights = torch.rand(2, 7, 3, 9, generator=generator)
    x, y = points[..., 0], points[..., 1]
    for weights in (None, tap_weights):
        _close(bilinear_tap_sum_xy(table, x, y, 4, 5, weights, groups_in_one_product=True),
               bilinear_tap_sum(table, points, 4, 5, weights))


def _tap_sum_corners_last(table: torch.Tensor, x: torch.Tensor, y: torch.Tensor, height: int,
                          width: int, tap_weights: torch.Tensor | None) -> torch.Tensor:
    """``bilinear_tap_sum_xy`` as written before 2026-12-07 (session 4): the four corners on a
    last axis, every step of the math on all four; its weights and rows are the reference
    the present form's (each axis's two corners before the taps, joined once) must match bit
    for bit. The products are summed corner by corner, the present form's order (the form
    before summed tap by tap: a rounding apart)."""
    n, q, g, t, o = table.shape
    x = x.clamp(-2.0, width + 1.0).unsqueeze(-1)
    y = y.clamp(-2.0, height + 1.0).unsqueeze(-1)
    corner_x = torch.floor(x) + x.new_tensor([0.0, 1.0, 0.0, 1.0])
    corner_y = torch.floor(y) + y.new_tensor([0.0, 0.0, 1.0, 1.0])
    inside = ((corner_x >= 0) & (corner_x <= width - 1) & (corner_y >= 0)
              & (corner_y <= height - 1))
    weights = (1 - (x - corner_x).abs()) * (1 - (y - corner_y).abs()) * inside.to(table.dtype)
    if tap_weights is not None:
        weights = weights * tap_weights.unsqueeze(-1)
    source = (corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)).long()
    rows = (torch.arange(n).reshape(n, 1, 1, 1, 1) * (q * g * t) + source * (g * t)
            + torch.arange(g * t).reshape(1, 1, g, t, 1))
    p = x.shape[1]
    weights, rows = weights.transpose(-1, -2), rows.transpose(-1, -2)  # (N, P, G, 4, T)
    samples = table.reshape(n * q * g * t, o)[rows.reshape(n, p, g, t * 4)]
    return torch.matmul(weights.reshape(n, p, g, 1, t * 4), samples).reshape(n, p, g, o)


@pytest.mark.parametrize("rows_in_float", [False, True])
@pytest.mark.parametrize("one_product", [False, True])
def test_tap_sum_matches_the_corners_last_form_bit_for_bit(rows_in_float: bool,
                                                           one_product: bool) -> None:
    # Points inside, across the border and far outside (clamped), one of them inf; the
    # products are summed in the same order, so equal weights and rows give equal bits (the
    # one-product form adds zeros and runs another product: compared with a tolerance).
    generator = torch.Generator().manual_seed(8)
    table = torch.randn(2, 20, 3, 9, 5, generator=generator)  # 4x5 map
    x = torch.rand(2, 7, 3, 9, generator=generator) * 9.0 - 2.5
    y = torch.rand(2, 7, 3, 9, generator=generator) * 8.0 - 2.5
    x[0, 0, 0, 0] = float("inf")
    # Whole and half numbers, on and just past each border (x: -1, 0, W-1, W; y likewise).
    x[1, 0, :, :4] = torch.tensor([-1.0, 0.0, 4.0, 5.0])
    y[1, 0, :, :4] = torch.tensor([-1.0, 0.0, 3.0, 4.0])
    x[1, 1, :, :3], y[1, 1, :, :3] = torch.tensor([-0.5, 2.5, 4.5]), torch.tensor([3.5, 1.0, -0.5])
    for tap_weights in (None, torch.rand(2, 7, 3, 9, generator=generator)):
        expected = _tap_sum_corners_last(table, x, y, 4, 5, tap_weights)
        actual = bilinear_tap_sum_xy(table, x, y, 4, 5, tap_weights,
                                     groups_in_one_product=one_product,
                                     rows_in_float=rows_in_float)
        tolerance = {"rtol": 1e-6, "atol": 1e-6} if one_product else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(actual, expected, **tolerance)


def test_tap_sum_computes_each_axis_before_the_taps_in_the_graph(tmp_path) -> None:
    # OpenVINO vectorises its fused float subgraphs along the last axis: the corner math
    # must run with the taps last, never with a corner axis of 1, 2 or 4 last (the form
    # before ran on rows of 4 and took 0.42 ms at the paper-width PASSD's P3, against
    # about 0.3 for this one, the row arithmetic included).
    import onnx

    class TapSum(nn.Module):
        def forward(self, table: torch.Tensor, x: torch.Tensor, y: torch.Tensor
                    ) -> torch.Tensor:
            return bilinear_tap_sum_xy(table, x, y, 4, 5, groups_in_one_product=True,
                                       rows_in_float=True)

    table, x, y = torch.randn(1, 20, 3, 9, 5), torch.rand(1, 7, 3, 9), torch.rand(1, 7, 3, 9)
    path = tmp_path / "tap_sum.onnx"
    torch.onnx.export(TapSum(), (table, x, y), str(path), dynamo=False, opset_version=17)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info}
    corner_math = [node for node in model.graph.node if node.op_type in ("Floor", "Abs")]
    assert len(corner_math) == 4  # floor and distance on each axis
    for node in corner_math:
        assert shapes[node.output[0]][-1] == 9, (node.op_type, shapes[node.output[0]])


def test_packed_offset_conv_takes_xy_planes_in_the_gather_form() -> None:
    generator = torch.Generator().manual_seed(5)
    conv = BoxOffsetConv2d(16, 5, 3)
    _randomise(conv, generator)
    features = torch.randn(2, 16, 7, 9, generator=generator)
    boxes = _boxes(2, 7, 9, 3, 8.0, generator)
    expected = flatten_head_output(conv(features, box_sampling_points(boxes, 8.0)), 5)
    (actual,) = PackedBoxOffsetConv([conv], "gather")(features, xy_sampling_points(boxes, 8.0))
    _close(actual, expected)
    (one_product,) = PackedBoxOffsetConv([conv], "gather", anchors_in_one_product=True)(
        features, xy_sampling_points(boxes, 8.0))
    _close(one_product, expected)
    with pytest.raises(TypeError, match="grid_sample"):
        PackedBoxOffsetConv([conv], "grid_sample")(features, xy_sampling_points(boxes, 8.0))


@pytest.mark.parametrize("sampler", SAMPLERS)
class TestPaHead:
    def test_packed_offset_conv_matches_box_offset_conv(self, sampler: str) -> None:
        generator = torch.Generator().manual_seed(0)
        conv = BoxOffsetConv2d(16, 5, 3)
        _randomise(conv, generator)
        features = torch.randn(2, 16, 7, 9, generator=generator)
        points = box_sampling_points(_boxes(2, 7, 9, 3, 8.0, generator), 8.0)
        expected = flatten_head_output(conv(features, points), 5)
        (actual,) = PackedBoxOffsetConv([conv], sampler)(features, points)
        _close(actual, expected)

    @pytest.mark.parametrize("clip", [True, False])
    def test_head_matches_training_head(self, clip: bool, sampler: str) -> None:
        generator = torch.Generator().manual_seed(1)
        head = ProposeAttendHead(16, num_classes=4, num_anchors=3,
                                 box_coder_weights=(10.0, 10.0, 5.0, 5.0),
                                 clip_propose_offsets=clip).eval()
        _randomise(head, generator, std=0.05)
        strides = (8, 16)
        features = [torch.randn(2, 16, 6, 5, generator=generator),
                    torch.randn(2, 16, 3, 3, generator=generator)]
        priors = [_boxes(1, f.shape[2], f.shape[3], 3, s, generator)[0]
                  for f, s in zip(features, strides, strict=True)]
        expected = head(features, priors, strides)
        actual = ExportProposeAttendHead(head, sampler)(features, priors, strides)
        assert actual.keys() == expected.keys()
        for key in expected:
            _close(actual[key], expected[key])

    def test_refuses_plain_attend_head(self, sampler: str) -> None:
        head = ProposeAttendHead(8, 2, 3, (10.0, 10.0, 5.0, 5.0), use_attend=False)
        with pytest.raises(ValueError, match="use_attend=False"):
            ExportProposeAttendHead(head, sampler)


class TestDeformConv:
    @pytest.mark.parametrize("sampler", SAMPLERS)
    @pytest.mark.parametrize(("stride", "padding", "dilation", "groups", "offset_groups",
                              "with_mask"), [
        (1, 1, 1, 1, 1, False),
        (2, 2, 2, 2, 2, True),
        (1, 0, 1, 1, 4, True),
    ])
    def test_matches_training_module(self, stride: int, padding: int, dilation: int,
                                     groups: int, offset_groups: int, with_mask: bool,
                                     sampler: str) -> None:
        generator = torch.Generator().manual_seed(2)
        conv = DeformConv2d(8, 6, 3, stride=stride, padding=padding, dilation=dilation,
                            groups=groups)
        _randomise(conv, generator, std=0.2)
        x = torch.randn(2, 8, 9, 7, generator=generator)
        h_out = (9 + 2 * padding - dilation * 2 - 1) // stride + 1
        w_out = (7 + 2 * padding - dilation * 2 - 1) // stride + 1
        # Offsets of a few cells, so many taps land between cells and some off the map.
        offset = torch.randn(2, 2 * offset_groups * 9, h_out, w_out, generator=generator) * 2
        mask = (torch.rand(2, offset_groups * 9, h_out, w_out, generator=generator)
                if with_mask else None)
        _close(ExportDeformConv2d(conv, sampler)(x, offset, mask), conv(x, offset, mask))


def test_self_attention_matches_training_module() -> None:
    generator = torch.Generator().manual_seed(3)
    attention = SelfAttention2d(32)
    _randomise(attention, generator)
    with torch.no_grad():
        attention.gamma.fill_(0.7)  # training starts at 0, which would hide the attention path
    x = torch.randn(2, 32, 5, 6, generator=generator)
    _close(ExportSelfAttention2d(attention)(x), attention(x))


# ---------------------------------------------------------------------------------------------
# Whole detectors (small inputs). The layers being rewritten get random, non-trivial weights
# (offset convs that really move the taps, gamma != 0); the rest keeps its initialisation.
# ---------------------------------------------------------------------------------------------


def _check_detector(model: nn.Module, image_hw: tuple[int, int], expected_rewrites: dict,
                    sampler: str = "gather", **options: bool) -> None:
    model = model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rewritten = rewrite_for_export(model, sampler, **options)
    assert rewritten.export_rewrites == expected_rewrites
    images = torch.randn(1, 3, *image_hw, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(images)
        actual = rewritten(images)
        exported = rewritten.forward_export(images)
    assert actual.keys() == expected.keys()
    for key in expected:
        _close(actual[key], expected[key])
    for name, tensor in zip(model.export_output_names, exported, strict=True):
        _close(tensor, expected[name])
    # The training model is untouched: same modules, same values.
    assert rewritten is not model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_passd_mobilenet(sampler: str) -> None:
    generator = torch.Generator().manual_seed(5)
    model = passd_mobilenet(num_classes=3, img_size=320)
    _randomise(model.head.attend_cls, generator, std=0.05)
    _randomise(model.head.attend_box, generator, std=0.05)
    _randomise(model.head.propose_box, generator, std=0.05)
    _check_detector(model, (320, 320), {"ProposeAttendHead": 1}, sampler)
    assert isinstance(model.head, ProposeAttendHead)


def test_passd_with_a_positions_anchors_in_one_product() -> None:
    # He-normal weights: the attend stage reads features far from zero, so a sample summed
    # into another anchor's output shows (the builders' initialisation leaves them near 0).
    _check_detector(small_passd(), (320, 320), {"ProposeAttendHead": 1}, "gather",
                    anchors_in_one_product=True, rows_in_float=True)


def test_passd_without_attend_needs_no_rewrite() -> None:
    model = passd_mobilenet(num_classes=3, img_size=320, use_attend=False)
    _check_detector(model, (128, 128), {})


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_harnet_resnet18_small(sampler: str) -> None:
    generator = torch.Generator().manual_seed(6)
    model = harnet_resnet18_small(num_classes=3, img_size=(160, 128))
    for attention in model.aligned_attention.values():
        _randomise(attention.offset, generator, std=0.05)
        _randomise(attention.deform, generator, std=0.05)
    _check_detector(model, (128, 160), {"DeformConv2d": 2}, sampler)


def test_dsanet_resnet18() -> None:
    generator = torch.Generator().manual_seed(7)
    model = dsanet_resnet18(num_classes=3, img_size=(160, 128))
    for module in model.modules():
        if isinstance(module, SelfAttention2d):
            _randomise(module, generator, std=0.05)
            with torch.no_grad():
                module.gamma.fill_(0.5)
    _check_detector(model, (128, 160), {"SelfAttention2d": 8})


def test_daipnet_vgg16_needs_no_rewrite() -> None:
    _check_detector(daipnet_vgg16(num_classes=3, img_size=300), (300, 300), {})


def test_unknown_sampler_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        rewrite_for_export(passd_mobilenet(num_classes=2, width_mult=0.25), sampler="bicubic")
