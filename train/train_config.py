"""``TrainConfig``: the hyper-parameters of a training run (``train/main.py`` fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Hyper-parameters of a run (``train/main.py`` fills it from its flags).

    ``batch_size`` is per process: the global batch is ``batch_size * world_size``.
    ``warmup_iters`` None means min(500, one epoch).
    ``optimizer`` is ``"sgd"`` (the papers') or ``"adamw"`` (``momentum`` is then its beta1).
    ``freeze_bn`` keeps every BatchNorm layer on its running statistics during training (mmdet's
    ``norm_eval``, usual with a pretrained backbone and small per-GPU batches).
    ``channels_last`` keeps weights and images in channels-last memory format (faster convs
    on CPU: +6% zoo PASSD, +12% paper-width PASSD in ``train/bench.py``).
    ``save_every_minutes`` > 0 also writes the resume state within an epoch, at most that
    often (0: at epoch ends only).
    ``incremental_epochs`` > 0 trains HAR-Net's main network for that many epochs with the
    spatial and channel attention switched off, then switches them on (HAR-Net sec. III-D).
    """

    epochs: int = 1
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int | None = None
    warmup_start_lr: float = 1e-6
    lr_steps: tuple[float, ...] = ()
    lr_gamma: float = 0.1
    workers: int = 0
    amp: str | None = None
    eval_every: int = 1
    seed: int = 0
    clip_grad_norm: float = 0.0
    max_bad_steps: int = 10
    save_every_minutes: float = 0.0
    channels_last: bool = False
    incremental_epochs: int = 0
    freeze_bn: bool = False
    progress_bar: bool = True
    extra_config: dict[str, Any] = field(default_factory=dict)
