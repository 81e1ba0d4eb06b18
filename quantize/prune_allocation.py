"""Per-part pruning ratios from a measured sensitivity (``quantize/prune.py --allocation
sensitivity``).

Uniform pruning removes the same fraction of every layer's channels. Li et al. ("Pruning
Filters for Efficient ConvNets", ICLR 2017) instead prune each layer alone, measure how much
accuracy it costs, and prune the sensitive layers less. Here that is done per *part* of the
network (``network_parts``: for the edge HAR-Net the stem, the four ResNet stages, the aligned
attention, the FPN and the head's class and box towers), since a part's channels are coupled
inside it anyway (residual adds, CLGN groups):

1. each part alone is pruned by ``probe_ratio`` and the validation AP it loses and the GFLOPs
   it saves are measured (``measure_sensitivity``);
2. its weight is the GFLOPs it saves per AP point it costs, over the mean of all parts
   (``allocation_weights``, clipped to ``WEIGHT_RANGE`` so that no part is spared or gutted
   on the evidence of one probe);
3. ``pruning.prune_to_flops`` bisects the common ratio as for uniform pruning, each part
   taking the common ratio times its weight (at most ``pruning.MAX_PART_RATIO``).

The one-probe sensitivity and the proportional rule are this project's simplification of the
paper's per-layer curves: one pruned copy and one evaluation per part, a few minutes on a CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from edgedet.models.summary import count_gflops
from quantize.pruning import fixed_width_layers, prune_channels

WEIGHT_RANGE = (0.25, 2.0)
# An AP drop below this (in AP as 0-1, i.e. 0.1 point) counts as this: a part that costs
# nothing measurable gets the largest weight, not an infinite one.
MIN_AP_DROP = 1e-3


@dataclass(frozen=True)
class PartSensitivity:
    """One part pruned alone by the probe ratio: GFLOPs saved and AP lost (0-1)."""

    part: str
    gflops_saved: float
    ap_drop: float


def network_parts(model: nn.Module) -> list[str]:
    """Names of the submodules whose channels are pruned together, in model order: each
    child of ``backbone`` and of ``head.branches`` (where they exist), every other top-level
    child; only those holding a conv whose width pruning may change."""
    fixed = {id(m) for m in fixed_width_layers(model)}

    def prunable(module: nn.Module) -> bool:
        return any(isinstance(m, nn.Conv2d) and id(m) not in fixed for m in module.modules())

    parts: list[str] = []
    for name, child in model.named_children():
        if name not in ("backbone", "head"):
            parts += [name] if prunable(child) else []
            continue
        group, prefix = child, name
        if name == "head" and hasattr(child, "branches"):
            group, prefix = child.branches, "head.branches"
        parts += [f"{prefix}.{n}" for n, c in group.named_children() if prunable(c)]
    return parts


def measure_sensitivity(model: nn.Module, input_size: tuple[int, int], parts: Sequence[str],
                        evaluate: Callable[[nn.Module], float], probe_ratio: float = 0.5,
                        criterion: str = "l2", round_to: int = 16,
                        progress: Callable[[str], None] | None = None
                        ) -> list[PartSensitivity]:
    """Prune each part of ``model`` alone by ``probe_ratio`` (on copies) and measure.

    ``evaluate(model) -> AP`` (0-1) scores a model; it is called once on ``model`` and once
    per part.
    """
    base_ap = evaluate(model)
    base_gflops = count_gflops(model, input_size)
    results = []
    for part in parts:
        if progress is not None:
            progress(part)
        probe = prune_channels(copy.deepcopy(model), input_size, 0.0, criterion, round_to,
                               part_ratios={part: probe_ratio})
        results.append(PartSensitivity(part, base_gflops - count_gflops(probe, input_size),
                                       base_ap - evaluate(probe)))
    return results


def allocation_weights(sensitivities: Sequence[PartSensitivity]) -> dict[str, float]:
    """``{part: weight}``: GFLOPs saved per AP lost, over the parts' mean, clipped to
    ``WEIGHT_RANGE``; a part whose probe saved nothing gets the smallest weight."""
    efficiency = {s.part: s.gflops_saved / max(s.ap_drop, MIN_AP_DROP) for s in sensitivities}
    useful = [e for e in efficiency.values() if e > 0]
    if not useful:
        raise ValueError("no part's probe saved any GFLOPs: nothing to allocate")
    mean = sum(useful) / len(useful)
    low, high = WEIGHT_RANGE
    return {part: min(high, max(low, e / mean)) for part, e in efficiency.items()}


def weights_record(sensitivities: Sequence[PartSensitivity],
                   weights: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The allocation as ``prune_log.json`` records it."""
    return {s.part: {"gflops_saved": round(s.gflops_saved, 4), "ap_drop": round(s.ap_drop, 5),
                     "weight": round(weights[s.part], 4)} for s in sensitivities}


__all__ = [
    "MIN_AP_DROP",
    "WEIGHT_RANGE",
    "PartSensitivity",
    "allocation_weights",
    "measure_sensitivity",
    "network_parts",
    "weights_record",
]
