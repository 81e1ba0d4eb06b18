"""Where ``Detector.detect`` spends its time around the model, stage by stage.

    python benchmarks/sdk_overhead.py [--zoo NAME ...] [--frames 6] [--rounds 40]
        [--threads 2] [--json]

For each zoo model (or artifact folder) on each installed backend that reads it, one
``detect()`` is split into its stages, timed call by call on a rotating set of 640x480
synthetic frames:

* *read* the frame (a sum over its bytes: how long merely touching a frame that is not in
  the CPU caches takes, the floor under any pre-processing),
* *resize* (``edgedet.preprocess.resize_to_input``: the resize, letterbox included),
* *normalise* (``normalize_to_nchw``; 0 where the runtime normalises, OpenVINO),
* *runtime* (the backend's ``run``, or ``Detector.run_frames`` on the resized uint8 frame
  where the runtime normalises),
* *decode* (``HeadDecoder.candidates``: scores and boxes of the anchors that can pass the
  score threshold) and *select* (``HeadDecoder.select``: threshold, top-k, NMS / Soft-NMS +
  voting), the two steps of ``detect()``'s decoder with its options (the manifest's
  application threshold).

Every stage runs right after an inference, as in ``detect()`` itself, so the caches are as
a camera loop leaves them (which makes each stage 1.5-3x slower than in a loop of its own on
this 2-core machine). *overhead* = (resize + normalise + decode + select) / runtime, what
``detect()`` adds to the model (the frame read is part of the resize). Models take turns
round by round, so a change in the machine's load hits all alike. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from benchmarks.common.args import require_zoo_models
from edgedet import Detector
from edgedet.backends import BackendError, available_backends
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import normalize_to_nchw, resize_to_input
from edgedet.zoo import list_models

STAGES = ("read", "resize", "normalise", "runtime", "decode", "select")


def time_stages(detector: Detector, frame: np.ndarray, times: dict[str, list[float]]) -> None:
    """One ``detect()`` of ``frame``, stage by stage, appending ms to ``times``."""
    decoder = detector.decoder
    infer = detector.runtime_call(frame)  # the caches as an inference leaves them
    infer()
    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        clock.append(time.perf_counter())
        times[stage].append((clock[-1] - clock[-2]) * 1000.0)

    int(frame.sum(dtype=np.uint32))
    lap("read")
    infer()
    clock.append(time.perf_counter())
    resized = resize_to_input(frame, detector.preprocess_config)[0]
    lap("resize")
    if detector.normalizes_in_runtime:  # OpenVINO: the runtime normalises (0 ms here)
        lap("normalise")
        outputs = detector.run_frames(resized[None])
    else:
        images = normalize_to_nchw(resized, detector.preprocess_config)
        lap("normalise")
        outputs = detector.backend.run(images)
    lap("runtime")
    boxes_xyxy, scores = decoder.candidates(outputs)
    lap("decode")
    decoder.select(boxes_xyxy, scores)
    lap("select")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", nargs="*", default=None,
                        help="zoo models or artifact folders (default: every zoo model)")
    parser.add_argument("--frames", type=int, default=6, help="synthetic frames to rotate")
    parser.add_argument("--rounds", type=int, default=40, help="timed detect() calls each")
    parser.add_argument("--threads", type=int, default=2, help="inference threads")
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
            entries.append((name, backend, detector, {stage: [] for stage in STAGES}))
    if not entries:
        print("nothing to time: no zoo model loads on an installed backend", file=sys.stderr)
        return 1
    print(f"timing {len(entries)} models x {args.rounds} calls", file=sys.stderr, flush=True)
    for round_index in range(args.rounds):
        for _, _, detector, times in entries:
            time_stages(detector, frames[round_index % len(frames)], times)
    rows = []
    for name, backend, _, times in entries:
        ms = {stage: statistics.median(values) for stage, values in times.items()}
        sdk = ms["resize"] + ms["normalise"] + ms["decode"] + ms["select"]
        rows.append({"model": str(Path(name).name), "backend": backend, **ms,
                     "overhead": sdk / ms["runtime"]})
    if args.json:
        print(json.dumps({"rows": rows, "rounds": args.rounds, "threads": args.threads}))
        return 0
    headers = ["model", "backend", *(f"{s} ms" for s in STAGES), "overhead"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        cells = [row["model"], row["backend"], *(f"{row[s]:.2f}" for s in STAGES),
                 f"{100 * row['overhead']:.1f}%"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
