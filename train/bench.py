"""Training throughput: ``python train/bench.py --model NAME [--img-size N] [--batch-size B]``.

Times full training steps (forward, the family's loss on synthetic targets, backward, SGD
step) at the model's paper input size and prints images/s and peak memory (CUDA: the
allocator's peak; CPU: the process's peak resident set).
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import resource
import time
import warnings
from contextlib import nullcontext

import torch

from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import PreprocessConfig
from train.data import TrainingDataset, collate_training
from train.distributed import resolve_device
from train.losses import build_criterion
from train.main import parse_size
from train.models import MODEL_BUILDERS, build_model, default_img_size, family_defaults
from train.schedule import build_sgd


def benchmark(name: str, img_size: tuple[int, int], batch_size: int, steps: int, warmup: int,
              device: torch.device, amp: str | None) -> dict[str, float]:
    """Images/s and peak memory (MiB) of ``steps`` timed training steps after ``warmup``."""
    samples = SyntheticScenes(batch_size, seed=0, config=SyntheticConfig(image_size=img_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(name, len(samples.class_names), img_size).to(device).train()
    config = PreprocessConfig(input_size=img_size, resize=family_defaults(model).resize)
    images, targets = collate_training(
        [TrainingDataset(samples, config, None, seed=0)[i] for i in range(batch_size)])
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    priors = torch.from_numpy(model.anchor_spec(img_size).generate()).to(device)
    criterion = build_criterion(model)
    optimizer = build_sgd(model, 1e-4, 0.9, 1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            outputs = model(images)
        loss = criterion({k: v.float() for k, v in outputs.items()}, priors, targets)["loss"]
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    elapsed = time.perf_counter() - start
    return {"images_per_s": steps * batch_size / elapsed, "peak_mib": peak_mib,
            "step_s": elapsed / steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list(MODEL_BUILDERS), metavar="NAME",
                        help=f"one of: {', '.join(MODEL_BUILDERS)}")
    parser.add_argument("--img-size", type=parse_size, default=None,
                        help="input N or WxH (default: the paper size)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16"),
                        default=None, help="mixed precision")
    args = parser.parse_args(argv)
    paper = default_img_size(args.model)
    img_size = args.img_size or ((paper, paper) if isinstance(paper, int) else tuple(paper))
    device = resolve_device(args.device)
    result = benchmark(args.model, img_size, args.batch_size, args.steps, args.warmup, device,
                       args.amp)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.model} {img_size[0]}x{img_size[1]} batch {args.batch_size} "
          f"{args.amp or 'fp32'} on {where}: {result['images_per_s']:.1f} images/s "
          f"({result['step_s'] * 1000:.0f} ms/step), peak memory {result['peak_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
