"""Module swaps that make the detectors' unusual layers export to every target, fast.

``rewrite_for_export(model)`` returns an eval-mode deep copy in which

* PASSD's ``ProposeAttendHead`` (attend stage with P&A offset convs) becomes
  ``ExportProposeAttendHead`` (projection + Gather or GridSample sampling, sampling points
  from the propose outputs computed in the graph; with ``attend_tail=True`` the graph ends at
  the tables and points and the SDK sums the samples, ``edgedet.attend_tail``);
* every ``DeformConv2d`` (HAR-Net's aligned attention) becomes ``ExportDeformConv2d``
  (projection + the same sampling; no ONNX ``DeformConv``, which OpenVINO cannot import);
* every ``SelfAttention2d`` (DSANet) becomes ``ExportSelfAttention2d`` (fused QKV conv,
  MatMul / Softmax with static shapes).

Each replacement computes the same function as the module it replaces (tested to ~1e-5 on
random weights and inputs, module by module and on whole detectors). The training model is
never modified.
"""

from __future__ import annotations

import copy

from torch import nn

from edgedet.attend_tail import TABLE_PREFIX
from edgedet.models.attention import SelfAttention2d
from edgedet.models.deform_conv import DeformConv2d
from edgedet.models.pa_head import ProposeAttendHead
from quantize.rewrites.deform_conv import ExportDeformConv2d
from quantize.rewrites.pa_head import ExportProposeAttendHead, PackedBoxOffsetConv
from quantize.rewrites.sampling import (
    SAMPLERS,
    bilinear_tap_sum,
    check_sampler,
    grid_sample_tap_sum,
)
from quantize.rewrites.self_attention import ExportSelfAttention2d


def _replacement(module: nn.Module, sampler: str, tail: bool = False,
                 gather_forms: tuple[bool, bool] = (False, False)) -> nn.Module | None:
    """The export module standing in for ``module``, or None when it needs no rewrite."""
    if isinstance(module, ProposeAttendHead) and module.use_attend:
        return ExportProposeAttendHead(module, sampler, tail, *gather_forms)
    if isinstance(module, DeformConv2d):
        return ExportDeformConv2d(module, sampler)
    if isinstance(module, SelfAttention2d):
        return ExportSelfAttention2d(module)
    return None


def _swap_children(module: nn.Module, counts: dict[str, int], sampler: str,
                   tail: bool, gather_forms: tuple[bool, bool]) -> None:
    for name, child in module.named_children():
        replacement = _replacement(child, sampler, tail, gather_forms)
        if replacement is None:
            _swap_children(child, counts, sampler, tail, gather_forms)
            continue
        setattr(module, name, replacement)
        key = type(child).__name__
        counts[key] = counts.get(key, 0) + 1


def rewrite_for_export(model: nn.Module, sampler: str = "gather",
                       attend_tail: bool = False,
                       anchors_in_one_product: bool = False,
                       rows_in_float: bool = False) -> nn.Module:
    """An eval-mode deep copy of ``model`` with every exportable-layer rewrite applied.

    ``sampler`` (``quantize.rewrites.sampling.SAMPLERS``) is how the P&A and deformable
    rewrites read their bilinear samples: ``"gather"`` exports everywhere, ``"grid_sample"``
    is faster where the runtime has a good ``GridSample`` (each target says which).
    ``attend_tail``: the P&A head leaves the attend stage's tap sum to the SDK; the copy's
    ``export_output_names`` then list each level's table instead of ``cls_logits`` and
    ``box_deltas`` (the SDK computes the sampling points: ``edgedet.attend_tail``). Other
    layers are unaffected.
    ``anchors_in_one_product`` / ``rows_in_float``: with the ``gather`` sampler, the P&A tap
    sums of a position's anchors as one matrix product, and the read's row indices computed
    in float32 (``sampling.bilinear_tap_sum_xy``'s ``groups_in_one_product`` /
    ``rows_in_float``; the deformable conv keeps integer rows); each target says which
    (``Target.export_options``).

    The copy's attribute ``export_rewrites`` maps the replaced module types to how many were
    replaced (e.g. ``{"DeformConv2d": 2}``); an empty dict means the model needed none
    (DAIPNet, RetinaNet, PASSD without the attend stage).
    """
    check_sampler(sampler)  # before the deep copy: a bad name costs nothing
    rewritten = copy.deepcopy(model).eval()
    counts: dict[str, int] = {}
    gather_forms = (anchors_in_one_product, rows_in_float)
    root_replacement = _replacement(rewritten, sampler, attend_tail, gather_forms)
    if root_replacement is not None:
        rewritten = root_replacement.eval()
        counts[type(model).__name__] = 1
    else:
        _swap_children(rewritten, counts, sampler, attend_tail, gather_forms)
    if attend_tail and counts.get("ProposeAttendHead"):
        levels = range(len(rewritten.strides))  # a detector with a P&A head: PASSD
        rewritten.export_output_names = (
            *(n for n in rewritten.export_output_names if n not in ("cls_logits", "box_deltas")),
            *(f"{TABLE_PREFIX}{level}" for level in levels))
    rewritten.export_rewrites = counts
    return rewritten


__all__ = [
    "SAMPLERS",
    "ExportDeformConv2d",
    "ExportProposeAttendHead",
    "ExportSelfAttention2d",
    "PackedBoxOffsetConv",
    "bilinear_tap_sum",
    "grid_sample_tap_sum",
    "rewrite_for_export",
]
