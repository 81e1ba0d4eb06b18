"""Latency of several artifacts (or one artifact on several backends), measured interleaved.

    python benchmarks/backends.py OUT/cpu/passd_mobilenet_fp32 OUT/cpu/passd_mobilenet_int8 \
        OUT/openvino/passd_mobilenet_int8 OUT/tflite/passd_mobilenet_int8@tflite [--threads 2]

``edgedet bench`` times one model; comparing models with separate runs on a shared, noisy
machine compares the machine's load as much as the models. Here every model runs a few calls
in turn, round after round, so each sees the same load and CPU clocks. A model may be given as
``PATH`` or ``PATH@BACKEND`` (e.g. an ONNX artifact on ``openvino``), with ``+2x`` appended for
HAR-Net's double-scale testing (``harnet_pruned_int8+2x``; runtime-only is then the 1x model).
Prints, per model, p50 runtime-only and end-to-end ``detect()`` latency over all rounds and the
ratio to the first model's runtime-only p50; ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import json
import statistics
import time

from edgedet import Detector
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes


def _load(spec: str, threads: int | None) -> Detector:
    double_scale = spec.endswith("+2x")
    path, _, backend = spec.removesuffix("+2x").partition("@")
    return Detector(path, backend=backend or "auto", threads=threads,
                    double_scale=double_scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="artifact directory or zoo name, "
                        "optionally @BACKEND (onnxruntime, openvino, tflite, tensorrt), then "
                        "+2x for double-scale testing")
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads for every model (default: each runtime's)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per model per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per model first")
    parser.add_argument("--frame-size", type=int, nargs=2, default=(640, 480),
                        metavar=("W", "H"), help="camera frame size (default: 640 480)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1 or args.warmup < 0:
        parser.error("--rounds and --calls must be >= 1, --warmup >= 0")

    detectors = [_load(spec, args.threads) for spec in args.models]
    width, height = args.frame_size
    frame = SyntheticScenes(1, seed=0, config=SyntheticConfig(image_size=(width, height)))[0].image
    inputs = [detector.preprocess(frame)[0] for detector in detectors]
    for detector, images in zip(detectors, inputs, strict=True):
        for _ in range(args.warmup):
            detector.run_model(images)
            detector.detect(frame)

    runtime_ms: list[list[float]] = [[] for _ in detectors]
    end_to_end_ms: list[list[float]] = [[] for _ in detectors]
    for _ in range(args.rounds):
        for index, (detector, images) in enumerate(zip(detectors, inputs, strict=True)):
            for _ in range(args.calls):
                start = time.perf_counter()
                detector.run_model(images)
                middle = time.perf_counter()
                detector.detect(frame)
                runtime_ms[index].append((middle - start) * 1000.0)
                end_to_end_ms[index].append((time.perf_counter() - middle) * 1000.0)

    rows = []
    for spec, detector, runtime, end_to_end in zip(args.models, detectors, runtime_ms,
                                                    end_to_end_ms, strict=True):
        rows.append({
            "model": spec, "name": detector.name, "backend": detector.backend_name,
            "precision": detector.info["precision"],
            "runtime_p50_ms": statistics.median(runtime),
            "end_to_end_p50_ms": statistics.median(end_to_end),
        })
    reference = rows[0]["runtime_p50_ms"]
    for row in rows:
        row["speedup_vs_first"] = reference / row["runtime_p50_ms"]
    if args.json:
        print(json.dumps({"threads": args.threads, "rounds": args.rounds, "calls": args.calls,
                          "frame_size": [width, height], "models": rows}))
        return 0
    print(f"{args.rounds} interleaved rounds x {args.calls} calls, frame {width}x{height}, "
          f"threads {args.threads or 'runtime default'}")
    print(f"{'model':<48}{'backend':>12}{'precision':>10}{'runtime p50':>13}"
          f"{'detect p50':>12}{'speed-up':>10}")
    for row in rows:
        print(f"{row['model'][-48:]:<48}{row['backend']:>12}{row['precision']:>10}"
              f"{row['runtime_p50_ms']:>10.1f} ms{row['end_to_end_p50_ms']:>9.1f} ms"
              f"{row['speedup_vs_first']:>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
