"""Where ``Detector.detect`` spends its time around the model, stage by stage.

    python benchmarks/sdk_overhead.py [--zoo NAME ...] [--frames 6] [--rounds 40]
        [--threads 2] [--caches cold|warm|evicted] [--json]

For each zoo model (or artifact folder) on each installed backend that reads it, one
``detect()`` is split into its stages, timed call by call on a rotating set of 640x480
synthetic frames:

* *read* the frame (a sum over its bytes: how long merely touching a frame that is not in
  the CPU caches takes, the floor under any pre-processing),
* *resize* (``edgedet.preprocess.resize_to_input``: the resize, letterbox included),
* *normalise* (``normalize_to_nchw``; 0 where the runtime normalises, OpenVINO, and where
  ``detect()`` resizes and normalises in one pass, a shrink to half size: *resize*
  then times that pass, ``edgedet.preprocess.preprocess``),
* *runtime* (``Detector.run_model``, or ``Detector.run_frames`` on the resized uint8 frame
  where the runtime normalises; either includes the attend tail, the cpu target's PASSD tap
  sum after the model, as ``detect()`` and every runtime-only timing do),
* *decode* (``HeadDecoder.candidates``: scores and boxes of the anchors that can pass the
  score threshold) and *select* (``HeadDecoder.select``: threshold, top-k, NMS / Soft-NMS +
  voting), the two steps of ``detect()``'s decoder with its options (the manifest's
  application threshold).

Every stage runs right after an inference, as in ``detect()`` itself, so the caches are as
a camera loop leaves them (which makes each stage 1.5-3x slower than in a loop of its own on
this 2-core machine). *overhead* = (resize + normalise + decode + select) / runtime, what
``detect()`` adds to the model (the frame read is part of the resize). Models take turns
round by round, so a change in the machine's load hits all alike. Torch-free.

Why the stages are slower after an inference: ``--caches warm`` times each stage right
after an untimed call of itself, ``--caches evicted`` right after writing 96 MiB (more than
the last-level cache) with no inference at all. Where ``evicted`` reads like ``cold`` and
``warm`` far less, the cost is the Python and numpy working set coming back from memory
after the model's weights and activations pushed it out, not the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from benchmarks.common.args import require_zoo_models
from edgedet import Detector
from edgedet.backends import BackendError, available_backends
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import (
    normalize_to_nchw,
    preprocess,
    resize_to_input,
    runs_in_one_pass,
)
from edgedet.zoo import list_models

STAGES = ("read", "resize", "normalise", "runtime", "decode", "select")


CACHES = ("cold", "warm", "evicted")
# More than the 32 MiB last-level cache of the machines measured: writing it evicts what a
# stage would find there, as an inference's weights and activations do.
EVICTION_BYTES = 96 * 2**20


def time_stages(detector: Detector, frame: np.ndarray, times: dict[str, list[float]],
                caches: str = "cold", eviction_buffer: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """One ``detect()`` of ``frame``, stage by stage, appending ms to ``times``; returns the
    raw outputs its runtime stage gave (for checking that the stages are ``detect()``'s).

    ``caches``: ``cold`` runs the stages as ``detect()`` does, right after an inference;
    ``warm`` runs each stage once untimed right before its timed call (the floor a stage
    reaches with its code and data in the caches); ``evicted`` writes ``eviction_buffer``
    before each stage instead (no inference: whether a stage's cold cost is the
    last-level cache's eviction, not the runtime's threads or the CPU's clock).
    """
    decoder = detector.decoder
    infer = detector.runtime_call(frame)  # the caches as an inference leaves them

    def evict() -> None:
        assert eviction_buffer is not None
        eviction_buffer.fill(1)

    def timed(stage: str, call: Callable[..., Any], *args: Any) -> Any:
        if caches == "warm":
            call(*args)
        elif caches == "evicted":
            evict()
        elif stage in ("read", "resize"):  # cold: the stages after an inference
            infer()
        start = time.perf_counter()
        result = call(*args)
        times[stage].append((time.perf_counter() - start) * 1000.0)
        return result

    config = detector.preprocess_config
    timed("read", lambda: int(frame.sum(dtype=np.uint32)))
    if not detector.normalizes_in_runtime and runs_in_one_pass(frame, config):
        images = timed("resize", lambda: preprocess(frame, config)[0])  # and normalise
        times["normalise"].append(0.0)
        outputs = timed("runtime", detector.run_model, images)
    elif detector.normalizes_in_runtime:  # OpenVINO: the runtime normalises (0 ms here)
        resized = timed("resize", lambda: resize_to_input(frame, config)[0])
        times["normalise"].append(0.0)
        outputs = timed("runtime", detector.run_frames, resized[None])
    else:
        resized = timed("resize", lambda: resize_to_input(frame, config)[0])
        images = timed("normalise", normalize_to_nchw, resized, config)
        outputs = timed("runtime", detector.run_model, images)
    boxes_xyxy, scores = timed("decode", decoder.candidates, outputs)
    timed("select", decoder.select, boxes_xyxy, scores)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", nargs="*", default=None,
                        help="zoo models or artifact folders (default: every zoo model)")
    parser.add_argument("--frames", type=int, default=6, help="synthetic frames to rotate")
    parser.add_argument("--rounds", type=int, default=40, help="timed detect() calls each")
    parser.add_argument("--threads", type=int, default=2, help="inference threads")
    parser.add_argument("--caches", choices=CACHES, default="cold",
                        help="cold: each stage as detect() runs it, after an inference "
                             "(default); warm: each stage right after an untimed call of "
                             "itself; evicted: each stage after writing 96 MiB, no inference")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.rounds < 1:
        parser.error("--frames and --rounds must be at least 1")
    names = require_zoo_models(parser, list_models() if args.zoo is None else args.zoo)
    frames = [scene.image for scene in SyntheticScenes(
        args.frames, seed=0, config=SyntheticConfig(image_size=(640, 480)))]
    entries: list[tuple[str, str, Detector, dict[str, list[float]]]] = []
    for name in names:
        for backend in available_backends():
            try:
                detector = Detector(name, backend=backend, threads=args.threads)
            except BackendError as error:
                if "reads" not in str(error):  # a file it cannot read is no failure
                    print(f"{name} on {backend}: {error}", file=sys.stderr)
                continue
            # A zoo name with a build for this backend loads that sibling (NAME_openvino,
            # NAME_tflite): its row carries the sibling's name, and a whole-zoo run times it
            # once, not once under each name.
            loaded = str(detector.info.get("name") or Path(name).name)
            if any((e[0], e[1]) == (loaded, backend) for e in entries):
                detector.close()
                continue
            entries.append((loaded, backend, detector, {stage: [] for stage in STAGES}))
    if not entries:
        print("nothing to time: no zoo model loads on an installed backend", file=sys.stderr)
        return 1
    print(f"timing {len(entries)} models x {args.rounds} calls, caches {args.caches}",
          file=sys.stderr, flush=True)
    eviction_buffer = (np.empty(EVICTION_BYTES, dtype=np.uint8)
                       if args.caches == "evicted" else None)
    for round_index in range(args.rounds):
        for _, _, detector, times in entries:
            time_stages(detector, frames[round_index % len(frames)], times, args.caches,
                        eviction_buffer)
    rows = []
    for name, backend, detector, times in entries:
        ms = {stage: statistics.median(values) for stage, values in times.items()}
        sdk = ms["resize"] + ms["normalise"] + ms["decode"] + ms["select"]
        one_pass = not detector.normalizes_in_runtime and runs_in_one_pass(
            frames[0], detector.preprocess_config)
        rows.append({"model": str(Path(name).name), "backend": backend, **ms,
                     "overhead": sdk / ms["runtime"], "one_pass": one_pass})
    if args.json:
        print(json.dumps({"rows": rows, "rounds": args.rounds, "threads": args.threads,
                          "caches": args.caches}))
        return 0
    headers = ["model", "backend", *(f"{s} ms" for s in STAGES), "overhead"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        cells = [row["model"], row["backend"],
                 *("in resize" if s == "normalise" and row["one_pass"] else f"{row[s]:.2f}"
                   for s in STAGES), f"{100 * row['overhead']:.1f}%"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
