"""Train an edgedet detector: ``python train/main.py --model NAME --data SPEC [options]``.

The same command under ``torchrun --nproc_per_node N train/main.py ...`` trains with DDP.
Run ``python train/main.py --help`` for every flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import inspect
import json
import math
import os
import random
import warnings

import numpy as np
import torch

from edgedet._io import DirectoryBusyError, OutputFolderError, folder_problem, write_json_atomic
from edgedet.data.errors import DatasetError
from edgedet.data.synthetic import SyntheticConfig
from edgedet.preprocess import PreprocessConfig
from train.amp import training_amp
from train.checkpoint import CheckpointError, carry_best_checkpoint, short_reason
from train.cli_types import parse_minutes, parse_model_arg, parse_size
from train.data import (
    SYNTHETIC_TRAIN,
    SYNTHETIC_VAL,
    build_augmentation,
    open_splits,
    without_worker_traceback,
)
from train.distributed import DistInfo, cleanup, init_distributed, locked_by_main_rank
from train.engine import STATE_FILE, Trainer, TrainingDivergedError
from train.graceful_stop import TrainingStopped
from train.losses import build_criterion
from train.models import (
    MODEL_BUILDERS,
    build_model,
    builder_of,
    default_img_size,
    family_defaults,
    models_table,
)
from train.schedule import flag_values, parse_steps
from train.train_config import TrainConfig

EPILOG = f"""\
models (--model NAME → builder in edgedet/models/):
{models_table()}

paper schedules (global batch 32 for the SSD family; scale --lr with the global batch):
  PASSD VOC:   --lr 4e-3 --epochs 250 --lr-steps 150,200 --warmup-iters <5 epochs>
  PASSD COCO:  --lr 2e-3 --epochs 120 --lr-steps 80,100 --warmup-iters <5 epochs>
  DAIPNet COCO: --lr 4e-3 --epochs 160 --lr-steps 90,120,140 --warmup-iters <6 epochs>
  HAR-Net:     --lr 0.0125 --weight-decay 1e-4 (48k/16k/8k iterations at batch 20)
  DSANet:      --lr 0.01 --weight-decay 1e-4 --epochs 12 --lr-steps 8,11 (batch 16)

