"""Training throughput: ``python train/bench.py --model NAME [--variants A,B,...]``.

Times full training steps (forward, the family's loss on synthetic targets, backward, SGD
step) and prints images/s and peak memory for each variant of the same model. The variants run
interleaved (one round of every variant, then the next round) so that a shared, noisy machine
slows them alike; the ratios to the first variant are the figures to quote. The synthetic data
pipeline (render + preprocess + augment, one process) is timed separately, since the training
loop overlaps it with the steps in ``--workers`` processes, and again reading the scenes from a
``--synthetic-cache`` instead of rendering them.

Variants (``--variants``):
  sample-first   PASSD's attend convs in the reference order (sample every channel, then
                 contract): the training module before the contract-first rewrite
  fp32           the default: contract-first attend, float32, contiguous (NCHW) tensors
  channels_last  model and input in channels-last memory format
  bf16           CPU/CUDA autocast to bfloat16
  bf16_channels_last  both (what ``train/main.py --amp bf16`` runs by default)
  compile        torch.compile of the model's forward (minutes of warm-up on a CPU)
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import copy
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from edgedet.data.sample import Sample
from edgedet.data.scene_cache import CachedScenes
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import PreprocessConfig
from train.data import TrainingDataset, build_augmentation, collate_training
from train.distributed import resolve_device
from train.losses import build_criterion
from train.main import parse_model_arg, parse_size
from train.models import MODEL_BUILDERS, build_model, default_img_size, family_defaults
from train.schedule import build_sgd


@dataclass(frozen=True)
class Variant:
    """How one variant changes the model and its input before timing."""

    description: str
    channels_last: bool = False
    amp: torch.dtype | None = None
    compile: bool = False
    contract_first: bool = True


VARIANTS: dict[str, Variant] = {
    "sample-first": Variant("attend convs sample-then-contract (before)", contract_first=False),
    "fp32": Variant("contract-first attend, fp32, NCHW (default)"),
    "channels_last": Variant("channels-last memory format", channels_last=True),
    "bf16": Variant("autocast bfloat16", amp=torch.bfloat16),
    # What train/main.py --amp bf16 runs (channels-last is its default memory format).
    "bf16_channels_last": Variant("autocast bfloat16, channels-last", channels_last=True,
                                  amp=torch.bfloat16),
    "compile": Variant("torch.compile", compile=True),
}


def _set_attend_order(model: nn.Module, contract_first: bool) -> None:
    for module in model.modules():
        if hasattr(module, "contract_first"):
            module.contract_first = contract_first


def make_step(model: nn.Module, images: Tensor, targets: list[dict[str, Tensor]],
              priors: Tensor, variant: Variant) -> Callable[[], None]:
    """One training step of a private copy of ``model`` set up as ``variant`` says."""
    model = copy.deepcopy(model)
    _set_attend_order(model, variant.contract_first)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant.compile else model
    criterion = build_criterion(model)
    optimizer = build_sgd(model, 1e-4, 0.9, 1e-4)
    device_type = images.device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(device_type, dtype=variant.amp) if variant.amp
                    else nullcontext())
        with autocast:
            outputs = forward(images)
        loss = criterion({k: v.float() for k, v in outputs.items()}, priors, targets)["loss"]
        loss.backward()
        optimizer.step()

    return step


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(name: str, img_size: tuple[int, int], batch_size: int, rounds: int,
              steps_per_round: int, warmup: int, device: torch.device, variants: list[str],
              model_args: dict[str, object], synthetic_size: tuple[int, int]) -> dict[str, dict]:
    """Per variant: ``images_per_s`` (median over rounds), ``step_s`` and ``peak_mib``."""
    samples = SyntheticScenes(batch_size, seed=0, config=SyntheticConfig(image_size=synthetic_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(name, len(samples.class_names), img_size, **model_args)
    model = model.to(device).train()
    config = PreprocessConfig(input_size=img_size, resize=family_defaults(model).resize)
    images, targets = collate_training(
        [TrainingDataset(samples, config, None, seed=0)[i] for i in range(batch_size)])
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    priors = torch.from_numpy(model.anchor_spec(img_size).generate()).to(device)
    steps = {v: make_step(model, images, targets, priors, VARIANTS[v]) for v in variants}
    peaks: dict[str, float] = {}
    for variant, step in steps.items():
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        _synchronize(device)
        # CPU: the process's peak resident set grows monotonically, so later variants can only
        # report "at most"; CUDA: the allocator's peak of this variant.
        peaks[variant] = (torch.cuda.max_memory_allocated(device) / 2**20
                          if device.type == "cuda"
                          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, step in steps.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            _synchronize(device)
            times[variant].append((time.perf_counter() - start) / steps_per_round)
    return {v: {"step_s": statistics.median(times[v]),
                "images_per_s": batch_size / statistics.median(times[v]),
                "peak_mib": peaks[v]} for v in variants}


def data_pipeline_rate(img_size: tuple[int, int], synthetic_size: tuple[int, int],
                       augment: str, model: str, images: int = 16,
                       cache: Path | None = None) -> float:
    """Images/s one process renders (or, with ``cache``, reads from a filled
    ``--synthetic-cache``), preprocesses and augments: the loader's work."""
    samples: Sequence[Sample] = SyntheticScenes(
        images, seed=1, config=SyntheticConfig(image_size=synthetic_size))
    if cache is not None:
        samples = CachedScenes(samples, cache)  # type: ignore[arg-type]
        for i in range(images):  # fill it: the timed pass reads
            samples[i]
    resize = family_defaults(build_model(model, len(samples.class_names), img_size)).resize
    config = PreprocessConfig(input_size=img_size, resize=resize)
    dataset = TrainingDataset(samples, config, build_augmentation(augment, config), seed=0)
    start = time.perf_counter()
    for i in range(images):
        dataset[i]
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/bench.py", description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[9:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=list(MODEL_BUILDERS), metavar="NAME",
                        help=f"one of: {', '.join(MODEL_BUILDERS)}")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        type=parse_model_arg, help="builder keyword, as in train/main.py")
    parser.add_argument("--img-size", type=parse_size, default=None,
                        help="input N or WxH (default: the paper size)")
    parser.add_argument("--synthetic-size", type=parse_size, default=(640, 480),
                        help="size of the rendered synthetic frames (default 640x480)")
    parser.add_argument("--augment", choices=("ssd", "retinanet", "none"), default="none",
                        help="augmentation timed in the data-pipeline figure (default none)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--variants", default="sample-first,fp32,channels_last",
                        help=f"comma-separated, first is the baseline; of: {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    paper = default_img_size(args.model)
    img_size = args.img_size or ((paper, paper) if isinstance(paper, int) else tuple(paper))
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model} {img_size[0]}x{img_size[1]} batch {args.batch_size} on {where}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps")
    results = benchmark(args.model, img_size, args.batch_size, args.rounds, args.steps,
                        args.warmup, device, variants, dict(args.model_arg), args.synthetic_size)
    baseline = results[variants[0]]["images_per_s"]
    for variant, result in results.items():
        print(f"  {variant:<14} {result['images_per_s']:6.2f} images/s "
              f"({result['step_s'] * 1000:5.0f} ms/step, x{result['images_per_s'] / baseline:.2f})"
              f"  peak memory {result['peak_mib']:.0f} MiB  [{VARIANTS[variant].description}]")
    width, height = args.synthetic_size
    rate = data_pipeline_rate(img_size, args.synthetic_size, args.augment, args.model)
    with tempfile.TemporaryDirectory() as cache:
        cached = data_pipeline_rate(img_size, args.synthetic_size, args.augment, args.model,
                                    cache=Path(cache))
    print(f"  data pipeline  {rate:6.1f} images/s per loader process (render {width}x{height}, "
          f"augment {args.augment}); {cached:.1f} images/s from --synthetic-cache")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
