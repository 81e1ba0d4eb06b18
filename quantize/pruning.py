"""Structured channel pruning of HAR-Net with torch-pruning's dependency graph.

``prune_to_flops(model, input_size, target_gflops, criterion)`` removes whole channels until the
network's GFLOPs (``edgedet.models.summary.count_gflops``) reach the target, and returns the
narrower model. ``torch_pruning.DependencyGraph`` traces the network and groups every tensor
slice that must go together (a conv's output channels, the next BN, the next convs' inputs,
residual adds, FPN top-down sums); a criterion scores each group and the lowest-scoring
channels of every prunable layer go, the same fraction everywhere (uniform pruning keeps the
per-layer latency balance a global ranking would upset), or a fraction per part of the
network measured from its sensitivity (``part_ratios`` / ``part_weights``,
``quantize.prune_allocation``).

HAR-Net's attention couples channels in ways a plain tracer cannot see or must not touch, so
the trace runs on a *tracing view* of the network (``_TracingView``), equal in dependencies:

- **CLGN** normalises the concatenated levels. Each ``CrossLevelGroupNorm`` is stood in for by
  one ``nn.GroupNorm`` applied per level that shares its weight and bias; torch-pruning removes
  the same position in every group (``get_*_channel_groups``), so the 16 groups stay 16 and
  equal-sized. The pruned affine is copied back afterwards.
- **CLSE** needs nothing: its max-pooled vectors are concatenated on the channel axis, which
  torch-pruning maps, so removing channel c of a branch removes input c of each level's slice
  of ``fc1`` and output c of ``fc2``. The hidden width of ``fc1`` (the paper's r = 16) is kept.
- **Spatial attention**: its C = 16 dilated convs are the paper's width and cost little, so they
  are kept; only the first conv's inputs follow the FPN. Its 1-channel mask multiplies both
  branches by broadcasting, which is no channel dependency, so the trace sees the mask detached
  and the mask itself as an extra output (its convs stay in the graph).
- **Aligned attention**: the deformable conv is a ``DeformConv2d`` (a custom layer, pruned by
  ``_DeformConvPruner``); its 18 offset channels are fixed by the 3x3 kernel, so the offset
  conv's outputs are kept and the trace sees the offsets detached (offsets as extra outputs).
  The reduce/expand convs and the residual follow the trunk's C4 / C5 channels.
- The class / box predictors keep their outputs (anchors x classes, anchors x 4).

Every remaining width is a multiple of ``round_to`` (16 by default: INT8 kernels' vector width,
and CLGN's group count).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from edgedet.models.attention import (
    AlignedAttention,
    CrossLevelGroupNorm,
    CrossLevelSE,
    SpatialAttention,
)
from edgedet.models.builders import builder_of
from edgedet.models.channel_plan import channel_plan_of
from edgedet.models.deform_conv import DeformConv2d
from edgedet.models.summary import count_gflops, count_parameters

CRITERIA: dict[str, Callable[[], tp.importance.Importance]] = {
    # Group magnitude: the norm of every weight slice a channel removes (conv rows, BN / CLGN
    # scale, next layers' input columns), averaged over the group.
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    # Geometric median: channels closest to the others are the most replaceable.
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    # A floor for the measured ones: which AP does an uninformed choice keep?
    "random": lambda: tp.importance.RandomImportance(),
}


class _DeformConvPruner(tp.pruner.function.BasePruningFunc):
    """torch-pruning functions for ``DeformConv2d`` (weight ``(C_out, C_in, kh, kw)``)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.out_channels)) - set(idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.out_channels = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.in_channels)) - set(idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        layer.in_channels = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels


class _PerLevelGroupNorm(nn.Module):
    """A CLGN's stand-in during tracing: one ``nn.GroupNorm`` applied to each level."""

    def __init__(self, clgn: CrossLevelGroupNorm) -> None:
        super().__init__()
        self.clgn = [clgn]  # a list: not a submodule, so the tracer does not see it
        self.norm = nn.GroupNorm(clgn.num_groups, clgn.weight.shape[0], clgn.eps)
        self.norm.weight, self.norm.bias = clgn.weight, clgn.bias

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        return [self.norm(level) for level in levels]

    def restore(self) -> CrossLevelGroupNorm:
        clgn = self.clgn[0]
        clgn.weight, clgn.bias = self.norm.weight, self.norm.bias
        return clgn


class _TracingView:
    """Context manager: the network as the tracer should see it (see the module docstring).

    Inside it, ``forward(model, images)`` returns the export outputs plus the detached side
    outputs (spatial masks, deformable offsets); on exit the CLGN modules are put back with
    their (possibly pruned) affine parameters.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.side_outputs: list[Tensor] = []
        self._stand_ins: list[tuple[nn.ModuleList, int, _PerLevelGroupNorm]] = []
        self._patched: list[nn.Module] = []

    def __enter__(self) -> _TracingView:
        for module in list(self.model.modules()):
            if isinstance(module, nn.ModuleList):
                for index, child in enumerate(module):
                    if isinstance(child, CrossLevelGroupNorm):
                        stand_in = _PerLevelGroupNorm(child)
                        module[index] = stand_in
                        self._stand_ins.append((module, index, stand_in))
        for module in self.model.modules():
            if isinstance(module, SpatialAttention):
                module.forward = self._detached_mask(module)
                self._patched.append(module)
            elif isinstance(module, DeformConv2d):
                module.forward = self._detached_offsets(module)
                self._patched.append(module)
        return self

    def __exit__(self, *exc: object) -> None:
        for module_list, index, stand_in in self._stand_ins:
            module_list[index] = stand_in.restore()
        for module in self._patched:
            del module.forward  # back to the class's forward

    def _detached_mask(self, module: SpatialAttention) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            mask = torch.sigmoid(module.layers(x))
            self.side_outputs.append(mask)
            return mask.detach()
        return forward

    def _detached_offsets(self, module: DeformConv2d) -> Callable[..., Tensor]:
        def forward(x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
            self.side_outputs.append(offset)
            # Same channels in and out as the deformable conv, without the offset edge.
            return F.conv2d(x, module.weight, module.bias, module.stride, module.padding,
                            module.dilation, module.groups)
        return forward

    def forward(self, model: nn.Module, images: Tensor) -> list[Tensor]:
        self.side_outputs.clear()
        outputs = list(model.forward_export(images))
        return outputs + list(self.side_outputs)


def fixed_width_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose output channels are part of the design, not of the capacity: predictors,
    the spatial-attention branch, deformable offsets, CLSE's hidden layer (module docstring)."""
    fixed: list[nn.Module] = []
    head = getattr(model, "head", None)
    for name in ("cls_logits", "box_deltas"):
        if head is not None and hasattr(head, name):
            fixed.append(getattr(head, name))
    for module in model.modules():
        if isinstance(module, SpatialAttention):
            fixed.extend(m for m in module.modules() if isinstance(m, nn.Conv2d))
        elif isinstance(module, AlignedAttention):
            fixed.append(module.offset)
        elif isinstance(module, CrossLevelSE):
            fixed.append(module.fc1)
    return fixed


def _group_normalised_convs(model: nn.Module) -> list[nn.Module]:
    """Convs whose outputs a CLGN normalises (their channels are pruned group by group)."""
    convs: list[nn.Module] = []
    for module in model.modules():
        norms = getattr(module, "norms", None)
        if isinstance(norms, nn.ModuleList) and any(
                isinstance(n, CrossLevelGroupNorm) for n in norms):
            convs.extend(module.convs)
    return convs


def _prune_pass(model: nn.Module, images: Tensor, ratio: float, criterion: str,
                ignored: list[nn.Module], round_to: int | None,
                part_ratios: Mapping[str, float]) -> None:
    # A part's ratio reaches every layer inside it; a channel group takes the ratio of the
    # layer it starts from (torch-pruning's rule).
    ratio_dict = {model.get_submodule(name): r for name, r in part_ratios.items()} or None
    with _TracingView(model) as view:
        pruner = tp.pruner.BasePruner(
            model, images, importance=CRITERIA[criterion](), pruning_ratio=ratio,
            pruning_ratio_dict=ratio_dict, ignored_layers=ignored, round_to=round_to,
            customized_pruners={DeformConv2d: _DeformConvPruner()},
            # The deformable conv must be a root too: torch-pruning only starts channel groups
            # at its root types, so without it the aligned attention's output channels were
            # never pruned (its input channels were, from the conv before it).
            root_module_types=[nn.modules.conv._ConvNd, nn.Linear, DeformConv2d],
            forward_fn=view.forward,
        )
        pruner.step()


def prune_channels(model: nn.Module, input_size: tuple[int, int], ratio: float,
                   criterion: str = "l2", round_to: int = 16,
                   part_ratios: Mapping[str, float] | None = None) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable layer of ``model`` (in place);
    ``part_ratios`` (``{submodule name: ratio}``) gives the layers inside those submodules
    their own ratio instead.

    ``input_size`` is ``(width, height)`` of the trace input. Returns ``model``.

    Two passes: every layer but the CLGN-normalised head convs, rounded to ``round_to``; then
    those convs, where torch-pruning removes the same positions from each of the CLGN's groups
    (its ``round_to`` does not understand channel groups, and equal groups are a multiple of
    the group count anyway, 16 in the edge HAR-Net).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; known: {sorted(CRITERIA)}")
    width, height = input_size
    images = torch.zeros(1, 3, height, width)
    model.eval()
    fixed = fixed_width_layers(model)
    grouped = _group_normalised_convs(model)
    parts = dict(part_ratios or {})
    _prune_pass(model, images, ratio, criterion, fixed + grouped, round_to, parts)
    if grouped:
        others = [m for m in model.modules()
                  if isinstance(m, nn.Conv2d | nn.Linear | DeformConv2d)
                  and not any(m is g for g in grouped)]
        _prune_pass(model, images, ratio, criterion, others, None, parts)
    return model


# The most a weighted part may lose (``prune_to_flops``'s ``part_weights``): a layer keeps at
# least a tenth of its channels.
MAX_PART_RATIO = 0.9


@dataclass(frozen=True)
class PruneResult:
    """One pruning step: the ratio found and the network's size before and after."""

    ratio: float
    gflops_before: float
    gflops_after: float
    params_before: int
    params_after: int


def prune_to_flops(model: nn.Module, input_size: tuple[int, int], target_gflops: float,
                   criterion: str = "l2", round_to: int = 16, tolerance: float = 0.02,
                   part_weights: Mapping[str, float] | None = None
                   ) -> tuple[nn.Module, PruneResult]:
    """The smallest uniform channel ratio that brings ``model`` to ``target_gflops`` or less.

    Bisects the ratio on copies (GFLOPs fall monotonically with it, in steps of ``round_to``
    channels, as long as no layer is asked to keep fewer than ``round_to``: the ratios stay
    under that) and returns a pruned copy; ``model`` itself is left as it is. With
    ``part_weights`` (``{submodule name: weight}``, ``quantize.prune_allocation``) each of
    those parts is pruned by the ratio times its weight, at most ``MAX_PART_RATIO``.
    """
    weights = dict(part_weights or {})
    # A ratio that would leave a layer fewer than round_to channels makes torch-pruning skip
    # the layer altogether, so GFLOPs would rise again past it: every ratio stays below that.
    fixed = fixed_width_layers(model)

    def ceiling(layers: list[nn.Module]) -> float:
        widths = [m.weight.shape[0] for m in layers
                  if isinstance(m, nn.Conv2d | nn.Linear | DeformConv2d)
                  and not any(m is f for f in fixed)]
        return min((1.0 - round_to / w for w in widths if w > round_to), default=1.0)

    part_layers = {name: list(model.get_submodule(name).modules()) for name in weights}
    part_ceilings = {name: min(MAX_PART_RATIO, ceiling(layers))
                     for name, layers in part_layers.items()}
    in_parts = {id(m) for layers in part_layers.values() for m in layers}
    # The global ratio reaches the layers outside every part; past the point where each part
    # sits at its own ceiling, a larger one changes nothing in them.
    high = ceiling([m for m in model.modules() if id(m) not in in_parts])
    capped_at = [part_ceilings[name] / w for name, w in weights.items() if w > 0]
    if capped_at:
        high = min(high, max(capped_at))

    def part_ratios(ratio: float) -> dict[str, float]:
        return {name: min(part_ceilings[name], ratio * w) for name, w in weights.items()}

    gflops_before = count_gflops(model, input_size)
    if target_gflops >= gflops_before:
        raise ValueError(f"the model has {gflops_before:.3f} GFLOPs, already within the "
                         f"target {target_gflops:.3f}")
    low, high = 0.0, min(0.95, high)
    best: tuple[float, nn.Module, float] | None = None
    while high - low > tolerance / 2:
        ratio = (low + high) / 2
        candidate = prune_channels(copy.deepcopy(model), input_size, ratio, criterion, round_to,
                                   part_ratios(ratio))
        gflops = count_gflops(candidate, input_size)
        if gflops <= target_gflops:
            high = ratio
            best = (ratio, candidate, gflops)
        else:
            low = ratio
    if best is None:
        raise ValueError(f"no channel ratio up to {high:.2f} reaches {target_gflops:.3f} GFLOPs")
    ratio, pruned, gflops_after = best
    return pruned, PruneResult(
        ratio=round(ratio, 4), gflops_before=gflops_before, gflops_after=gflops_after,
        params_before=count_parameters(model), params_after=count_parameters(pruned))


def pruned_config(model: nn.Module) -> dict:
    """``model.config`` with the ``channel_plan`` against its builder's full network."""
    config = {k: v for k, v in model.config.items() if k != "channel_plan"}
    reference = builder_of(config["architecture"])(**config["kwargs"])
    return {**config, "channel_plan": channel_plan_of(model, reference)}


def geometric_targets(gflops: float, final_ratio: float, steps: int) -> list[float]:
    """GFLOPs after each of ``steps`` steps, shrinking by the same factor each step."""
    return [gflops * final_ratio ** ((i + 1) / steps) for i in range(steps)]


__all__ = ["CRITERIA", "MAX_PART_RATIO", "PruneResult", "fixed_width_layers", "geometric_targets",
           "prune_channels", "prune_to_flops", "pruned_config"]
