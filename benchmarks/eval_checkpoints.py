"""COCO AP of PyTorch checkpoints on synthetic validation splits of any seeds:
``python benchmarks/eval_checkpoints.py --seeds 1,7,3 CKPT [CKPT ...]``

Training scores its checkpoints on the synthetic eval split (seed 1) and picks ``best`` by
it; ``benchmarks/eval_split.py`` scores converted artifacts on other splits. This scores
checkpoints themselves (fp32, the path training's evaluation takes: the SDK's pre-processing,
decoding and NMS of the checkpoint's own config), so that a comparison of two training runs
can be read on splits neither run was selected on (README, "Pruned HAR-Net": seeds 7 and 3).
Each split is ``--images`` scenes of the given seed at ``--frame-size``, the size training's
synthetic frames default to. Prints one row per checkpoint (AP in points), or JSON lines.
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import json
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.decoder import HeadDecoder
from edgedet.models.checkpoint import CheckpointError, build_from_checkpoint
from edgedet.preprocess import PreprocessConfig
from train.data import EvalDataset, collate_eval
from train.distributed import DistInfo
from train.evaluation import evaluate


def checkpoint_ap(checkpoint: str, seeds: Sequence[int], images: int,
                  frame_size: tuple[int, int]) -> dict[int, float]:
    """AP in points of ``checkpoint`` on each seed's split of ``images`` scenes."""
    model, config = build_from_checkpoint(checkpoint)
    model.eval()
    preprocess = PreprocessConfig.from_dict(config["preprocess"])
    decoder = HeadDecoder.from_manifest(config)
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    scores = {}
    for seed in seeds:
        scenes = SyntheticScenes(images, seed=seed, config=SyntheticConfig(image_size=frame_size))
        loader = DataLoader(EvalDataset(scenes, preprocess), batch_size=8,
                            collate_fn=collate_eval)
        metrics = evaluate(model, loader, decoder, info)
        assert metrics is not None  # one process: always rank 0
        scores[seed] = 100.0 * float(metrics["AP"])
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/eval_checkpoints.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint stems (FOLDER/best)")
    parser.add_argument("--seeds", default="1,7,3",
                        help="comma-separated split seeds (default 1,7,3: training's eval "
                             "split, then two that no training or calibration uses)")
    parser.add_argument("--images", type=int, default=200, help="scenes per split (default 200)")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"),
                        help="synthetic frame size (default 640 480, training's default)")
    parser.add_argument("--json", action="store_true", help="one JSON object per checkpoint")
    args = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if args.images < 1 or any(seed < 0 for seed in seeds):
        parser.error("--images must be >= 1 and every seed >= 0")
    if not args.json:
        print(f"AP on synthetic splits of {args.images} images, {args.frame_size[0]}x"
              f"{args.frame_size[1]}; seeds {', '.join(map(str, seeds))}")
    for checkpoint in args.checkpoints:
        try:
            scores = checkpoint_ap(checkpoint, seeds, args.images, tuple(args.frame_size))
        except CheckpointError as error:
            parser.error(str(error))
        if args.json:
            print(json.dumps({"checkpoint": checkpoint, **{str(s): scores[s] for s in seeds}}))
        else:
            print(f"{checkpoint}: " + " / ".join(f"{scores[s]:.2f}" for s in seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
