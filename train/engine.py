"""The training loop: epochs of SGD steps, NaN guard, evaluation, checkpoints, resume, logs.

``Trainer.fit()`` runs the whole schedule. Exact resume rests on three things: the data
order is a function of ``(seed, epoch)`` (``DistributedSampler.set_epoch``), each sample's
augmentation a function of ``(seed, epoch, index)``, and the learning rate a function of the
global iteration; the resume state restores model, optimiser, AMP scaler and every RNG. It is
written at each epoch's end before the evaluation (a resume evaluates that epoch first), after
it with the ``last`` / ``best`` checkpoints, and within epochs every ``save_every_minutes``.
The evaluation pass lives in ``train/evaluation.py``, the metrics log in ``train/metrics_log.py``,
``TrainConfig`` in ``train/train_config.py``.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from edgedet._io import remove_stale_temporaries
from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample
from edgedet.decoder import HeadDecoder
from edgedet.preprocess import PreprocessConfig
from train.augment import RetinaAugmentation, SsdAugmentation
from train.checkpoint import (
    CheckpointError,
    load_training_state,
    save_checkpoint,
    save_training_state,
    unwrap,
)
from train.curves import write_curves
from train.data import (
    EvalDataset,
    ResumableSampler,
    TrainingDataset,
    collate_eval,
    collate_training,
    loader_batches,
    worker_init_fn,
)
from train.distill import OutputDistillation
from train.distributed import DistInfo, all_true, all_true_each, barrier, mean_over_ranks
from train.evaluation import _autocast, evaluate
from train.graceful_stop import StopRequest, TrainingStopped
from train.metrics_log import MetricsLog
from train.models import family_defaults, is_harnet
from train.qat import activation_ranges, restore_activation_ranges
from train.schedule import LrSchedule, build_optimizer, set_lr
from train.train_config import TrainConfig

STATE_FILE = "last.state.safetensors"


class TrainingDivergedError(RuntimeError):
    """The loss stayed NaN/inf for too many consecutive steps."""


def _to_device(targets: list[dict[str, torch.Tensor]], device: torch.device
               ) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


class Trainer:
    """Everything one training run needs, wired together (see ``fit``).

    Args:
        model: a detector (already on ``info.device``; wrapped in DDP here when distributed).
        criterion: ``criterion(outputs, priors_cxcywh, targets) -> {"loss", terms...}``.
        train_samples / val_samples: ``Sequence[Sample]``.
        class_names: the dataset's classes.
        preprocess_config: model-input geometry and normalisation (runtime identical).
        augmentation: ``SsdAugmentation`` / ``RetinaAugmentation`` or None.
        config: hyper-parameters.
        out_dir: run directory (checkpoints, metrics).
        info: this process's rank and device.
        distillation: a frozen teacher whose predictions add soft targets to the loss
            (``train.distill``), or None.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        train_samples: Sequence[Sample],
        val_samples: Sequence[Sample] | None,
        class_names: Sequence[str],
        preprocess_config: PreprocessConfig,
        augmentation: SsdAugmentation | RetinaAugmentation | None,
        config: TrainConfig,
        out_dir: str | Path,
        info: DistInfo,
        distillation: OutputDistillation | None = None,
    ) -> None:
        self.config = config
        self.distillation = distillation
        self.info = info
        self.out_dir = Path(out_dir)
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # Half-written files of a killed run (checkpoints are written to .NAME.*.tmp and
            # renamed); the run directory belongs to this run, so they can go.
            remove_stale_temporaries(self.out_dir)
        self.class_names = tuple(class_names)
        self.preprocess_config = preprocess_config
        self.defaults = family_defaults(model)
        self.criterion = criterion
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        bare = unwrap(model)
        self.incremental = config.incremental_epochs > 0
        if self.incremental and not is_harnet(bare):
            raise ValueError("--incremental-epochs applies to HAR-Net models only")
        if info.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                find_unused_parameters=self.incremental)
        self.model = model
        self.bare = bare
        spec = bare.anchor_spec(tuple(preprocess_config.input_size))
        self.anchor_spec = spec
        self.priors = torch.from_numpy(spec.generate()).to(info.device)

        self.train_set = TrainingDataset(train_samples, preprocess_config, augmentation,
                                         config.seed)
        self.sampler = DistributedSampler(self.train_set, num_replicas=info.world_size,
                                          rank=info.rank, shuffle=True, seed=config.seed)
        pin = info.device.type == "cuda"
        self.epoch_sampler = ResumableSampler(self.sampler)
        self.train_loader = DataLoader(
            self.train_set, batch_size=config.batch_size, sampler=self.epoch_sampler,
            num_workers=config.workers, collate_fn=collate_training, drop_last=True,
            pin_memory=pin, worker_init_fn=worker_init_fn,
            generator=torch.Generator().manual_seed(config.seed))
        if len(self.train_loader) == 0:
            raise DatasetError(f"{len(self.sampler)} training images per process are fewer than "
                             f"--batch-size {config.batch_size}: no full batch to train on")
        self.val_loader = None
        if val_samples is not None:
            eval_set = EvalDataset(val_samples, preprocess_config)
            shard = Subset(eval_set, range(info.rank, len(eval_set), info.world_size))
            self.val_loader = DataLoader(
                shard, batch_size=config.batch_size, shuffle=False,
                num_workers=config.workers, collate_fn=collate_eval, pin_memory=pin,
                worker_init_fn=worker_init_fn,
                generator=torch.Generator().manual_seed(config.seed))

        self.optimizer = build_optimizer(config.optimizer, bare, config.lr, config.momentum,
                                         config.weight_decay)
        iters = len(self.train_loader)
        # The default must not depend on --epochs: extending a run would change its schedule.
        warmup = config.warmup_iters if config.warmup_iters is not None else min(500, iters)
        self.schedule = LrSchedule(config.lr, iters, warmup,
                                   config.warmup_start_lr, tuple(config.lr_steps),
                                   config.lr_gamma)
        self.scaler = torch.amp.GradScaler(info.device.type) if config.amp == "fp16" else None
        self.log = MetricsLog(self.out_dir, info.is_main)
        # SIGINT / SIGTERM during fit(): finish the step, save the resume state, stop.
        self.stop_request = StopRequest()
        self.epoch = 0
        self.iteration = 0
        self.best_ap = -1.0
        # The epoch that just ended is trained but not yet evaluated and checkpointed.
        self.epoch_end_pending = False
        self.best_epoch = -1
        self.last_metrics: dict[str, float] | None = None
        self.consecutive_bad = 0
        self.skipped_steps = 0
        # Within an epoch: batches done and the running loss sums / step count (restored by a
        # mid-epoch resume).
        self.batches_done = 0
        self.epoch_sums: dict[str, float] = {}
        self.epoch_steps = 0
        # Training time of earlier runs of this schedule (up to the resume state they left)
        # and when this run's fit() began: the resume state records their sum.
        self.seconds_before = 0.0
        self.fit_started: float | None = None

    # -- checkpoint config -------------------------------------------------------------------

    def checkpoint_config(self) -> dict[str, Any]:
        d = self.defaults
        return {
            **self.bare.config,
            "class_names": list(self.class_names),
            "input_size": list(self.preprocess_config.input_size),
            "preprocess": self.preprocess_config.to_dict(),
            "anchor_spec": self.anchor_spec.to_dict(),
            "box_coder_weights": [float(w) for w in self.bare.box_coder_weights],
            "head_family": d.family,
            "output_names": list(self.bare.export_output_names),
            "postprocess": {"nms_mode": self.bare.default_nms_mode,
                            "score_threshold": d.score_threshold,
                            "iou_threshold": d.iou_threshold,
                            "pre_nms_top_k": d.pre_nms_top_k,
                            "max_detections": d.max_detections},
            "epoch": self.epoch,
            "iteration": self.iteration,
            "metrics": self.last_metrics,
            **self.config.extra_config,
        }

    def _progress(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "iteration": self.iteration, "best_ap": self.best_ap,
                "best_epoch": self.best_epoch, "last_metrics": self.last_metrics,
                "consecutive_bad": self.consecutive_bad, "skipped_steps": self.skipped_steps,
                "world_size": self.info.world_size, "batch_size": self.config.batch_size,
                "seed": self.config.seed, "batches_done": self.batches_done,
                "epoch_sums": dict(self.epoch_sums), "epoch_steps": self.epoch_steps,
                "epoch_end_pending": self.epoch_end_pending,
                "preprocess": self.preprocess_config.to_dict(),
                "qat_ranges": activation_ranges(self.bare), "seconds": self.seconds_trained()}

    def seconds_trained(self) -> float:
        """Seconds of ``fit()`` over every run of this schedule so far (a killed run counts
        up to its last resume state: the work after it is done again)."""
        running = 0.0 if self.fit_started is None else time.perf_counter() - self.fit_started
        return self.seconds_before + running

    def resume(self, state_path: str | Path) -> None:
        """Continue from a resume state written by ``save`` (see the module docstring)."""
        progress = load_training_state(state_path, self.model, self.optimizer, self.scaler)
        if int(progress["epoch"]) > self.config.epochs:
            raise CheckpointError(f"--epochs {self.config.epochs} is below the "
                                  f"{progress['epoch']} epochs the run has done")
        before = progress.get("preprocess")  # (states written before 2026-12-06 lack it)
        if before is not None and PreprocessConfig.from_dict(before) != self.preprocess_config:
            # The rest of the run would train on other pixels, and its checkpoints would name
            # only the second half's pre-processing.
            raise CheckpointError(f"--resume: the run's pre-processing was {before}; give its "
                                  "own --img-size, --resize and --interpolation")
        for key in ("world_size", "batch_size", "seed"):
            now = {"world_size": self.info.world_size, "batch_size": self.config.batch_size,
                   "seed": self.config.seed}[key]
            if progress[key] != now:
                warnings.warn(f"resuming with {key} {now} (the run used {progress[key]}): "
                              "training continues but will not repeat the original run",
                              stacklevel=2)
        self.epoch = int(progress["epoch"])
        self.iteration = int(progress["iteration"])
        self.best_ap = float(progress["best_ap"])
        self.best_epoch = int(progress["best_epoch"])
        self.last_metrics = progress["last_metrics"]
        self.consecutive_bad = int(progress["consecutive_bad"])
        self.skipped_steps = int(progress["skipped_steps"])
        self.batches_done = int(progress.get("batches_done", 0))
        self.epoch_sums = {k: float(v) for k, v in progress.get("epoch_sums", {}).items()}
        self.epoch_steps = int(progress.get("epoch_steps", 0))
        self.epoch_end_pending = bool(progress.get("epoch_end_pending", False))
        self.seconds_before = float(progress.get("seconds", 0.0))  # (older states lack it)
        restore_activation_ranges(self.bare, progress.get("qat_ranges") or {})
        # self.iteration counts the steps done: it is the index of the next step, which the
        # interrupted run may already have logged. A pending epoch end is evaluated again, so
        # an evaluation record the interrupted run wrote for it goes too.
        self.log.truncate_from(self.iteration, drop_last_eval=self.epoch_end_pending)
        if self.epoch_end_pending:  # evaluated with the attention that epoch trained with
            self._set_incremental_attention(self.epoch - 1)

    def save(self, is_best: bool) -> None:
        """Rank 0: ``last`` (+ ``best``) checkpoint and the resume state."""
        if not self.info.is_main:
            return
        config = self.checkpoint_config()
        save_checkpoint(self.out_dir / "last", self.model, config)
        if is_best:
            save_checkpoint(self.out_dir / "best", self.model, config)
        save_training_state(self.out_dir / STATE_FILE, self.model, self.optimizer, self.scaler,
                            self._progress())

    # -- loop ----------------------------------------------------------------------------------

    def _train_step(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
                    ) -> dict[str, float] | None:
        """One optimiser step; None when skipped because the loss was not finite."""
        cfg, info = self.config, self.info
        set_lr(self.optimizer, self.schedule(self.iteration))
        images = images.to(info.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = _to_device(targets, info.device)
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(info.device, cfg.amp):
            outputs = self.model(images)
            teacher = (self.distillation.teacher_outputs(images)
                       if self.distillation is not None else None)
        outputs = {k: v.float() for k, v in outputs.items()}
        losses = self.criterion(outputs, self.priors, targets)
        if self.distillation is not None and teacher is not None:
            losses = self.distillation.add_terms(losses, outputs, teacher)
        loss = losses["loss"]
        finite = all_true(bool(torch.isfinite(loss.detach()).item()), info)
        # Every rank runs backward even for a bad loss so DDP's gradient exchange stays in
        # step; the gradients are then thrown away.
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if finite:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            max_norm = cfg.clip_grad_norm if cfg.clip_grad_norm > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.bare.parameters(), max_norm)
            if self.scaler is not None:
                # The scaler skips the step itself on inf gradients (its usual overflow).
                self.scaler.step(self.optimizer)
                self.scaler.update()
            elif bool(torch.isfinite(grad_norm).item()):
                self.optimizer.step()
            else:
                finite = False
        self.iteration += 1
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive_bad += 1
            self.skipped_steps += 1
            message = (f"non-finite loss or gradients at iteration {self.iteration - 1} "
                       f"(epoch {self.epoch}): step skipped ({self.consecutive_bad} in a row)")
            if info.is_main:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            if self.consecutive_bad >= cfg.max_bad_steps:
                state = self.out_dir / STATE_FILE
                saved = (f"the last good resume state is {state}" if state.is_file()
                         else "no epoch had finished, so there is no checkpoint to resume")
                raise TrainingDivergedError(
                    f"training diverged: the loss was NaN/inf for {self.consecutive_bad} "
                    f"consecutive steps (up to iteration {self.iteration - 1}, epoch "
                    f"{self.epoch}). Nothing was saved from the diverged steps; {saved}. "
                    "Lower --lr, raise --warmup-iters, set --clip-grad-norm, or check the data "
                    "for broken boxes.")
            return None
        self.consecutive_bad = 0
        return {k: float(v.detach().item()) for k, v in losses.items()}

    def _set_incremental_attention(self, epoch: int | None = None) -> None:
        """HAR-Net's attention as incremental training has it in ``epoch`` (default: the
        epoch about to be trained)."""
        if self.incremental:
            epoch = self.epoch if epoch is None else epoch
            enabled = epoch >= self.config.incremental_epochs
            self.bare.set_attention_enabled(spatial=enabled, channel=enabled)

    def train_epoch(self) -> dict[str, float]:
        cfg, info = self.config, self.info
        self.model.train()
        if cfg.freeze_bn:
            for module in self.bare.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        self._set_incremental_attention()
        self.sampler.set_epoch(self.epoch)
        self.train_set.set_epoch(self.epoch)
        # A mid-epoch resume continues the same epoch order after the batches already done.
        self.epoch_sampler.start = self.batches_done * cfg.batch_size
        batches = len(self.train_loader) + self.batches_done
        sums, steps = self.epoch_sums, self.epoch_steps
        start = last_save = time.perf_counter()
        new_steps = 0
        with loader_batches(self.train_loader) as iterator:
            bar = tqdm(iterator, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       disable=not (info.is_main and cfg.progress_bar), leave=False,
                       dynamic_ncols=True, initial=self.batches_done, total=batches)
            for images, targets in bar:
                lr = self.schedule(self.iteration)
                losses = self._train_step(images, targets)
                self.batches_done += 1
                if losses is not None:
                    # Logged values are averages over the ranks: the whole global batch.
                    losses = mean_over_ranks(losses, info)
                    steps += 1
                    new_steps += 1
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    self.epoch_steps = steps
                    elapsed = time.perf_counter() - start
                    images_per_s = new_steps * cfg.batch_size * info.world_size / max(elapsed,
                                                                                       1e-9)
                    self.log.write({"type": "train", "epoch": self.epoch,
                                    "iteration": self.iteration - 1, "lr": lr, **losses,
                                    "images_per_s": images_per_s})
                    bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()},
                                     "lr": f"{lr:.2e}", "img/s": f"{images_per_s:.1f}"})
                save_due, stop = self._save_and_stop_agreed(last_save)
                if save_due or stop:
                    self.save_resume_state()
                    last_save = time.perf_counter()
                if stop:
                    raise self._stopped()
            bar.close()
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        elapsed = time.perf_counter() - start
        means["images_per_s"] = len(self.train_loader) * cfg.batch_size * info.world_size / \
            max(elapsed, 1e-9)
        means["seconds"] = elapsed
        self.batches_done, self.epoch_sums, self.epoch_steps = 0, {}, 0
        self.epoch_sampler.start = 0
        return means

    def _save_and_stop_agreed(self, last_save: float) -> tuple[bool, bool]:
        """(a mid-epoch save is due, a rank got a stop signal), the same on every rank: rank 0
        decides the save by its clock, any rank's signal stops all of them at this step."""
        minutes = self.config.save_every_minutes
        due = minutes > 0 and time.perf_counter() - last_save >= 60 * minutes
        save_due, go_on = all_true_each([due if self.info.is_main else True,
                                         not self.stop_request.requested], self.info)
        return save_due, not go_on

    def _stopped(self) -> TrainingStopped:
        number = self.stop_request.signal_number or signal.SIGTERM
        return TrainingStopped(
            f"stopped by {signal.Signals(number).name} after iteration {self.iteration - 1}: "
            f"the resume state is in {self.out_dir / STATE_FILE}; run the same command with "
            "--resume to continue exactly", number)

    def save_resume_state(self) -> None:
        """Rank 0: the resume state alone, mid-epoch (``last``/``best`` stay epoch-end)."""
        if self.info.is_main:
            save_training_state(self.out_dir / STATE_FILE, self.model, self.optimizer,
                                self.scaler, self._progress())

    def evaluate(self) -> dict[str, float] | None:
        if self.val_loader is None:
            return None
        decoder = HeadDecoder.from_manifest(self.checkpoint_config())
        return evaluate(self.model, self.val_loader, decoder, self.info, self.config.amp,
                        self.config.progress_bar)

    def _draw_curves(self) -> None:
        """Redraw ``curves.png`` (``train.curves``); a failure only warns: the picture is a
        convenience, the run's state and log are what matter."""
        try:
            write_curves(self.out_dir)
        except Exception as exc:  # never stop a run for a picture
            warnings.warn(f"could not draw {self.out_dir}/curves.png: {exc}", RuntimeWarning,
                          stacklevel=2)

    def _train_one_epoch(self) -> None:
        """One epoch and its log record; its weights on disk before it is evaluated."""
        epoch_means = self.train_epoch()
        self.epoch += 1
        self.log.write({"type": "epoch", "epoch": self.epoch - 1,
                        "iteration": self.iteration - 1, **epoch_means})
        if self.info.is_main:
            terms = ", ".join(f"{k} {v:.4f}" for k, v in epoch_means.items())
            tqdm.write(f"epoch {self.epoch}/{self.config.epochs}: {terms}")
        self.epoch_end_pending = True

    def _finish_epoch(self) -> None:
        """The evaluation (when due), then ``last`` / ``best`` and the resume state."""
        cfg, info = self.config, self.info
        is_best = False
        due = cfg.eval_every > 0 and self.epoch % cfg.eval_every == 0
        if due or self.epoch == cfg.epochs:
            # A bad validation image, a crash or a kill during a long evaluation must not
            # cost the epoch: a resume from this state evaluates it and carries on.
            self.save_resume_state()
            metrics = self.evaluate()
            if info.is_main and metrics is not None:
                self.last_metrics = metrics
                is_best = metrics["AP"] > self.best_ap
                if is_best:
                    self.best_ap, self.best_epoch = metrics["AP"], self.epoch
                self.log.write({"type": "eval", "epoch": self.epoch - 1,
                                "iteration": self.iteration - 1, **metrics})
                tqdm.write("val: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        self.epoch_end_pending = False
        self.save(is_best)
        if info.is_main and (due or self.epoch == cfg.epochs):
            self._draw_curves()
        barrier(info)

    def fit(self) -> dict[str, Any]:
        """Train from ``self.epoch`` to ``config.epochs``; return the final summary (rank 0)."""
        cfg = self.config
        start = self.fit_started = time.perf_counter()
        first_epoch = self.epoch
        self.stop_request.install()
        try:
            while self.epoch < cfg.epochs or self.epoch_end_pending:
                if not self.epoch_end_pending:
                    self._train_one_epoch()
                self._finish_epoch()
        finally:
            self.stop_request.restore()
            self.log.close()
        summary = {
            "epochs_run": self.epoch - first_epoch, "epochs": self.epoch,
            "iterations": self.iteration, "seconds": time.perf_counter() - start,
            "total_seconds": self.seconds_trained(),
            "skipped_steps": self.skipped_steps, "best_AP": self.best_ap,
            "best_epoch": self.best_epoch, "last_metrics": self.last_metrics,
            "out_dir": str(self.out_dir), "config": asdict(cfg),
        }
        return summary
