"""Pure-torch deformable convolution vs ONNX Runtime's DeformConv and plain conv2d."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgedet.models.deform_conv import DeformConv2d, deform_conv2d, torchvision_available

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402


def _ort_deform_conv(x, weight, offset, bias, mask, stride, padding, dilation, groups,
                     offset_groups) -> np.ndarray:
    """Run a one-node ONNX DeformConv (opset 19, default domain) with onnxruntime CPU."""
    kh, kw = weight.shape[2:]
    inputs = [("X", x), ("W", weight), ("offset", offset)]
    names = ["X", "W", "offset"]
    if bias is not None or mask is not None:
        # Optional inputs are positional: an empty name skips B when only the mask is given.
        names.append("B" if bias is not None else "")
        if bias is not None:
            inputs.append(("B", bias))
    if mask is not None:
        names.append("mask")
        inputs.append(("mask", mask))
    node = helper.make_node(
        "DeformConv", names, ["Y"], kernel_shape=[kh, kw], strides=[stride, stride],
        pads=[padding] * 4, dilations=[dilation, dilation], group=groups,
        offset_group=offset_groups,
    )
    graph = helper.make_graph(
        [node], "deform_conv",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(t.shape)) for n, t in inputs],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    # IR version 9 is the first with opset 19 and is readable by every onnxruntime >= 1.15.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["Y"], {n: t.numpy() for n, t in inputs})[0]


CASES = [
    # (name, c_in, c_out, h, w, k, stride, padding, dilation, groups, offset_groups, scale)
    ("random", 4, 6, 7, 9, 3, 1, 1, 1, 1, 1, 1.5),
    ("outside", 3, 5, 6, 6, 3, 1, 1, 1, 1, 1, 6.0),
    ("stride2_pad", 4, 4, 9, 8, 3, 2, 1, 1, 1, 1, 1.0),
    ("dilation2", 4, 3, 10, 9, 3, 1, 2, 2, 1, 1, 1.0),
    ("no_pad_5x5", 2, 3, 9, 11, 5, 1, 0, 1, 1, 1, 2.0),
    ("groups", 4, 6, 7, 7, 3, 1, 1, 1, 2, 2, 1.5),
    ("offset_groups_only", 6, 4, 5, 8, 3, 1, 1, 1, 1, 3, 1.5),
    ("one_pixel_wide", 3, 2, 6, 1, 3, 1, 1, 1, 1, 1, 1.0),
]


@pytest.mark.parametrize("with_mask", [False, True], ids=["plain", "mask"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime_deformconv(case, with_mask) -> None:
    _, c_in, c_out, h, w, k, stride, padding, dilation, groups, offset_groups, scale = case
    gen = torch.Generator().manual_seed(CASES.index(case))
    x = torch.randn(2, c_in, h, w, generator=gen)
    weight = torch.randn(c_out, c_in // groups, k, k, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    h_out = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    offset = torch.randn(2, 2 * offset_groups * k * k, h_out, w_out, generator=gen) * scale
    mask = torch.rand(2, offset_groups * k * k, h_out, w_out, generator=gen) if with_mask else None
    ours = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    reference = _ort_deform_conv(x, weight, offset, bias, mask, stride, padding, dilation,
                                 groups, offset_groups)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-5)


def test_samples_pushed_outside_read_zero_like_onnxruntime() -> None:
    # Every tap lands beyond the border (|offset| > map size): the output is the bias alone.
    x = torch.randn(1, 2, 5, 5)
    weight = torch.randn(3, 2, 3, 3)
    bias = torch.randn(3)
    offset = torch.full((1, 18, 5, 5), 7.0)
    ours = deform_conv2d(x, offset, weight, bias, padding=1)
    torch.testing.assert_close(ours, bias.view(1, 3, 1, 1).expand(1, 3, 5, 5))
    reference = _ort_deform_conv(x, weight, offset, bias, None, 1, 1, 1, 1, 1)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-5)


def test_border_points_follow_torchvision_rule() -> None:
    # A single 1x1 tap moved by (0, dx) on a 1x4 ramp: hand-computed bilinear values.
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    weight = torch.ones(1, 1, 1, 1)
    for dx, expected in [(-1.0, 0.0), (-0.5, 0.5), (0.25, 1.25), (3.0, 4.0), (3.5, 2.0),
                         (4.0, 0.0)]:
        offset = torch.tensor([0.0, dx]).view(1, 2, 1, 1).expand(1, 2, 1, 4).contiguous()
        out = deform_conv2d(x, offset, weight)
        # Output cell 0 samples x = 0 + dx.
        assert out[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-6), dx


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_zero_offsets_equal_conv2d(stride, padding, dilation) -> None:
    x = torch.randn(2, 4, 11, 10)
    layer = DeformConv2d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=2)
    expected = F.conv2d(x, layer.weight, layer.bias, stride, padding, dilation, groups=2)
    offset = torch.zeros(2, 18, expected.shape[2], expected.shape[3])
    torch.testing.assert_close(layer(x, offset), expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_input_offset_weight_and_mask() -> None:
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    offset = (torch.randn(1, 18, 6, 6) * 0.7).requires_grad_()
    mask = torch.rand(1, 9, 6, 6).requires_grad_()
    layer = DeformConv2d(2, 3, 3, padding=1)
    layer(x, offset, mask).square().sum().backward()
    for tensor in (x, offset, mask, layer.weight, layer.bias):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_bad_offset_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="offset shape"):
        deform_conv2d(torch.zeros(1, 2, 5, 5), torch.zeros(1, 18, 4, 4), torch.zeros(3, 2, 3, 3),
                      padding=1)


@pytest.mark.skipif(not torchvision_available(), reason="torchvision.ops does not import here")
def test_torchvision_fast_path_matches() -> None:
    x = torch.randn(2, 4, 8, 8)
    offset = torch.randn(2, 18, 8, 8) * 2
    mask = torch.rand(2, 9, 8, 8)
    weight = torch.randn(5, 4, 3, 3)
    ours = deform_conv2d(x, offset, weight, padding=1, mask=mask)
    fast = deform_conv2d(x, offset, weight, padding=1, mask=mask, use_torchvision=True)
    torch.testing.assert_close(ours, fast, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_torchvision() -> None:
    x = torch.randn(2, 8, 16, 16)
    offset = torch.randn(2, 18, 16, 16) * 2
    mask = torch.rand(2, 9, 16, 16)
    weight = torch.randn(4, 8, 3, 3)
    cpu = deform_conv2d(x, offset, weight, padding=1, mask=mask)
    cuda_args = [t.cuda() for t in (x, offset, weight)]
    ours = deform_conv2d(*cuda_args, padding=1, mask=mask.cuda())
    torch.testing.assert_close(ours.cpu(), cpu, rtol=1e-4, atol=1e-4)
    if torchvision_available():
        fast = deform_conv2d(*cuda_args, padding=1, mask=mask.cuda(), use_torchvision=True)
        torch.testing.assert_close(ours, fast, rtol=1e-4, atol=1e-4)
