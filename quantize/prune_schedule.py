"""Iterative prune -> fine-tune of a trained checkpoint, resumable, every step measured.

``run_schedule(PruneConfig(...))`` takes a checkpoint to ``target_flops_ratio`` of its GFLOPs
in ``steps`` steps, each shrinking the GFLOPs by the same factor (``pruning.prune_to_flops``),
each followed by ``finetune_epochs`` epochs of ``train/main.py`` started from the pruned
weights (``--init-checkpoint``: the channel plan travels in the checkpoint config). Per step
it logs the channel ratio, GFLOPs, parameters and the validation AP right after pruning and
after fine-tuning to ``OUT/prune_log.json`` (and prints a table), next to the same figures of
the checkpoint it started from (its AP measured on the same split).

Layout of ``OUT``::

    step1/pruned.safetensors, .json     the pruned weights before fine-tuning
    step1/finetune/best.safetensors     train/main.py's output (metrics.jsonl, summary.json)
    ...
    baseline/                           the unpruned model fine-tuned with the same budget
    pruned.safetensors, .json           the last step's fine-tuned checkpoint (the result)
    prune_log.json

A killed run resumes where it stopped: finished steps are read back from their files, a
fine-tuning that was cut short resumes from its own training state.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from edgedet._io import write_bytes_atomic, write_json_atomic
from edgedet.artifact import sha256_file
from edgedet.decoder import HeadDecoder
from edgedet.models.checkpoint import (
    build_from_checkpoint,
    checkpoint_weights_path,
    load_checkpoint,
)
from edgedet.models.summary import WEIGHTED_LAYERS, count_gflops, count_parameters
from edgedet.preprocess import PreprocessConfig
from quantize.prune_allocation import (
    allocation_weights,
    measure_sensitivity,
    network_parts,
    weights_record,
)
from quantize.pruning import PruneResult, geometric_targets, prune_to_flops, pruned_config
from train.checkpoint import save_checkpoint
from train.data import EvalDataset, collate_eval, open_splits
from train.distributed import DistInfo
from train.engine import STATE_FILE
from train.evaluation import evaluate


@dataclass(frozen=True)
class PruneConfig:
    """What ``run_schedule`` does; see the module docstring.

    Attributes:
        checkpoint: the trained full-precision checkpoint (``X``, ``X.safetensors``).
        out: output folder (created; reused to resume).
        target_flops_ratio: final GFLOPs as a fraction of the checkpoint's.
        steps: prune / fine-tune rounds.
        criterion: ``pruning.CRITERIA`` key.
        round_to: channel counts stay multiples of this (CLGN-normalised head convs: of
            the CLGN's group count; ``pruning.prune_channels``).
        finetune_epochs, finetune_images: fine-tuning per step (synthetic data: images per
            epoch; other data: its whole train split).
        baseline: also fine-tune the unpruned model with the total fine-tuning budget, the
            comparison the pruned model is judged against.
        train_args: extra ``train/main.py`` flags for fine-tuning (optimizer, lr, --amp ...).
        data: ``--data`` of the fine-tuning; default: the checkpoint's own.
        val_images: validation images (synthetic data).
        distill: fine-tune each pruned step with output distillation from ``checkpoint``
            (``train.distill``: the model being pruned is the teacher, so no training is
            added beyond its forward passes); the baseline trains without it.
        allocation: ``uniform`` (every layer the same fraction) or ``sensitivity`` (each
            part of the network its own fraction, from its measured sensitivity at the start
            of each step: ``quantize.prune_allocation``).
        sensitivity_images: validation images each sensitivity probe is scored on.
    """

    checkpoint: str
    out: str
    target_flops_ratio: float = 0.45
    steps: int = 2
    criterion: str = "l2"
    round_to: int = 16
    finetune_epochs: int = 1
    finetune_images: int = 2000
    baseline: bool = True
    train_args: tuple[str, ...] = ()
    data: str | None = None
    val_images: int = 200
    progress: bool = True
    distill: bool = False
    allocation: str = "uniform"
    sensitivity_images: int = 100


@dataclass
class StepRecord:
    """One row of ``prune_log.json``."""

    step: int
    ratio: float
    gflops: float
    params_m: float
    ap_pruned: float
    ap_finetuned: float
    finetune_seconds: float
    channels: dict[str, int] = field(default_factory=dict)
    allocation: dict[str, dict[str, float]] = field(default_factory=dict)


def _training_argv(config: PruneConfig, ckpt_config: dict, init: Path, out: Path,
                   epochs: int, teacher: str | None = None) -> list[str]:
    """``train/main.py`` flags that fine-tune ``init`` as the checkpoint was trained (with
    output distillation from ``teacher`` when given)."""
    kwargs = dict(ckpt_config["kwargs"])
    width, height = (int(v) for v in ckpt_config["preprocess"]["input_size"])
    data = config.data or ckpt_config.get("data") or "synthetic"
    argv = ["--model", ckpt_config["architecture"], "--init-checkpoint", str(init),
            "--img-size", f"{width}x{height}", "--data", data, "--epochs", str(epochs),
            "--out", str(out)]
    if data == "synthetic":  # (train/main.py refuses these flags with real data)
        argv += ["--synthetic-train", str(config.finetune_images),
                 "--synthetic-val", str(config.val_images)]
        if ckpt_config.get("synthetic_size"):
            argv += ["--synthetic-size", "x".join(str(v) for v in ckpt_config["synthetic_size"])]
    for key, value in kwargs.items():
        if key not in ("num_classes", "img_size"):
            argv += ["--model-arg", f"{key}={json.dumps(value)}"]
    if not config.progress:
        argv.append("--no-progress")
    argv += list(config.train_args)
    if teacher is not None:
        argv += ["--distill-from", teacher]
    if (out / STATE_FILE).is_file():
        argv += ["--resume", str(out / STATE_FILE)]
    return argv


def _finetune(config: PruneConfig, ckpt_config: dict, init: Path, out: Path,
              epochs: int, teacher: str | None = None) -> tuple[float, float]:
    """Fine-tune ``init`` into ``out`` (resumed when cut short); ``(best AP, seconds)``."""
    from train.main import main as train_main

    summary_path = out / "summary.json"
    if not summary_path.is_file():
        if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).is_file():
            # Killed before its first resume state: nothing to continue from, and
            # train/main.py refuses a folder that holds checkpoints. Kept aside, not deleted.
            aside = out.with_name(f"{out.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            out.rename(aside)
            print(f"{out} was cut short before it could be resumed: moved to {aside}, "
                  "starting that fine-tuning again", file=sys.stderr)
        start = time.perf_counter()
        try:
            code = train_main(_training_argv(config, ckpt_config, init, out, epochs, teacher))
        except SystemExit as exit_:  # its argument errors exit through argparse
            code = exit_.code if isinstance(exit_.code, int) else 2
        if code != 0:
            raise RuntimeError(f"fine-tuning {init} failed (train/main.py exit {code})")
        seconds = time.perf_counter() - start
        summary = json.loads(summary_path.read_text())
        # A resumed fine-tuning: its earlier runs' training time (up to the resume state)
        # counts too, or the step's time would be only the part after the resume.
        summary["wall_seconds"] = seconds + max(
            0.0, float(summary.get("total_seconds", 0.0)) - float(summary["seconds"]))
        write_json_atomic(summary_path, summary, indent=2)
    summary = json.loads(summary_path.read_text())
    # (Without wall_seconds, a kill between train/main.py's summary and the line above: its
    # training time over every run.)
    seconds = summary.get("wall_seconds", summary.get("total_seconds", summary["seconds"]))
    return float(summary["best_AP"]), float(seconds)


def _train_flag(config: PruneConfig, flag: str) -> str | None:
    """The value of ``flag`` among the fine-tuning's ``train/main.py`` flags, if given."""
    args = list(config.train_args)
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def validation_ap(model: torch.nn.Module, ckpt_config: dict, config: PruneConfig) -> float:
    """COCO AP (0-1, as training logs it) of ``model`` on the fine-tuning's validation split.

    Runs where the fine-tuning runs (a CUDA device when there is one, on a copy so that
    ``model`` stays where it is) and reads the fine-tuning's ``--synthetic-cache`` if given.
    """
    return validation_scorer(ckpt_config, config)(model)


def validation_scorer(ckpt_config: dict, config: PruneConfig, images: int | None = None
                      ) -> Callable[[torch.nn.Module], float]:
    """``validation_ap`` with the split opened once: ``score(model) -> AP``, on the first
    ``images`` validation images (default ``config.val_images``)."""
    preprocess = PreprocessConfig.from_dict(ckpt_config["preprocess"])
    splits = open_splits(config.data or ckpt_config.get("data") or "synthetic",
                         img_size=tuple(preprocess.input_size),
                         synthetic_train=1, synthetic_val=images or config.val_images,
                         synthetic_config=_synthetic_config(ckpt_config),
                         synthetic_cache=_train_flag(config, "--synthetic-cache"))
    loader = DataLoader(EvalDataset(splits.val, preprocess), batch_size=8,
                        collate_fn=collate_eval)
    wanted = _train_flag(config, "--device") or "auto"
    use_cuda = wanted != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    decoder = HeadDecoder.from_manifest(ckpt_config)

    def score(model: torch.nn.Module) -> float:
        if use_cuda:
            model = copy.deepcopy(model).to(device)
        metrics = evaluate(model, loader, decoder, DistInfo(0, 1, 0, device))
        assert metrics is not None  # single process: always rank 0
        return float(metrics["AP"])

    return score


def _sensitivity_allocation(model: torch.nn.Module, ckpt_config: dict,
                            input_size: tuple[int, int], config: PruneConfig
                            ) -> dict[str, dict[str, float]]:
    """Each part's probe and weight for this step (``prune_allocation``), printed as measured."""
    score = validation_scorer(ckpt_config, config, config.sensitivity_images)
    parts = network_parts(model)
    sensitivities = measure_sensitivity(
        model, input_size, parts, score, criterion=config.criterion, round_to=config.round_to,
        progress=lambda part: print(f"sensitivity: pruning {part} alone", flush=True))
    record = weights_record(sensitivities, allocation_weights(sensitivities))
    for part, row in record.items():
        print(f"  {part:<24} saves {row['gflops_saved']:.3f} GFLOPs, costs "
              f"{100 * row['ap_drop']:.2f} AP -> weight {row['weight']:.2f}", flush=True)
    return record


def _synthetic_config(ckpt_config: dict) -> Any:
    from edgedet.data.synthetic import SyntheticConfig

    size = ckpt_config.get("synthetic_size")
    return SyntheticConfig(image_size=tuple(size)) if size else None


def _channels(model: torch.nn.Module) -> dict[str, int]:
    """Output channels of every conv (the table ``edgedet summary`` and the log print)."""
    return {name: int(module.weight.shape[0]) for name, module in model.named_modules()
            if isinstance(module, WEIGHTED_LAYERS) and not isinstance(module, torch.nn.Linear)}


# PruneConfig fields that do not change what the run computes.
_UNRECORDED_FIELDS = ("out", "progress", "baseline")
RUN_FILE = "prune_run.json"


_NEUTRAL_TRAINING_FLAGS = ("--workers", "--device", "--no-progress", "--synthetic-cache",
                           "--save-every-min")


def _result_flags(train_args: list[str]) -> list[str]:
    """``train_args`` without the flags (and their values) that change no result, sorted by
    flag so that their order does not count."""
    flags: list[list[str]] = []
    for arg in train_args:
        if arg.startswith("--") or not flags:
            flags.append([arg])
        else:
            flags[-1].append(arg)
    kept = [f for f in flags if f[0].split("=")[0] not in _NEUTRAL_TRAINING_FLAGS]
    return [a for f in sorted(kept) for a in f]


def _claim_out(out: Path, config: PruneConfig) -> None:
    """Record the run's settings in ``out`` (first run), or refuse a rerun whose settings
    differ: resuming would reuse steps pruned for the old ones and log them as the new."""
    settings = {k: v for k, v in asdict(config).items() if k not in _UNRECORDED_FIELDS}
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    # The checkpoint by its bytes, however its path is spelt; training flags that do not
    # change the result left out.
    settings["checkpoint"] = sha256_file(checkpoint_weights_path(config.checkpoint))
    settings["train_args"] = _result_flags(list(config.train_args))
    recorded_path = out / RUN_FILE
    if not recorded_path.is_file():
        write_json_atomic(recorded_path, settings, indent=2)
        return
    recorded = json.loads(recorded_path.read_text())
    changed = sorted(k for k in set(settings) | set(recorded)
                     if settings.get(k) != recorded.get(k))
    if changed:
        was = ", ".join("checkpoint (other weights)" if k == "checkpoint"
                        else f"{k}={recorded.get(k)!r}" for k in changed)
        raise ValueError(f"{out} holds a pruning run with other settings ({was}); rerun it "
                         "with those to resume, or give a new --out")


def _recorded_start_ap(log_path: Path) -> float | None:
    """The start AP an earlier run of this schedule measured, or None (then it is measured
    again): no log, an unreadable one, or one written before the start AP was measured (no
    ``ap_recorded`` beside it: its AP was the checkpoint's record, or NaN)."""
    try:
        start = json.loads(log_path.read_text())["start"]
        ap = float(start["ap"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return ap if "ap_recorded" in start and math.isfinite(ap) else None


def run_schedule(config: PruneConfig) -> dict[str, Any]:
    """Run (or resume) the schedule; returns the log written to ``OUT/prune_log.json``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _claim_out(out, config)
    model, _ = build_from_checkpoint(config.checkpoint)
    _, full_config = load_checkpoint(config.checkpoint)
    input_size = tuple(int(v) for v in full_config["preprocess"]["input_size"])
    gflops = count_gflops(model, input_size)  # type: ignore[arg-type]
    # The start's AP is measured on the split every step's AP is (the checkpoint's own record
    # may come from another split or size); a resumed run reads it back.
    start_ap = _recorded_start_ap(out / "prune_log.json")
    if start_ap is None:
        start_ap = validation_ap(model, full_config, config)
    log: dict[str, Any] = {
        "config": asdict(config), "start": {
            "gflops": gflops, "params_m": count_parameters(model) / 1e6, "ap": start_ap,
            "ap_recorded": (full_config.get("metrics") or {}).get("AP")},
        "steps": [],
    }
    targets = geometric_targets(gflops, config.target_flops_ratio, config.steps)
    current = Path(config.checkpoint)
    for step, target in enumerate(targets, start=1):
        step_dir = out / f"step{step}"
        pruned_path = step_dir / "pruned"
        step_log = step_dir / "step.json"
        if not step_log.is_file():
            model, _ = build_from_checkpoint(current)
            _, current_full = load_checkpoint(current)
            allocation = (_sensitivity_allocation(model, current_full, input_size, config)
                          if config.allocation == "sensitivity" else {})
            weights = {part: row["weight"] for part, row in allocation.items()}
            now = count_gflops(model, input_size)  # type: ignore[arg-type]
            if now <= target:
                # Widths move in steps of round_to channels, so an earlier step can land
                # under this one's target: this step then only fine-tunes.
                params = count_parameters(model)
                pruned, result = model, PruneResult(0.0, now, now, params, params)
            else:
                pruned, result = prune_to_flops(model, input_size,  # type: ignore[arg-type]
                                                target, config.criterion, config.round_to,
                                                part_weights=weights)
            pruned.config = pruned_config(pruned)
            new_config = {**current_full, **pruned.config, "pruning": {
                "step": step, "criterion": config.criterion, "ratio": result.ratio,
                "source": str(config.checkpoint), "allocation": config.allocation}}
            ap_pruned = validation_ap(pruned, new_config, config)
            step_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(pruned_path, pruned, new_config)
            write_json_atomic(step_log, {
                "ratio": result.ratio, "gflops": result.gflops_after,
                "params_m": result.params_after / 1e6, "ap_pruned": ap_pruned,
                "allocation": allocation}, indent=2)
        record_base = json.loads(step_log.read_text())
        _, pruned_full = load_checkpoint(pruned_path)
        ap_ft, seconds = _finetune(config, pruned_full, pruned_path, step_dir / "finetune",
                                   config.finetune_epochs,
                                   str(config.checkpoint) if config.distill else None)
        current = step_dir / "finetune" / "best"
        pruned_model, _ = build_from_checkpoint(current)
        log["steps"].append(asdict(StepRecord(
            step=step, ratio=record_base["ratio"], gflops=record_base["gflops"],
            params_m=record_base["params_m"], ap_pruned=record_base["ap_pruned"],
            ap_finetuned=ap_ft, finetune_seconds=seconds, channels=_channels(pruned_model),
            allocation=record_base.get("allocation", {}))))
        write_json_atomic(out / "prune_log.json", log, indent=2)
    for suffix in (".safetensors", ".json"):
        source = current.with_suffix(suffix)
        if source.is_file():  # a rerun copies again: never through a good file in place
            write_bytes_atomic(out / f"pruned{suffix}", source.read_bytes())
    if config.baseline:
        ap_base, seconds = _finetune(config, full_config, Path(config.checkpoint),
                                     out / "baseline", config.finetune_epochs * config.steps)
        log["baseline"] = {"ap": ap_base, "finetune_seconds": seconds,
                           "gflops": gflops, "params_m": log["start"]["params_m"]}
    write_json_atomic(out / "prune_log.json", log, indent=2)
    return log


def format_log(log: dict[str, Any]) -> str:
    """The log as a small table (AP in points)."""
    start = log["start"]
    lines = [f"{'step':<9} {'ratio':>6} {'GFLOPs':>7} {'params M':>8} {'AP pruned':>9} "
             f"{'AP tuned':>8}",
             f"{'start':<9} {'':>6} {start['gflops']:>7.2f} {start['params_m']:>8.2f} "
             f"{'':>9} {100 * start['ap']:>8.2f}"]
    for s in log["steps"]:
        lines.append(f"{'step ' + str(s['step']):<9} {s['ratio']:>6.3f} {s['gflops']:>7.2f} "
                     f"{s['params_m']:>8.2f} {100 * s['ap_pruned']:>9.2f} "
                     f"{100 * s['ap_finetuned']:>8.2f}")
    if "baseline" in log:
        b = log["baseline"]
        lines.append(f"{'baseline':<9} {'':>6} {b['gflops']:>7.2f} {b['params_m']:>8.2f} "
                     f"{'':>9} {100 * b['ap']:>8.2f}")
    return "\n".join(lines)


__all__ = ["PruneConfig", "StepRecord", "format_log", "run_schedule", "validation_ap",
           "validation_scorer"]
