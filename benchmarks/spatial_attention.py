"""Whether a HAR-Net checkpoint's spatial attention does anything: its mask and each conv's
activations on synthetic frames.

    python benchmarks/spatial_attention.py CKPT [CKPT ...] [--images 8] [--seed 1]

HAR-Net's spatial attention (five dilated 3x3 convs, then a sigmoid) multiplies one mask into
both head branches at every pyramid level. A branch that learned nothing gives a mask that is
the same number everywhere; a conv whose every channel is zero after its ReLU on every frame
(*dead*) cuts the mask off from the image altogether. For each checkpoint this prints, over
``--images`` synthetic frames of the eval split's seed, pre-processed as training evaluates
them: the mask's mean, standard deviation over all positions of all levels, minimum and
maximum; and each hidden conv's largest activation after its ReLU and how many of its
channels are dead. PyTorch fp32; no timing.
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.models.checkpoint import CheckpointError, build_from_checkpoint
from edgedet.preprocess import PreprocessConfig, preprocess


@dataclass(frozen=True)
class MaskActivity:
    """A spatial attention's outputs over some frames (mask values in (0, 1))."""

    mask_mean: float
    mask_std: float
    mask_min: float
    mask_max: float
    hidden_max: list[float]  # per hidden conv: the largest activation after its ReLU
    hidden_dead: list[tuple[int, int]]  # per hidden conv: (dead channels, channels)


def mask_activity(model: nn.Module, images: Sequence[torch.Tensor]) -> MaskActivity:
    """Run ``model`` (a HAR-Net with ``head.spatial_attention``) on each ``(N, 3, H, W)``
    float32 batch and gather its spatial attention's mask and hidden activations."""
    head = getattr(model, "head", None)
    attention = getattr(head, "spatial_attention", None)
    if attention is None:
        raise ValueError("the model has no spatial attention (not a HAR-Net, or built without)")
    if not getattr(head, "spatial_attention_enabled", True):
        raise ValueError("the model's spatial attention is switched off "
                         "(set_attention_enabled(spatial=False))")
    convs = [m for m in attention.layers if isinstance(m, nn.Conv2d)]
    hidden: list[list[torch.Tensor]] = [[] for _ in convs[:-1]]
    masks: list[torch.Tensor] = []
    # The hook sees the conv's output before the in-place ReLU after it runs: relu() copies.
    # Kept as (channels, every position of every image of the batch).
    hooks = [conv.register_forward_hook(
        lambda _m, _i, out, index=index: hidden[index].append(
            out.detach().relu().transpose(0, 1).flatten(1)))
        for index, conv in enumerate(convs[:-1])]
    hooks.append(attention.register_forward_hook(
        lambda _m, _i, out: masks.append(out.detach().flatten())))
    try:
        model.eval()
        with torch.no_grad():
            for image in images:
                model(image)
    finally:
        for hook in hooks:
            hook.remove()
    if not masks:
        raise ValueError("no image reached the spatial attention")
    mask = torch.cat(masks)
    # (channels, every position of every level of every frame)
    per_conv = [torch.cat(outs, dim=1) for outs in hidden]
    return MaskActivity(
        mask_mean=float(mask.mean()), mask_std=float(mask.std()),
        mask_min=float(mask.min()), mask_max=float(mask.max()),
        hidden_max=[float(a.max()) for a in per_conv],
        hidden_dead=[(int((a.amax(dim=1) <= 0).sum()), a.shape[0]) for a in per_conv])


def frames(config: Mapping[str, Any], count: int, seed: int, frame_size: tuple[int, int]
           ) -> list[torch.Tensor]:
    """``count`` synthetic frames of ``seed`` (``frame_size`` = (W, H)), pre-processed for
    the checkpoint's input: each a ``(1, 3, H_in, W_in)`` float32 tensor."""
    preprocess_config = PreprocessConfig.from_dict(config["preprocess"])
    scenes = SyntheticScenes(count, seed=seed, config=SyntheticConfig(image_size=frame_size))
    return [torch.from_numpy(preprocess(scenes[i].image, preprocess_config)[0])
            for i in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/spatial_attention.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="HAR-Net checkpoint stems (FOLDER/best)")
    parser.add_argument("--images", type=int, default=8, help="synthetic frames (default 8)")
    parser.add_argument("--seed", type=int, default=1,
                        help="their seed (default 1: training's eval split)")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(640, 480),
                        metavar=("W", "H"), help="frame size (default 640 480)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.seed < 0:
        parser.error("--images must be >= 1 and --seed >= 0")
    print(f"HAR-Net spatial attention on {args.images} synthetic frames (seed {args.seed}, "
          f"{args.frame_size[0]}x{args.frame_size[1]})")
    print("| checkpoint | mask mean | mask std | mask min / max | hidden convs: largest "
          "activation (dead channels) |")
    print("|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        try:
            model, config = build_from_checkpoint(checkpoint)
            activity = mask_activity(model, frames(config, args.images, args.seed,
                                                   tuple(args.frame_size)))
        except (CheckpointError, ValueError) as error:
            parser.error(f"{checkpoint}: {error}")
        convs = ", ".join(f"{peak:.3g} ({dead}/{total})" for peak, (dead, total)
                          in zip(activity.hidden_max, activity.hidden_dead, strict=True))
        print(f"| {checkpoint} | {activity.mask_mean:.4f} | {activity.mask_std:.2e} | "
              f"{activity.mask_min:.4f} / {activity.mask_max:.4f} | {convs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
