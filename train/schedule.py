"""Optimiser and learning-rate schedule of the papers: SGD with momentum and weight decay,
linear warm-up, step decay (AdamW too, for short from-scratch runs).

The schedule is a pure function of the global iteration, so resuming needs only the
iteration number (no scheduler object whose hidden state could drift).

Paper settings (batch 32 unless said; ``--lr-steps`` in epochs):

======================  =========  ============  ===============  =====================
model                   lr         warm-up       steps (epochs)   epochs
======================  =========  ============  ===============  =====================
PASSD VOC / COCO        4e-3/2e-3  5 epochs      150,200 / 80,100 250 / 120
DAIPNet COCO / VOC      4e-3       6 epochs      90,120,140 / 150,200   160 / 250
HAR-Net (20 img/iter)   0.0125     -             48k, 64k iters   72k iters
DSANet (16 img/iter)    0.01       -             9 (mmdet: 8, 11) 12
======================  =========  ============  ===============  =====================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn, optim


@dataclass(frozen=True)
class LrSchedule:
    """Learning rate at a global iteration.

    Attributes:
        base_lr: the rate after warm-up, before any decay.
        iters_per_epoch: optimiser steps per epoch (turns epoch milestones into iterations).
        warmup_iters: iterations of linear warm-up from ``warmup_start_lr`` to ``base_lr``.
        warmup_start_lr: rate at iteration 0 (the papers warm up from 1e-6).
        lr_steps: epochs (may be fractional) after which the rate is multiplied by ``gamma``.
        gamma: decay factor per milestone.
    """

    base_lr: float
    iters_per_epoch: int
    warmup_iters: int = 0
    warmup_start_lr: float = 1e-6
    lr_steps: tuple[float, ...] = ()
    gamma: float = 0.1

    def __call__(self, iteration: int) -> float:
        passed = sum(iteration >= round(step * self.iters_per_epoch) for step in self.lr_steps)
        lr = self.base_lr * self.gamma ** passed
        if iteration < self.warmup_iters:
            fraction = iteration / self.warmup_iters
            lr = self.warmup_start_lr + (lr - self.warmup_start_lr) * fraction
        return lr


def build_sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> optim.SGD:
    """SGD over every trainable parameter (the papers decay all weights, BN included)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_adamw(model: nn.Module, lr: float, beta1: float, weight_decay: float) -> optim.AdamW:
    """AdamW with weight decay on conv/linear weights only (not on BatchNorm or biases).

    Not the papers' optimiser: it is for short from-scratch runs (a CPU, a small synthetic
    set), where SGD spends hundreds of iterations on the "everything is background"
    plateau before it finds the objects. Decaying BN scales towards zero would fight the
    normalisation, hence the two groups (the usual split in timm and ultralytics).
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return optim.AdamW(groups, lr=lr, betas=(beta1, 0.999))


def build_optimizer(name: str, model: nn.Module, lr: float, momentum: float,
                    weight_decay: float) -> optim.Optimizer:
    """``"sgd"`` (the papers') or ``"adamw"`` (``momentum`` becomes AdamW's beta1)."""
    if name == "sgd":
        return build_sgd(model, lr, momentum, weight_decay)
    if name == "adamw":
        return build_adamw(model, lr, momentum, weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (sgd or adamw)")


def flag_values(optimizer: optim.Optimizer) -> dict[str, float]:
    """The ``--weight-decay`` and ``--momentum`` an optimiser built by ``build_optimizer`` has
    now (a resumed one keeps its state's): the first group is the decayed one in both, and
    AdamW's beta1 is ``--momentum``."""
    group = optimizer.param_groups[0]
    momentum = group["betas"][0] if "betas" in group else group.get("momentum", 0.0)
    return {"weight_decay": float(group["weight_decay"]), "momentum": float(momentum)}


def set_lr(optimizer: optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def parse_steps(text: str) -> tuple[float, ...]:
    """``"80,100"`` → ``(80.0, 100.0)``; empty → no decay."""
    if not text.strip():
        return ()
    try:
        steps = tuple(float(v) for v in text.split(","))
    except ValueError as error:
        raise ValueError(f"--lr-steps must be comma-separated epochs, got {text!r}") from error
    if not all(math.isfinite(v) for v in steps):
        raise ValueError(f"--lr-steps must be finite epochs, got {text!r}")
    if list(steps) != sorted(steps) or min(steps) < 0:
        raise ValueError(f"--lr-steps must be increasing non-negative epochs, got {text!r}")
    return steps


def describe(schedule: LrSchedule, epochs: int, steps: Sequence[float]) -> str:
    return (f"lr {schedule.base_lr:g}, warm-up {schedule.warmup_iters} iters, "
            f"x{schedule.gamma:g} at epochs {list(steps) or 'never'}, {epochs} epochs "
            f"of {schedule.iters_per_epoch} iters")