examples:
  python train/main.py --model passd_mobilenet --data synthetic --img-size 320 --epochs 30
  torchrun --nproc_per_node 4 train/main.py --model harnet_resnet50 --data coco:/data/coco \\
      --img-size 1000x600 --amp bf16 --sync-bn --out runs/harnet
  python train/main.py --model passd_mobilenet --data synthetic --out runs/p --resume
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train/main.py", description="Train an edgedet detector (single process, or DDP "
        "under torchrun).", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, choices=list(MODEL_BUILDERS), metavar="NAME",
                   help="detector builder (table below)")
    g.add_argument("--data", default="synthetic",
                   help="synthetic | coco:PATH | voc:PATH | yolo:PATH (train and val splits; "
                   "default synthetic)")
    g.add_argument("--val-data", default=None, metavar="SPEC",
                   help="separate validation set SCHEME:PATH (default: the val split of --data)")
    g.add_argument("--train-split", default=None,
                   help="split name for training (VOC default trainval, YOLO/COCO train)")
    g.add_argument("--val-split", default=None,
                   help="split name for validation (VOC default test, YOLO/COCO val)")
    g.add_argument("--synthetic-train", type=int, default=None, metavar="N",
                   help=f"synthetic training images (default {SYNTHETIC_TRAIN})")
    g.add_argument("--synthetic-val", type=int, default=None, metavar="M",
                   help=f"synthetic validation images (default {SYNTHETIC_VAL})")
    g.add_argument("--synthetic-seed", type=int, default=0, metavar="S",
                   help="seed of the synthetic training images; validation uses S+1")
    g.add_argument("--img-size", type=parse_size, default=None, metavar="N|WxH",
                   help="model input size (default: the model's paper size); also the size "
                   "of synthetic images")
    g.add_argument("--synthetic-size", type=parse_size, default=None, metavar="WxH",
                   help="size of the synthetic images when it should differ from --img-size "
                   "(e.g. 640x480 camera-like frames resized to a 320x320 model input)")
    g.add_argument("--synthetic-cache", default=None, metavar="DIR",
                   help="keep rendered synthetic scenes in DIR (~0.9 MB per 640x480 image) and "
                   "read them from there in later epochs and runs instead of rendering each "
                   "again (40-90 ms of CPU each); the samples are identical either way")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   type=parse_model_arg,
                   help="extra builder keyword, repeatable; VALUE is read as JSON when it "
                   "parses (numbers, true/false), else as a string. E.g. --model-arg "
                   "width_mult=0.5 --model-arg fpn_channels=128 for a small passd_mobilenet")
    g.add_argument("--augment", choices=("auto", "ssd", "retinanet", "none"), default="auto",
                   help="augmentation recipe (auto: ssd for PASSD/DAIPNet, retinanet for "
                   "HAR-Net/DSANet)")
    g.add_argument("--resize", choices=("auto", "stretch", "letterbox"), default="auto",
                   help="resize policy stored for the runtime (auto: stretch for the SSD family,"
                   " letterbox for the RetinaNet family)")
    g.add_argument("--interpolation", choices=("area", "linear"), default="area",
                   help="how frames are shrunk to the input, in training and in the runtime "
                   "(stored in the checkpoint): area (OpenCV INTER_AREA, the default) or linear "
                   "(INTER_LINEAR: ~5x cheaper per frame in the SDK, e.g. 0.2 against 1.0 ms for "
                   "640x480 -> 300x300 on 2 cores)")

    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="images per process; global batch = this x processes (default 8)")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="sgd: the papers' optimiser (default). adamw: for short from-scratch "
                   "runs, e.g. on a CPU; it leaves the all-background plateau far sooner")
    g.add_argument("--lr", type=float, default=None,
                   help="base learning rate (SGD: 2e-3 SSD family, 0.01 RetinaNet family; "
                   "AdamW: 1e-3)")
    g.add_argument("--momentum", type=float, default=0.9,
                   help="SGD momentum, or AdamW's beta1 (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (SGD: 5e-4 SSD family, 1e-4 RetinaNet family; AdamW: "
                   "0.05, not on BatchNorm or biases)")
    g.add_argument("--warmup-iters", type=int, default=None,
                   help="linear warm-up iterations from 1e-6 to --lr (default 500, at most one "
                   "epoch)")
    g.add_argument("--lr-steps", type=str, default="",
                   help="comma-separated epochs at which lr is multiplied by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="lr decay factor (default 0.1)")
    g.add_argument("--clip-grad-norm", type=float, default=0.0,
                   help="clip the global gradient norm to this value (0 = off)")
    g.add_argument("--freeze-bn", action="store_true",
                   help="train with BatchNorm on its running statistics (for pretrained "
                   "backbones and small per-GPU batches)")
    g.add_argument("--incremental-epochs", type=int, default=0,
                   help="HAR-Net incremental training: epochs with spatial+channel attention "
                   "off before switching them on (0 = end-to-end)")
    g.add_argument("--max-bad-steps", type=int, default=10,
                   help="stop after this many consecutive NaN/inf losses (default 10)")

    g = p.add_argument_group("run")
    g.add_argument("--workers", type=int, default=4, help="data-loader workers per process")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = CUDA when available")
    g.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16"), default=None,
                   help="mixed precision: bf16 (default when given bare) or fp16 with loss scaling;"
                   " ignored on a CPU without native instructions for it (train/amp.py)")
    g.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm across GPUs under torchrun (CUDA only)")
    g.add_argument("--out", default="runs/train", help="run directory (checkpoints, logs)")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="STATE",
                   help=f"continue a run exactly: a resume state file (*.state.safetensors, "
                   f"not a checkpoint: --init-checkpoint starts from one), or bare for "
                   f"OUT/{STATE_FILE}")
    g.add_argument("--memory-format", choices=("channels_last", "contiguous"),
                   default="channels_last",
                   help="memory layout of weights and images during training (default "
                   "channels_last: faster convolutions on CPU; train/bench.py measures it)")
    g.add_argument("--save-every-min", type=parse_minutes, default=15.0, metavar="MIN",
                   help="also write the resume state within an epoch every MIN minutes, so "
                   "--resume continues a long epoch where it stopped (default 15; 0 = at "
                   "epoch ends only)")
    g.add_argument("--eval-every", type=int, default=1,
                   help="evaluate on the val split every N epochs (and always at the end)")
    g.add_argument("--seed", type=int, default=0, help="seed of init, data order and "
                   "augmentation")
    g.add_argument("--backbone-weights", default=None, metavar="FILE",
                   help="local .safetensors/.pth ImageNet weights for the backbone "
                   "(default: from scratch)")
    g.add_argument("--init-checkpoint", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (same --model and --model-arg "
                        "as it was trained with): fine-tuning, QAT")
    g.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning from --init-checkpoint: every forward "
                        "pass simulates INT8 (weights per channel, layer inputs per tensor); "
                        "checkpoints stay plain fp32 weights that quantize/run.py converts "
                        "(train/qat.py). Use a small lr, e.g. adamw 1e-4, and 1-2 epochs")
    g.add_argument("--distill-from", default=None, metavar="CKPT",
                   help="also learn from this frozen teacher's predictions over the same "
                        "anchors (RetinaNet family: HAR-Net, DSANet), e.g. for a pruned "
                        "student the unpruned model trained as long, or the model it was "
                        "pruned from (quantize/prune.py --distill; train/distill.py)")
    g.add_argument("--distill-weight", type=float, default=1.0, metavar="W",
                   help="weight of the distillation terms in the loss (default 1.0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2) every value that cannot work before any data, model or file is touched
    (a run of 0 epochs would still rewrite OUT's args.json and summary.json), and an --out
    that already holds a run unless it is resumed (a new run would overwrite it)."""
    synthetic = "synthetic" in (args.data, args.val_data)
    val_from_data = args.val_data is None
    # --val-split picks a split of --data, or of a voc: / yolo: --val-data (a coco: one names
    # its file, a synthetic one has none).
    val_has_no_splits = (args.data == "synthetic" if val_from_data
                         else args.val_data == "synthetic" or args.val_data.startswith("coco:"))
    ignored = [flag for flag, given in (
        ("--train-split", args.train_split is not None and args.data == "synthetic"),
        ("--val-split", args.val_split is not None and val_has_no_splits),
        ("--synthetic-train", args.synthetic_train is not None and args.data != "synthetic"),
        ("--synthetic-val", args.synthetic_val is not None
         and (args.data != "synthetic" or not val_from_data)),
        ("--synthetic-size", args.synthetic_size is not None and not synthetic),
        ("--synthetic-cache", args.synthetic_cache is not None and not synthetic)) if given]
    if ignored:  # they would be accepted and do nothing
        data = args.data if val_from_data else f"{args.data} --val-data {args.val_data}"
        parser.error(f"{', '.join(ignored)} do nothing with --data {data}")
    # Defaults of None tell a value given from none (above); the run uses these.
    args.synthetic_train = SYNTHETIC_TRAIN if args.synthetic_train is None else \
        args.synthetic_train
    args.synthetic_val = SYNTHETIC_VAL if args.synthetic_val is None else args.synthetic_val
    counts = {"--epochs": (args.epochs, 1), "--batch-size": (args.batch_size, 1),
              "--synthetic-train": (args.synthetic_train, 1),
              "--eval-every": (args.eval_every, 1), "--max-bad-steps": (args.max_bad_steps, 1),
              "--synthetic-val": (args.synthetic_val, 1), "--workers": (args.workers, 0),
              "--incremental-epochs": (args.incremental_epochs, 0),
              "--warmup-iters": (args.warmup_iters or 0, 0)}
    for flag, (value, least) in counts.items():
        if value < least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    # (value, lowest allowed, whether the lowest itself is allowed); None: the default.
    reals = {"--lr": (args.lr, 0.0, False), "--weight-decay": (args.weight_decay, 0.0, True),
             "--lr-gamma": (args.lr_gamma, 0.0, False),
             "--clip-grad-norm": (args.clip_grad_norm, 0.0, True),
             "--distill-weight": (args.distill_weight, 0.0, True),
             "--momentum": (args.momentum, 0.0, True)}
    for flag, (value, low, inclusive) in reals.items():
        if value is not None and not (math.isfinite(value)
                                      and (value >= low if inclusive else value > low)):
            parser.error(f"{flag} must be a finite number {'>=' if inclusive else '>'} {low:g}, "
                         f"got {value}")
    if args.momentum >= 1:
        parser.error(f"--momentum must be below 1, got {args.momentum}")
    try:
        parse_steps(args.lr_steps)
    except ValueError as error:
        parser.error(str(error))
    parameters = inspect.signature(builder_of(args.model)).parameters
    takes = [n for n in parameters if n not in ("num_classes", "img_size")]
    for key, _ in args.model_arg:
        if key not in takes:
            parser.error(f"--model-arg {key}: {args.model} takes none such; it takes "
                         f"{', '.join(takes)}")
    out = Path(args.out)
    if problem := folder_problem(out):
        parser.error(f"--out {args.out} {problem}; give the run's folder")
    held = [name for name in (STATE_FILE, "best.safetensors", "last.safetensors", "summary.json")
            if (out / name).is_file()]
    if args.resume is None and held:  # a new run would overwrite its checkpoints and logs
        parser.error(f"--out {args.out} already holds a run ({', '.join(held)}): continue it "
                     "with --resume, or give a new --out")
    if args.resume and held and Path(args.resume).parent.resolve() != out.resolve():
        parser.error(f"--out {args.out} already holds a run ({', '.join(held)}), and --resume "
                     f"{args.resume} is another folder's: continuing that one here would "
                     "overwrite it; give a new --out")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_resumed_preprocess(state: Path, preprocess_config: PreprocessConfig) -> None:
    """A resumed run must shrink and normalise its inputs as before: the rest of the run would
    otherwise train on other pixels and write a checkpoint whose pre-processing names only the
    second half (the run's ``last.json`` beside its resume state has the first half's)."""
    previous = state.parent / "last.json"
    if not previous.is_file():
        return
    try:
        before = PreprocessConfig.from_dict(json.loads(previous.read_text())["preprocess"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # an unreadable last.json is the resume state's own check to report
    if before != preprocess_config:
        changed = {k: (v, getattr(preprocess_config, k)) for k, v in vars(before).items()
                   if v != getattr(preprocess_config, k)}
        described = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise CheckpointError(f"--resume: these flags change the run's pre-processing "
                              f"({described}); give the run's own --img-size, --resize and "
                              f"--interpolation")


def _load_initial_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """Load a checkpoint's weights into the freshly built ``model`` (CheckpointError when they
    do not fit: another architecture or other --model-arg values). A pruned checkpoint's
    channel plan narrows ``model`` first and stays in its config, so fine-tuning writes pruned
    checkpoints again."""
    from edgedet.models.channel_plan import ChannelPlanError, apply_channel_plan
    from edgedet.models.checkpoint import load_checkpoint

    tensors, config = load_checkpoint(checkpoint)
    try:
        if config.get("channel_plan"):
            apply_channel_plan(model, config["channel_plan"])
            model.config = {**model.config, "channel_plan": config["channel_plan"]}
        model.load_state_dict(tensors)
    except (RuntimeError, ChannelPlanError) as error:  # strict loading lists every misfit
        details = short_reason(error)  # one line, as every command-line error
        raise CheckpointError(f"--init-checkpoint {checkpoint} does not fit this model (pass "
                              f"the --model and --model-arg it was trained with): {details}") \
            from error


class SetupError(Exception):
    """A setting the run cannot work with, found while building the model, the teacher or
    the trainer (before anything is written): exit 2, like argparse's errors."""


def run(args: argparse.Namespace, info: DistInfo) -> dict:
    args.amp_requested, args.amp = args.amp, training_amp(args.amp, info.device.type, info.is_main)
    paper_size = default_img_size(args.model)
    img_size = args.img_size or (
        (paper_size, paper_size) if isinstance(paper_size, int) else tuple(paper_size))
    synthetic_config = (SyntheticConfig(image_size=tuple(args.synthetic_size))
                        if args.synthetic_size else None)
    splits = open_splits(args.data, img_size=img_size, synthetic_train=args.synthetic_train,
                         synthetic_config=synthetic_config,
                         synthetic_cache=args.synthetic_cache,
                         synthetic_val=args.synthetic_val, synthetic_seed=args.synthetic_seed,
                         train_split=args.train_split, val_split=args.val_split,
                         val_data=args.val_data)
    seed_everything(args.seed)
    try:
        model = build_model(args.model, len(splits.class_names), img_size,
                            **dict(args.model_arg))
    except (ValueError, TypeError) as error:  # e.g. --model-arg width_mult=0
        raise SetupError(f"--model {args.model} (--model-arg): {error}") from error
    defaults = family_defaults(model)
    if args.backbone_weights:
        from edgedet.models.backbones.weights import load_backbone_weights

        backbone = getattr(model, "backbone", None) or model.vgg
        missing, unexpected = load_backbone_weights(backbone, args.backbone_weights)
        if info.is_main:
            print(f"backbone weights: {len(missing)} missing, {len(unexpected)} unexpected")
    if args.init_checkpoint:
        _load_initial_weights(model, args.init_checkpoint)
    if args.qat:
        from train.qat import enable_qat

        layers = enable_qat(model)
        if info.is_main:
            print(f"QAT: INT8 simulated on {layers} weight layers and their inputs")
    preprocess_config = PreprocessConfig(
        input_size=img_size, resize=defaults.resize if args.resize == "auto" else args.resize,
        interpolation=args.interpolation)
    augmentation = build_augmentation(
        defaults.augmentation if args.augment == "auto" else args.augment, preprocess_config)
    if args.sync_bn and info.distributed:
        if info.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif info.is_main:
            warnings.warn("--sync-bn needs CUDA; keeping per-process BatchNorm", stacklevel=1)
    model = model.to(info.device)
    criterion = build_criterion(model)
    distillation = None
    if args.distill_from:
        from train.distill import load_distillation

        try:
            distillation = load_distillation(args.distill_from, model, img_size, info.device,
                                             args.distill_weight,
                                             args.memory_format == "channels_last")
        except ValueError as error:  # a teacher of another family, classes or anchors
            raise SetupError(f"--distill-from {args.distill_from}: {error}") from error
    if args.optimizer == "adamw":
        lr = args.lr if args.lr is not None else 1e-3
        weight_decay = args.weight_decay if args.weight_decay is not None else 0.05
    else:
        lr = args.lr if args.lr is not None else (
            0.01 if defaults.family == "retinanet" else 2e-3)
        weight_decay = args.weight_decay if args.weight_decay is not None else (
            1e-4 if defaults.family == "retinanet" else 5e-4)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=lr,
        momentum=args.momentum,
        weight_decay=weight_decay, warmup_iters=args.warmup_iters,
        lr_steps=parse_steps(args.lr_steps),
        lr_gamma=args.lr_gamma, workers=args.workers, amp=args.amp,
        eval_every=args.eval_every, seed=args.seed, clip_grad_norm=args.clip_grad_norm,
        max_bad_steps=args.max_bad_steps, incremental_epochs=args.incremental_epochs,
        save_every_minutes=args.save_every_min,
        channels_last=args.memory_format == "channels_last",
        freeze_bn=args.freeze_bn, progress_bar=not args.no_progress,
        # synthetic_size: quantize/run.py renders its synthetic eval split at this size, so
        # that its reference AP is the validation AP logged here (same images, same decoder).
        extra_config={"data": args.data, "model_name": args.model,
                      **({"synthetic_size": list(args.synthetic_size or img_size)}
                         if args.data == "synthetic" else {})},
    )
    out_dir = Path(args.out)
    try:
        trainer = Trainer(model, criterion, splits.train, splits.val, splits.class_names,
                          preprocess_config, augmentation, config, out_dir, info, distillation)
    except DatasetError:
        raise
    except ValueError as error:  # e.g. --incremental-epochs for a model without attention
        raise SetupError(str(error)) from error
    warmup = trainer.schedule.warmup_iters
    if args.resume is not None:
        state = Path(args.resume) if args.resume else out_dir / STATE_FILE
        _check_resumed_preprocess(state, preprocess_config)
        trainer.resume(state)
        if info.is_main and not carry_best_checkpoint(state.parent, out_dir):
            trainer.best_ap, trainer.best_epoch = -1.0, -1  # nothing to compare a new best with
    else:  # a run killed before its first checkpoint left its log: start it afresh
        trainer.log.truncate_from(0)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # A resume keeps the state's optimiser settings: the record says what the run uses.
        write_json_atomic(out_dir / "args.json",
                          {**vars(args), **flag_values(trainer.optimizer)}, indent=2)
        print(f"{args.model} ({defaults.family}) on {info.device} x{info.world_size}, input "
              f"{img_size[0]}x{img_size[1]}, {splits.description}")
        print(f"schedule: {args.optimizer} lr {lr:g}, warm-up {warmup} iters, steps "
              f"{config.lr_steps or '-'}, epochs {trainer.epoch}→{args.epochs}, "
              f"{len(trainer.train_loader)} iters/epoch")
    summary = trainer.fit()
    if info.is_main:
        write_json_atomic(out_dir / "summary.json", summary, indent=2)
        best = (f"{summary['best_AP']:.4f} (epoch {summary['best_epoch']})"
                if summary["best_epoch"] >= 0 else "-")
        last = summary["last_metrics"] or {}
        print(f"done: {summary['epochs_run']} epochs, {summary['iterations']} iterations in "
              f"{summary['seconds']:.0f} s, {summary['skipped_steps']} skipped steps; "
              f"val AP {last.get('AP', float('nan')):.4f} AP50 "
              f"{last.get('AP50', float('nan')):.4f}; best AP {best}; "
              f"checkpoints in {out_dir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if args.qat and not args.init_checkpoint:
        parser.error("--qat fine-tunes a trained model: give it --init-checkpoint CKPT")
    try:
        info = init_distributed(args.device)
    except (RuntimeError, ValueError) as error:  # --device cuda on a machine without CUDA
        parser.error(str(error))
    if info.device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    from edgedet.models.backbones.weights import BackboneWeightsError

    try:
        # Two runs writing one --out (a --resume typed while the run still goes) would
        # interleave their checkpoints and logs: the second stops at once, on every rank.
        with locked_by_main_rank(args.out, "train/main.py", info):
            run(args, info)
    except (DirectoryBusyError, OutputFolderError) as error:  # a bad --out: exit 2
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BackboneWeightsError as error:
        # A bad --backbone-weights FILE is a bad argument: exit 2, like argparse's errors.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:
        print(str(stopped), file=sys.stderr)
        return 128 + stopped.signal_number  # the shell's code for a signal's end
    except SetupError as error:  # a bad setting found while setting the run up: exit 2
        if os.environ.get("EDGEDET_DEBUG"):  # the traceback of what the builder raised
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (TrainingDivergedError, CheckpointError, DatasetError) as error:
        print(f"error: {without_worker_traceback(str(error))}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
