"""NCHW vs NHWC input of a converted ``.tflite`` detector: latency, measured interleaved.

    python benchmarks/tflite_layout.py --checkpoint runs/p/best [--threads 1,2] [--rounds 7]

Converts the checkpoint's rewritten model twice with litert-torch: as the tflite target does
(input ``(1, 3, H, W)``) and with an NHWC input ``(1, H, W, 3)`` permuted to NCHW as the
graph's first op (what an app that hands over camera frames as they are would feed). Both go
through the SDK's tflite backend (which transposes NCHW images to NHWC on the host for the
second one, so both runs include every copy an app would pay) and are timed in alternating
rounds; prints median ms per layout and thread count, and the largest output difference.
Needs ``edgedet[tflite-export]``.
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.common.args import require_at_least, require_checkpoint
from edgedet.backends.tflite import TFLiteBackend
from edgedet.models.checkpoint import build_from_checkpoint
from quantize.export_tflite import NamedOutputs, captured_output, import_litert_torch
from quantize.rewrites import rewrite_for_export


class _NHWCInput(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.inner(images.permute(0, 3, 1, 2))


def _convert(module: nn.Module, sample: Tensor, path: Path) -> Path:
    litert_torch = import_litert_torch()
    with captured_output("litert-torch"), torch.no_grad():
        litert_torch.convert(module.eval(), sample_kwargs={"images": sample}).export(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="train/main.py checkpoint")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds")
    parser.add_argument("--runs", type=int, default=10, help="inferences per round")
    args = parser.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads: comma-separated whole numbers, got {args.threads!r}")
    require_at_least(parser, 1, threads=min(threads), rounds=args.rounds, runs=args.runs)
    require_checkpoint(parser, args.checkpoint)
    model, config = build_from_checkpoint(args.checkpoint)
    width, height = config["input_size"]
    named = NamedOutputs(rewrite_for_export(model).eval())
    images = np.random.default_rng(0).normal(size=(1, 3, height, width)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        print("converting twice with litert-torch (a minute or two each)...", flush=True)
        paths = {
            "NCHW": _convert(named, torch.zeros(1, 3, height, width), Path(tmp) / "nchw.tflite"),
            "NHWC": _convert(_NHWCInput(named), torch.zeros(1, height, width, 3),
                             Path(tmp) / "nhwc.tflite"),
        }
        for threads in (int(t) for t in args.threads.split(",")):
            backends = {k: TFLiteBackend(p, threads=threads) for k, p in paths.items()}
            outputs = {k: b.run(images) for k, b in backends.items()}
            diff = max(float(np.abs(outputs["NCHW"][n] - outputs["NHWC"][n]).max())
                       for n in outputs["NCHW"])
            times: dict[str, list[float]] = {k: [] for k in backends}
            for backend in backends.values():
                backend.run(images)
            for _ in range(args.rounds):
                for layout, backend in backends.items():
                    start = time.perf_counter()
                    for _ in range(args.runs):
                        backend.run(images)
                    times[layout].append((time.perf_counter() - start) / args.runs * 1000)
            nchw, nhwc = (statistics.median(times[k]) for k in ("NCHW", "NHWC"))
            print(f"{threads} thread(s): NCHW {nchw:.1f} ms, NHWC {nhwc:.1f} ms "
                  f"(NHWC/NCHW {nhwc / nchw:.2f}); max output difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
