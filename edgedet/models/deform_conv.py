"""Deformable convolution (Dai et al. 2017; modulated: Zhu et al. 2019) in plain PyTorch.

Semantics are those of ``torchvision.ops.deform_conv2d`` and ONNX ``DeformConv`` (opset 19):
for output cell ``(ho, wo)`` and kernel tap ``k = i * kw + j`` of offset group ``g`` the input
is sampled at

    y = ho * stride_h - pad_h + i * dilation_h + offset[n, g*2*K + 2*k,     ho, wo]
    x = wo * stride_w - pad_w + j * dilation_w + offset[n, g*2*K + 2*k + 1, ho, wo]

by bilinear interpolation in which every corner outside the map reads 0 (so a point with
``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W`` reads exactly 0), optionally multiplied by
``mask[n, g*K + k, ho, wo]``; the samples are then contracted with the weights like ``conv2d``.

The sampling uses ``F.grid_sample(align_corners=False, padding_mode="zeros")``, whose corner
handling is exactly the one above; the grid is built with ``gx = (2x + 1) / W - 1`` (the inverse
of grid_sample's ``x = ((gx + 1) W - 1) / 2``), which, unlike ``align_corners=True``, also works
for maps one pixel wide. Everything is standard ops, so the module exports to ONNX/TFLite/
OpenVINO without a custom ``DeformConv`` kernel; ``use_torchvision=True`` switches to
torchvision's fused kernel where torchvision imports (faster training on GPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # torchvision is optional: it only provides a faster kernel with identical results.
    from torchvision.ops import deform_conv2d as _torchvision_deform_conv2d
except Exception:  # a broken torchvision install raises more than ImportError
    _torchvision_deform_conv2d = None

IntPair = int | tuple[int, int]


def torchvision_available() -> bool:
    """True when ``torchvision.ops.deform_conv2d`` imported (the optional fast path)."""
    return _torchvision_deform_conv2d is not None


def _pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Tensor | None = None,
    use_torchvision: bool = False,
) -> Tensor:
    """Deformable 2-D convolution.

    Args:
        input: ``(N, C_in, H, W)``.
        offset: ``(N, 2 * offset_groups * kh * kw, H_out, W_out)``, ``(dy, dx)`` pairs per tap.
        weight: ``(C_out, C_in / groups, kh, kw)``.
        bias: ``(C_out,)`` or None.
        stride, padding, dilation: as in ``conv2d``.
        mask: ``(N, offset_groups * kh * kw, H_out, W_out)`` modulation scalars, or None.
        use_torchvision: use torchvision's kernel when it imports (same result).

    Returns:
        ``(N, C_out, H_out, W_out)``.
    """
    if use_torchvision and _torchvision_deform_conv2d is not None:
        return _torchvision_deform_conv2d(
            input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation,
            mask=mask,
        )
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c_in, h, w = input.shape
    c_out, c_in_per_group, kh, kw = weight.shape
    taps = kh * kw
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if c_in % c_in_per_group != 0:
        raise ValueError(f"input has {c_in} channels, not a multiple of weight's {c_in_per_group}")
    groups = c_in // c_in_per_group
    if c_out % groups != 0:
        raise ValueError(f"{c_out} output channels cannot be split into {groups} groups")
    if offset.shape[1] % (2 * taps) != 0 or offset.shape[1] == 0:
        raise ValueError(
            f"offset has {offset.shape[1]} channels, expected 2 * offset_groups * {taps}"
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if c_in % offset_groups != 0:
        raise ValueError(
            f"{c_in} input channels cannot be split into {offset_groups} offset groups"
        )
    if tuple(offset.shape) != (n, 2 * offset_groups * taps, h_out, w_out):
        raise ValueError(
            f"offset shape {tuple(offset.shape)} does not match the output size "
            f"({n}, {2 * offset_groups * taps}, {h_out}, {w_out})"
        )
    if mask is not None and tuple(mask.shape) != (n, offset_groups * taps, h_out, w_out):
        raise ValueError(
            f"mask shape {tuple(mask.shape)}, expected ({n}, {offset_groups * taps}, "
            f"{h_out}, {w_out})"
        )

    # Undeformed sampling positions of every (tap, output cell): (K, H_out, 1) and (K, 1, W_out).
    dtype, device = input.dtype, input.device
    tap_y = (torch.arange(kh, device=device, dtype=dtype) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=device, dtype=dtype) * dw).repeat(kh)
    base_y = tap_y[:, None, None] + (torch.arange(h_out, device=device, dtype=dtype) * sh - ph)[
        None, :, None
    ]
    base_x = tap_x[:, None, None] + (torch.arange(w_out, device=device, dtype=dtype) * sw - pw)[
        None, None, :
    ]
    offset = offset.reshape(n, offset_groups, taps, 2, h_out, w_out)
    sample_y = base_y + offset[:, :, :, 0]  # (N, G_off, K, H_out, W_out)
    sample_x = base_x + offset[:, :, :, 1]
    grid = torch.stack([(2 * sample_x + 1) / w - 1, (2 * sample_y + 1) / h - 1], dim=-1)
    grid = grid.reshape(n * offset_groups, taps * h_out, w_out, 2)
    channels_per_offset_group = c_in // offset_groups
    sampled = F.grid_sample(
        input.reshape(n * offset_groups, channels_per_offset_group, h, w),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (N * G_off, C_in / G_off, K * H_out, W_out)
    sampled = sampled.reshape(n, offset_groups, channels_per_offset_group, taps, h_out * w_out)
    if mask is not None:
        sampled = sampled * mask.reshape(n, offset_groups, 1, taps, h_out * w_out)
    # Channel order (G_off, C/G_off) is the input channel order, so the conv groups are
    # contiguous slices of it; rows c*K + k match weight.view(C_out, C_in/groups * K).
    columns = sampled.reshape(n, groups, c_in_per_group * taps, h_out * w_out)
    weight_matrix = weight.reshape(groups, c_out // groups, c_in_per_group * taps)
    out = torch.einsum("gok,ngkl->ngol", weight_matrix, columns)
    out = out.reshape(n, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out


class DeformConv2d(nn.Module):
    """Deformable convolution layer: ``forward(input, offset, mask=None)``.

    Shapes as in :func:`deform_conv2d`; the offsets (and mask) are computed by the caller,
    typically by a plain conv over the same input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        use_torchvision: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by {groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.use_torchvision = use_torchvision
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same default as nn.Conv2d.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
            mask, self.use_torchvision,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )
