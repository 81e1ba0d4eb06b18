"""Which channel criterion keeps the most AP? ``benchmarks/prune_criteria.py --checkpoint CKPT``

Prunes the checkpoint once per criterion of ``quantize.pruning.CRITERIA`` to the same GFLOPs
target (no fine-tuning) and prints the validation AP each leaves, next to the unpruned AP.
``random`` is the floor an uninformed choice reaches. The measurements behind
``quantize/prune.py``'s default (L2) are in ``docs/pruned_harnet_early.md`` ("The criterion").
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import time

from benchmarks.common.args import require_at_least, require_checkpoint, require_choices
from edgedet.models.checkpoint import build_from_checkpoint, load_checkpoint
from edgedet.models.summary import count_gflops
from quantize.prune_schedule import PruneConfig, validation_ap
from quantize.pruning import CRITERIA, prune_to_flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint")
    parser.add_argument("--target-flops", type=float, default=0.67,
                        help="GFLOPs fraction after the one pruning step (default 0.67, the "
                             "first of two steps to 0.45)")
    parser.add_argument("--criteria", default=",".join(CRITERIA),
                        help=f"comma-separated, of {', '.join(CRITERIA)}")
    parser.add_argument("--val-images", type=int, default=200)
    args = parser.parse_args(argv)
    if not 0 < args.target_flops < 1:
        parser.error(f"--target-flops must be between 0 and 1, got {args.target_flops}")
    require_choices(parser, "--criteria", args.criteria.split(","), CRITERIA)
    require_at_least(parser, 1, val_images=args.val_images)
    require_checkpoint(parser, args.checkpoint)
    model, _ = build_from_checkpoint(args.checkpoint)
    _, config = load_checkpoint(args.checkpoint)
    input_size = tuple(int(v) for v in config["preprocess"]["input_size"])
    eval_config = PruneConfig(checkpoint=args.checkpoint, out="", val_images=args.val_images,
                              progress=False)
    gflops = count_gflops(model, input_size)  # type: ignore[arg-type]
    print(f"{'criterion':<10} {'ratio':>6} {'GFLOPs':>7} {'AP':>6} {'seconds':>8}")
    print(f"{'unpruned':<10} {'':>6} {gflops:>7.2f} "
          f"{100 * validation_ap(model, config, eval_config):>6.2f}")
    for criterion in args.criteria.split(","):
        start = time.perf_counter()
        pruned, result = prune_to_flops(model, input_size,  # type: ignore[arg-type]
                                        args.target_flops * gflops, criterion)
        ap = validation_ap(pruned, config, eval_config)
        print(f"{criterion:<10} {result.ratio:>6.3f} {result.gflops_after:>7.2f} "
              f"{100 * ap:>6.2f} {time.perf_counter() - start:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
