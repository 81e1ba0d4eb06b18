"""Export rewrite of ``DeformConv2d``: projection + sampling instead of DeformConv.

OpenVINO's ONNX reader does not import ``DeformConv`` and TFLite has no such op; the training
module's ``grid_sample`` + einsum form exports, but samples every input channel at every tap.
As for the P&A conv (``quantize.rewrites.pa_head``), the weights are applied first: a matrix
product projects each input cell to ``taps x C_out`` values, then each output cell reads 4
corners per tap of its tap's projection (``quantize.rewrites.sampling``: ``Gather`` or
``GridSample``, the target's ``sampler``), weighted by the
bilinear weights and the optional modulation mask. Sampling points follow
``edgedet.models.deform_conv``: ``y = ho*stride - pad + i*dilation + dy``, likewise for x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.models.deform_conv import DeformConv2d
from quantize.rewrites.sampling import bilinear_tap_sum, check_sampler, grid_sample_tap_sum


class ExportDeformConv2d(nn.Module):
    """Drop-in replacement of a ``DeformConv2d``: ``forward(input, offset, mask=None)``.

    Grouped convs are stored as one dense weight ``(C_out, C_in, kh*kw)`` with zeros outside
    each group's block, so any number of conv groups and offset groups is handled by the same
    projection. ``sampler`` (``quantize.rewrites.sampling.SAMPLERS``) says how the samples are
    read.
    """

    def __init__(self, conv: DeformConv2d, sampler: str = "gather") -> None:
        super().__init__()
        self.sampler = check_sampler(sampler)
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        c_out, c_in_per_group, kh, kw = conv.weight.shape
        c_in = conv.in_channels
        dense = torch.zeros(c_out, c_in, kh * kw, dtype=conv.weight.dtype)
        out_per_group = c_out // conv.groups
        for group in range(conv.groups):
            outs = slice(group * out_per_group, (group + 1) * out_per_group)
            ins = slice(group * c_in_per_group, (group + 1) * c_in_per_group)
            dense[outs, ins] = conv.weight.detach()[outs].reshape(out_per_group, c_in_per_group,
                                                                  kh * kw)
        self.weight = nn.Parameter(dense)
        self.bias = (nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None
                     else None)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """``input (N, C_in, H, W)``, ``offset (N, 2*G*K, H_out, W_out)`` as ``(dy, dx)``
        pairs, ``mask (N, G*K, H_out, W_out)`` or None -> ``(N, C_out, H_out, W_out)``."""
        n, c_in, h, w = input.shape
        c_out, _, taps = self.weight.shape
        h_out, w_out = offset.shape[-2:]
        groups = offset.shape[1] // (2 * taps)  # offset groups
        # Per offset group g, the projection of its channels: (G, C_in/G, K*C_out), columns
        # ordered (tap, output); folded to constants when exported.
        projection = self.weight.reshape(c_out, groups, c_in // groups, taps)
        projection = projection.permute(1, 2, 3, 0).reshape(groups, c_in // groups, -1)
        if self.sampler == "grid_sample":
            # A grouped 1x1 conv: channels-first maps (N, G*K*C_out, H, W) for GridSample.
            weight = projection.transpose(1, 2).reshape(-1, c_in // groups, 1, 1)
            maps = F.conv2d(input, weight, groups=groups).reshape(n, groups, taps, c_out, h, w)
        else:
            rows = input.reshape(n, groups, c_in // groups, h * w).transpose(2, 3)
            if groups == 1:
                # A 2-D constant: INT8 MatMul kernels take its scales per output column (ONNX
                # Runtime's MatMulIntegerToFloat rejects per-column scales of a 3-D one).
                projection = projection[0]
            table = torch.matmul(rows, projection)  # (N, G, H*W, K*C_out)
            table = table.reshape(n, groups, h * w, taps, c_out).transpose(1, 2)  # (N,HW,G,K,O)

        kh, kw = self.kernel_size
        dtype, device = input.dtype, input.device
        tap_y = (torch.arange(kh, dtype=dtype, device=device) * self.dilation[0]
                 ).repeat_interleave(kw)
        tap_x = (torch.arange(kw, dtype=dtype, device=device) * self.dilation[1]).repeat(kh)
        out_y = torch.arange(h_out, dtype=dtype, device=device) * self.stride[0] - self.padding[0]
        out_x = torch.arange(w_out, dtype=dtype, device=device) * self.stride[1] - self.padding[1]
        offset = offset.reshape(n, groups, taps, 2, h_out, w_out)
        y = out_y.reshape(h_out, 1) + tap_y.reshape(taps, 1, 1) + offset[:, :, :, 0]
        x = out_x.reshape(1, w_out) + tap_x.reshape(taps, 1, 1) + offset[:, :, :, 1]
        points = torch.stack([x, y], dim=-1)  # (N, G, K, H_out, W_out, 2)
        if self.sampler == "grid_sample":
            tap_weights = (None if mask is None
                           else mask.reshape(n, groups, taps, h_out * w_out))
            out = grid_sample_tap_sum(maps, points.reshape(n, groups, taps, -1, 2),
                                      tap_weights).sum(dim=1)  # (N, C_out, P)
            out = out.reshape(n, c_out, h_out, w_out)
        else:
            points = points.permute(0, 3, 4, 1, 2, 5).reshape(n, h_out * w_out, groups, taps, 2)
            tap_weights = None
            if mask is not None:
                tap_weights = mask.reshape(n, groups, taps, h_out * w_out).permute(0, 3, 1, 2)
            out = bilinear_tap_sum(table, points, h, w, tap_weights).sum(dim=2)  # (N, P, C_out)
            out = out.transpose(1, 2).reshape(n, c_out, h_out, w_out)
        if self.bias is not None:
            out = out + self.bias.reshape(1, c_out, 1, 1)
        return out
