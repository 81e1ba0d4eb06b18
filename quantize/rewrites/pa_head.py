"""Export rewrite of PASSD's P&A head: the attend-stage offset convs as projection + Gather.

The training head (``edgedet.models.pa_head.ProposeAttendHead``) samples the 256-channel
pyramid map at the 9 taps of each of the A adjusted boxes (``grid_sample``) and contracts the
``A x 9 x 256`` samples with the weights. The rewrite contracts first: one matrix product
projects every cell to ``A x 9 x (K+1+4)`` values (the class and box offset convs packed
together, since they share the sampling grid), then each output reads 4 corners per tap from
its own tap's projection (``quantize.rewrites.sampling``: ``Gather`` or ``GridSample``, the
target's ``sampler``). The sampling points are computed in the graph from the propose
outputs with the operations of training (``box_sampling_points``), laid out for the read:
for ``GridSample`` and the tail on planes (``planar_sampling_points``), for ``Gather`` as
separate x and y (``xy_sampling_points``); ``benchmarks/pa_attend_conv.py`` measures this
against the other variants.

With ``tail=True`` the graph stops before the read: each level's channels-last table becomes
a model output, and the SDK computes the sampling points from ``propose_deltas`` and sums
the samples (``edgedet.attend_tail``; the ``cpu`` target's form, ``quantize.attend_tail``
writes its manifest section).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.attend_tail import TABLE_PREFIX
from edgedet.models.box_coder import decode_cxcywh
from edgedet.models.pa_head import (
    BoxOffsetConv2d,
    ProposeAttendHead,
    flatten_head_output,
)
from quantize.rewrites.sampling import (
    bilinear_tap_sum_xy,
    check_sampler,
    grid_sample_tap_sum,
)


def planar_sampling_points(boxes_cxcywh: Tensor, stride: float, kernel_size: int = 3) -> Tensor:
    """``edgedet.models.pa_head.box_sampling_points`` computed on planes, for ONNX Runtime.

    The training form adds a ``(k*k, 2)`` tap table to every box by broadcasting over short
    inner axes, then permutes the ``(N, H, W, A, k*k, 2)`` points to the tap-major layout the
    samplers read; ONNX Runtime runs that as a slow broadcast and a 6-D transpose of all the
    points (0.3-0.7 ms at P3 of the zoo PASSD). Here the boxes, a quarter as many values, are
    transposed to ``(N, A, 4, H*W)`` first; each tap's x and y are then one multiply-add over
    all positions (``centre + offset * size``, the same operations as in training, so the
    same points bit for bit; the tests compare them), and the pairs are interleaved last.
    Zoo PASSD INT8 on ONNX Runtime 13.29 -> 12.94 ms on near CPUs, 17.83 -> 17.05 on far
    ones, against the previous form (a product with a constant tap matrix, then the
    transpose; one interleaved run).

    Args/returns: as ``box_sampling_points``.
    """
    taps_x, taps_y = _tap_offsets(kernel_size)
    n, h, w, a = boxes_cxcywh.shape[:4]
    planes = boxes_cxcywh.permute(0, 3, 4, 1, 2).reshape(n, a, 4, 1, h * w)
    centre_x = planes[:, :, 0] / stride - 0.5  # (N, A, 1, H*W)
    centre_y = planes[:, :, 1] / stride - 0.5
    size_x = planes[:, :, 2] / (stride * kernel_size)
    size_y = planes[:, :, 3] / (stride * kernel_size)
    offset_x = planes.new_tensor(taps_x).reshape(-1, 1)  # (k*k, 1)
    offset_y = planes.new_tensor(taps_y).reshape(-1, 1)
    points = torch.stack([centre_x + offset_x * size_x, centre_y + offset_y * size_y], dim=-1)
    return points.reshape(n, a, len(taps_x), h, w, 2)


def xy_sampling_points(boxes_cxcywh: Tensor, stride: float, kernel_size: int = 3
                       ) -> tuple[Tensor, Tensor]:
    """``edgedet.models.pa_head.box_sampling_points`` as two planes, for the ``gather`` read.

    ``(x, y)``, each ``(N, H, W, A, k*k)``: the points' coordinates in the position-major
    order ``bilinear_tap_sum_xy`` reads, computed with the training form's operations
    (``centre + offset * size``, the same bits; the tests compare them). The training form
    interleaves x and y into pairs, which the ``gather`` read then split again, and moves
    the pairs to tap-major order and back; OpenVINO ran that split as a reference kernel and
    the index arithmetic on its own. Paper-width PASSD on OpenVINO, three interleaved runs
    on the AMX CPU: INT8 9.73-9.87 -> 9.41-9.54 ms, the fp32 model's bf16 default
    13.80-13.86 -> 13.32-13.50 (with the float row arithmetic of ``bilinear_tap_sum_xy``'s
    ``rows_in_float``, the openvino target's).
    """
    taps_x, taps_y = _tap_offsets(kernel_size)
    centre_x = boxes_cxcywh[..., 0:1] / stride - 0.5  # (N, H, W, A, 1)
    centre_y = boxes_cxcywh[..., 1:2] / stride - 0.5
    size_x = boxes_cxcywh[..., 2:3] / (stride * kernel_size)
    size_y = boxes_cxcywh[..., 3:4] / (stride * kernel_size)
    offset_x = boxes_cxcywh.new_tensor(taps_x)  # (k*k,)
    offset_y = boxes_cxcywh.new_tensor(taps_y)
    return centre_x + offset_x * size_x, centre_y + offset_y * size_y


def _tap_offsets(kernel_size: int) -> tuple[list[float], list[float]]:
    """Each tap's x and y offset in box sizes, taps in row-major order like a conv kernel
    (``box_sampling_points``' tap table)."""
    half = (kernel_size - 1) / 2
    offsets = [i - half for i in range(kernel_size)]
    return ([rx for _ in offsets for rx in offsets], [ry for ry in offsets for _ in offsets])


class PackedBoxOffsetConv(nn.Module):
    """Offset convs that share one sampling grid, packed into one projection + Gather.

    Built from ``BoxOffsetConv2d`` modules with the same input channels, anchors and kernel;
    ``forward(features, points_xy)`` returns, for each of them, its output already flattened
    like a head output: ``(N, H*W*A, out_i)`` in the y -> x -> anchor order. ``sampler``
    (``quantize.rewrites.sampling.SAMPLERS``) says how the samples are read; with
    ``tail=True`` nothing is read in the graph: ``table(features)`` is what the SDK reads.
    """

    def __init__(self, convs: Sequence[BoxOffsetConv2d], sampler: str = "gather",
                 tail: bool = False, anchors_in_one_product: bool = False,
                 rows_in_float: bool = False) -> None:
        super().__init__()
        self.sampler = check_sampler(sampler)
        self.tail = tail
        # The gather read's forms (bilinear_tap_sum_xy's groups_in_one_product and
        # rows_in_float): a position's anchors summed in one matrix product; the row
        # indices computed in float32.
        self.anchors_in_one_product = anchors_in_one_product
        self.rows_in_float = rows_in_float
        if not convs:
            raise ValueError("PackedBoxOffsetConv needs at least one BoxOffsetConv2d")
        first = convs[0]
        for conv in convs:
            if (conv.in_channels, conv.num_anchors, conv.kernel_size) != (
                    first.in_channels, first.num_anchors, first.kernel_size):
                raise ValueError("packed offset convs must share in_channels, num_anchors and "
                                 "kernel_size (they read the same taps)")
        self.num_anchors = first.num_anchors
        self.num_taps = first.kernel_size**2
        self.split_sizes = [conv.out_channels_per_anchor for conv in convs]
        a, c, k = self.num_anchors, first.in_channels, self.num_taps
        # (A*out, C, k, k) -> (A, out, C, k*k): tap t = i*k + j, the row-major order of
        # box_sampling_points.
        weights = torch.cat(
            [conv.weight.detach().reshape(a, conv.out_channels_per_anchor, c, k)
             for conv in convs], dim=1)  # (A, O, C, T)
        # Columns ordered (anchor, tap, output) so the product reshapes to (.., A, T, O).
        projection = weights.permute(2, 0, 3, 1).reshape(c, -1)  # (C, A*T*O)
        if sampler == "grid_sample" or tail:
            # A 1x1 conv weight (A*T*O, C, 1, 1): GridSample reads channels-first maps; for
            # the tail, ONNX Runtime's INT8 1x1 conv followed by the transpose to channels-last
            # ran faster than the MatMul (paper-width PASSD INT8, one interleaved run on the
            # AMX CPU: 13.23 against 13.88 ms). In fp32 the MatMul of the channels-last
            # features is faster: the cpu target's fp32 build rewrites the exported graph
            # (quantize.attend_tail.tables_as_matmul).
            projection = projection.t().reshape(-1, c, 1, 1)
        self.projection = nn.Parameter(projection.clone())
        self.bias = nn.Parameter(torch.cat(
            [conv.bias.detach().reshape(a, conv.out_channels_per_anchor) for conv in convs],
            dim=1).clone())  # (A, O)

    def table(self, features: Tensor) -> Tensor:
        """The tail's table: ``features (N, C, H, W)`` -> ``(N, H, W, A*T*O)``, channels-last
        (columns ordered anchor, tap, output), so a corner read is one contiguous row.

        Four dimensions, not ``(N, H*W, A*T*O)``: ONNX Runtime copies a graph output that is
        a ``Reshape`` of another tensor, and writes a ``Transpose`` of a conv straight into
        the output. The paper-width PASSD lost 2.1 ms (fp32) and 0.44 ms (INT8) of 31 / 11
        ms kernel time to that copy (profiler, ORT 1.32)."""
        return F.conv2d(features, self.projection).permute(0, 2, 3, 1)

    def forward(self, features: Tensor, points_xy: Tensor | tuple[Tensor, Tensor]
                ) -> list[Tensor]:
        """``features (N, C, H, W)``, ``points_xy (N, A, T, H, W, 2)`` (or, for the
        ``gather`` sampler, ``xy_sampling_points``' two ``(N, H, W, A, T)`` planes)
        -> ``[(N, H*W*A, out_i)]``."""
        if self.tail:
            raise RuntimeError("a tail PackedBoxOffsetConv reads no samples: the SDK sums "
                               "them from table() (edgedet.attend_tail)")
        n, c, h, w = features.shape
        a, t = self.num_anchors, self.num_taps
        if self.sampler == "grid_sample":
            if isinstance(points_xy, tuple):
                raise TypeError("the grid_sample sampler reads (N, A, T, H, W, 2) points")
            maps = F.conv2d(features, self.projection).reshape(n, a, t, -1, h, w)
            points = points_xy.reshape(n, a, t, h * w, 2)
            out = grid_sample_tap_sum(maps, points).permute(0, 3, 1, 2)  # (N, H*W, A, O)
        else:
            table = torch.matmul(features.reshape(n, c, h * w).transpose(1, 2),
                                 self.projection).reshape(n, h * w, a, t, -1)
            if isinstance(points_xy, tuple):
                x, y = (plane.reshape(n, h * w, a, t) for plane in points_xy)
            else:
                points = points_xy.permute(0, 3, 4, 1, 2, 5).reshape(n, h * w, a, t, 2)
                x, y = points[..., 0], points[..., 1]
            out = bilinear_tap_sum_xy(  # (N, H*W, A, O)
                table, x, y, h, w, groups_in_one_product=self.anchors_in_one_product,
                rows_in_float=self.rows_in_float)
        out = out + self.bias
        return [part.reshape(n, h * w * a, size)
                for part, size in zip(out.split(self.split_sizes, dim=-1), self.split_sizes,
                                      strict=True)]


class ExportProposeAttendHead(nn.Module):
    """Drop-in replacement of a ``ProposeAttendHead`` built with ``use_attend=True``.

    Same ``forward(features, priors_cxcywh, strides)`` and the same outputs (see
    ``ProposeAttendHead.forward``); the propose convs are copies of the training ones. With
    ``tail=True``, ``cls_logits`` and ``box_deltas`` are replaced by each level's
    ``attend_table_<l>`` ``(N, H, W, A*T*O)``, and the SDK computes the sampling points from
    ``propose_deltas`` (``edgedet.attend_tail``; artifacts before 2026-12-07, fourth session,
    also had ``attend_points_<l>`` outputs).
    """

    def __init__(self, head: ProposeAttendHead, sampler: str = "gather",
                 tail: bool = False, anchors_in_one_product: bool = False,
                 rows_in_float: bool = False) -> None:
        super().__init__()
        if not head.use_attend:
            raise ValueError("ExportProposeAttendHead replaces the attend stage; this head was "
                             "built with use_attend=False (plain convs need no rewrite)")
        self.num_logits = head.num_logits
        self.num_anchors = head.num_anchors
        self.box_coder_weights = head.box_coder_weights
        self.clip_propose_offsets = head.clip_propose_offsets
        self.propose_objectness = head.propose_objectness
        self.propose_box = head.propose_box
        self.tail = tail
        self.attend = PackedBoxOffsetConv([head.attend_cls, head.attend_box], sampler, tail,
                                          anchors_in_one_product, rows_in_float)
        # The grid_sample sampler is ONNX Runtime's, and so is the planar form of the points;
        # the gather read takes x and y as planes. (With the tail the SDK computes them.)
        self.sampling_points: Callable[[Tensor, float], Tensor | tuple[Tensor, Tensor]] = (
            planar_sampling_points if sampler == "grid_sample" else xy_sampling_points)

    def forward(self, features: Sequence[Tensor], priors_cxcywh: Sequence[Tensor],
                strides: Sequence[int]) -> dict[str, Tensor]:
        """Same contract as ``ProposeAttendHead.forward``."""
        outputs: dict[str, list[Tensor]] = {
            "objectness_logits": [], "propose_deltas": [], "adjusted_priors_cxcywh": [],
            **({} if self.tail else {"cls_logits": [], "box_deltas": []}),
        }
        per_level: dict[str, Tensor] = {}
        for level, (feature, priors, stride) in enumerate(
                zip(features, priors_cxcywh, strides, strict=True)):
            n, _, h, w = feature.shape
            raw = self.propose_box(feature).permute(0, 2, 3, 1).reshape(n, h, w,
                                                                        self.num_anchors, 4)
            deltas = self._clip(raw, priors, stride)
            adjusted = decode_cxcywh(deltas, priors, self.box_coder_weights)
            if self.tail:
                # The SDK computes the points from propose_deltas (edgedet.attend_tail).
                per_level[f"{TABLE_PREFIX}{level}"] = self.attend.table(feature)
            else:
                cls, box = self.attend(feature, self.sampling_points(adjusted, float(stride)))
                outputs["cls_logits"].append(cls)
                outputs["box_deltas"].append(box)
            outputs["objectness_logits"].append(
                flatten_head_output(self.propose_objectness(feature), 2))
            outputs["propose_deltas"].append(deltas.reshape(n, -1, 4))
            outputs["adjusted_priors_cxcywh"].append(adjusted.reshape(n, -1, 4))
        return {**{key: torch.cat(value, dim=1) for key, value in outputs.items()}, **per_level}

    def _clip(self, raw: Tensor, priors: Tensor, stride: int) -> Tensor:
        """Eq. 2, as ``ProposeAttendHead._clip``: ``raw (N, H, W, A, 4)``,
        ``priors (H, W, A, 4)``."""
        if not self.clip_propose_offsets:
            return raw
        xy_weights = raw.new_tensor(self.box_coder_weights[:2])
        max_shift = xy_weights * stride / (2 * priors[..., 2:])
        return torch.cat([torch.tanh(raw[..., :2]) * max_shift, raw[..., 2:]], dim=-1)
