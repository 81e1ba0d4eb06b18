"""Structured pruning of a trained checkpoint: ``python quantize/prune.py --checkpoint CKPT``.

Iterative prune -> fine-tune with torch-pruning's dependency graph (``quantize/pruning.py``,
``quantize/prune_schedule.py``). The result, ``OUT/pruned.safetensors``, is an ordinary
checkpoint whose config carries the channel plan: convert it with ``quantize/run.py
--checkpoint OUT/pruned`` like any other.
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

from edgedet._io import DirectoryBusyError, OutputFolderError, exclusive_lock, folder_problem
from edgedet.models.checkpoint import CheckpointError, load_checkpoint
from quantize.prune_schedule import PruneConfig, format_log, run_schedule
from quantize.pruning import CRITERIA

PRUNABLE_FAMILIES = ("retinanet",)  # HAR-Net, DSANet, RetinaNet


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantize/prune.py",
        description="Prune whole channels of a trained detector (HAR-Net's attention couplings "
                    "honoured) in steps, fine-tuning after each; resumable.",
        epilog="Example: python quantize/prune.py --checkpoint checkpoints/harnet_r18/best "
               "--out runs/harnet_pruned --target-flops 0.45 --steps 2 -- --optimizer adamw "
               "--lr 1e-4 --amp bf16   (flags after -- go to train/main.py's fine-tuning)",
    )
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint (X or "
                        "X.safetensors)")
    parser.add_argument("--out", required=True, help="output folder; rerun the same command "
                        "to resume")
    parser.add_argument("--target-flops", type=float, default=0.45, metavar="RATIO",
                        help="final GFLOPs as a fraction of the checkpoint's (default 0.45)")
    parser.add_argument("--steps", type=int, default=2, help="prune / fine-tune rounds "
                        "(default 2)")
    parser.add_argument("--criterion", choices=sorted(CRITERIA), default="l2",
                        help="channel importance (default l2: group weight magnitude)")
    parser.add_argument("--round-to", type=int, default=16, help="channel counts stay "
                        "multiples of this (default 16); the head convs a cross-level group "
                        "norm follows lose channels group by group instead, so theirs stay "
                        "multiples of its group count (16 in the edge HAR-Net)")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="epochs per step "
                        "(default 1)")
    parser.add_argument("--finetune-images", type=int, default=None, help="synthetic images "
                        f"per fine-tuning epoch (default {PruneConfig.finetune_images}; "
                        "synthetic data only)")
    parser.add_argument("--data", default=None, help="fine-tuning data as train/main.py "
                        "--data (default: the checkpoint's)")
    parser.add_argument("--val-images", type=int, default=None, help="synthetic validation "
                        f"images (default {PruneConfig.val_images}; synthetic data only)")
    parser.add_argument("--no-baseline", action="store_true", help="skip fine-tuning the "
                        "unpruned model with the same budget (the comparison)")
    parser.add_argument("--distill", action="store_true", help="fine-tune the pruned steps "
                        "with output distillation from --checkpoint, the model being pruned "
                        "(train/main.py --distill-from; the baseline trains without it)")
    parser.add_argument("--allocation", choices=("uniform", "sensitivity"), default="uniform",
                        help="uniform: every layer loses the same fraction (default); "
                        "sensitivity: each part of the network (ResNet stages, FPN, head "
                        "towers) alone is pruned and scored first, and parts that save more "
                        "GFLOPs per AP point lost are pruned more (quantize/prune_allocation.py)")
    parser.add_argument("--sensitivity-images", type=int, default=100, help="validation "
                        "images each sensitivity probe is scored on (default 100)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after --: extra train/main.py flags for fine-tuning (the "
                        "optimiser, lr, --amp, --workers ...; not those prune.py sets itself: "
                        "the model, input size, data and validation data, epochs, image "
                        "counts, folders)")
    return parser


# train/main.py flags that each fine-tuning gets from prune.py itself (the checkpoint's model
# and input, the step's folders, the step's own budget) or whose data prune.py's own scoring
# of each step would not see (it reads --data's default validation split). Given after ``--``
# they would win over the generated ones (the last of a repeated flag counts; --resume and
# --distill-from come last and would be lost instead) and silently change every step, or
# score the fine-tuning on other images than the pruning. The value says what sets it.
_GENERATED_TRAINING_FLAGS = {
    "model": "the checkpoint", "model_arg": "the checkpoint", "img_size": "the checkpoint",
    "synthetic_size": "the checkpoint", "init_checkpoint": "each step's pruned model",
    "out": "--out", "resume": "rerunning the same command", "data": "--data",
    "epochs": "--finetune-epochs", "synthetic_train": "--finetune-images",
    "synthetic_val": "--val-images", "distill_from": "--distill",
    "val_data": "--data (its validation split scores every step)",
    "val_split": "--data (its validation split scores every step)",
    "synthetic_seed": "prune.py: seeds 0 and 1, the validation one scoring every step",
}


def _check_training_flags(train_args: list[str], parser: argparse.ArgumentParser,
                          distill: bool) -> None:
    """The flags after ``--`` as train/main.py would take them, checked now rather than after
    the first pruning step (the model and data flags come from the checkpoint later).
    Without ``--distill``, ``--distill-from TEACHER`` is the user's to give (every step and
    the baseline then learn from that teacher)."""
    from train.main import build_parser as training_parser
    from train.main import check_arguments
    from train.models import MODEL_BUILDERS

    training, finder = training_parser(), training_parser()
    training.prog = finder.prog = "quantize/prune.py ... --"
    # Which generated flags the user gave, as argparse resolves them (abbreviations too): on
    # a second parser whose generated flags are optional and default to None, any that is
    # not None was given.
    generated = [a for a in finder._actions if a.dest in _GENERATED_TRAINING_FLAGS
                 and (distill or a.dest != "distill_from")]
    for action in generated:
        action.required, action.default = False, None
    given = vars(finder.parse_args(train_args))
    if clashes := [a for a in generated if given[a.dest] is not None]:
        parser.error("; ".join(f"{a.option_strings[0]} after -- is set by quantize/prune.py "
                               f"(from {_GENERATED_TRAINING_FLAGS[a.dest]})" for a in clashes))
    # The fine-tuning folders are made later; a fresh folder name stands in for them.
    stand_in = Path(tempfile.gettempdir()) / f"edgedet-prune-probe-{uuid.uuid4().hex}"
    probe = ["--model", next(iter(MODEL_BUILDERS)), *train_args, "--out", str(stand_in)]
    args = training.parse_args(probe)
    args.model_arg = []  # the checkpoint's model is not built yet: train/main.py checks these
    check_arguments(training, args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 < args.target_flops < 1.0:
        parser.error(f"--target-flops must be between 0 and 1, got {args.target_flops}")
    try:  # before --out is made
        _, checkpoint_config = load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        parser.error(str(error))
    # Synthetic counts with real data would be accepted and do nothing (None: not given).
    data = args.data or checkpoint_config.get("data") or "synthetic"
    given = [flag for flag, value in (("--finetune-images", args.finetune_images),
                                      ("--val-images", args.val_images)) if value is not None]
    if given and data != "synthetic":
        parser.error(f"{', '.join(given)} do nothing with --data {data} (they count synthetic "
                     "images)")
    if args.finetune_images is None:
        args.finetune_images = PruneConfig.finetune_images
    if args.val_images is None:
        args.val_images = PruneConfig.val_images
    if min(args.steps, args.finetune_epochs, args.round_to, args.finetune_images,
           args.val_images, args.sensitivity_images) < 1:
        parser.error("--steps, --finetune-epochs, --round-to, --finetune-images, "
                     "--val-images and --sensitivity-images must be at least 1")
    if problem := folder_problem(args.out):
        parser.error(f"--out {args.out} {problem}; give the output folder")
    family = checkpoint_config.get("head_family")
    if family not in PRUNABLE_FAMILIES:
        # Their P&A / SSD graphs are not what the channel couplings here were written and
        # tested for (torch-pruning ran out of memory tracing PASSD).
        parser.error(f"{args.checkpoint} is a {checkpoint_config.get('architecture')!r} "
                     f"model ({family!r} head); quantize/prune.py prunes the RetinaNet family "
                     "(HAR-Net, DSANet, RetinaNet)")
    train_args = [a for a in args.train_args if a != "--"]
    _check_training_flags(train_args, parser, args.distill)
    config = PruneConfig(
        checkpoint=args.checkpoint, out=args.out, target_flops_ratio=args.target_flops,
        steps=args.steps, criterion=args.criterion, round_to=args.round_to,
        finetune_epochs=args.finetune_epochs, finetune_images=args.finetune_images,
        baseline=not args.no_baseline, train_args=tuple(train_args), data=args.data,
        val_images=args.val_images, progress=not args.no_progress, distill=args.distill,
        allocation=args.allocation, sensitivity_images=args.sensitivity_images)
    try:
        # One run per --out: two would prune, fine-tune and move aside the same steps.
        with exclusive_lock(args.out, "quantize/prune.py"):
            log = run_schedule(config)
    except (DirectoryBusyError, OutputFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_log(log))
    print(f"pruned checkpoint: {args.out}/pruned.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
