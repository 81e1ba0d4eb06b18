"""Latency of several artifacts (or one artifact on several backends), measured interleaved.

    python benchmarks/backends.py OUT/cpu/passd_mobilenet_fp32 OUT/cpu/passd_mobilenet_int8 \
        OUT/openvino/passd_mobilenet_int8 OUT/tflite/passd_mobilenet_int8@tflite [--threads 2]

``edgedet bench`` times one model; comparing models with separate runs on a shared, noisy
machine compares the machine's load as much as the models. Here every model runs a few calls
in turn, round after round, so each sees the same load and CPU clocks. A model may be given as
``PATH`` or ``PATH@BACKEND`` (e.g. an ONNX artifact on ``openvino``), with ``+2x`` appended for
HAR-Net's double-scale testing (``harnet_pruned_int8+2x``; runtime-only is then the 1x model).
Runtime-only is the model alone as ``detect()`` feeds it (``Detector.runtime_call``). Prints,
per model, p50 runtime-only and end-to-end ``detect()`` latency and the ratio to the first
model's runtime-only p50, over all calls and over the calls made on near and on far CPUs
(``benchmarks/core_latency.py``: where the two CPUs sit changes these figures); ``--json``
prints the same as one JSON object.
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import json

from benchmarks.common.args import require_at_least, require_zoo_models
from benchmarks.common.timing import Timed, machine_description, time_interleaved
from benchmarks.core_latency import CoreLatencyProbe
from edgedet import Detector
from edgedet.backends import BACKENDS
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes

PLACEMENTS = (None, "near", "far")


def _parse(spec: str) -> tuple[str, str, bool]:
    """``(model, backend, double_scale)`` of ``MODEL[@BACKEND][+2x]`` (ValueError if not)."""
    double_scale = spec.endswith("+2x")
    model, _, backend = spec.removesuffix("+2x").partition("@")
    if not model or "+" in spec.removesuffix("+2x"):
        raise ValueError(f"{spec!r}: expected MODEL, MODEL@BACKEND, MODEL+2x or "
                         "MODEL@BACKEND+2x")
    if backend and backend not in (*BACKENDS, "auto"):
        raise ValueError(f"{spec!r}: unknown backend {backend!r}; choose auto or one of "
                         f"{', '.join(BACKENDS)}")
    return model, backend or "auto", double_scale


def _load(spec: str, threads: int | None) -> Detector:
    model, backend, double_scale = _parse(spec)
    return Detector(model, backend=backend, threads=threads, double_scale=double_scale)


def _row(spec: str, detector: Detector, item: Timed, reference: Timed) -> dict:
    """One model's figures over all calls (``*_p50_ms``) and per CPU placement."""
    row: dict = {"model": spec, "name": detector.name, "backend": detector.backend_name,
                 "precision": detector.info["precision"]}
    for where in PLACEMENTS:
        suffix = "" if where is None else f"_{where}"
        runtime, first = item.p50(where), reference.p50(where)
        row[f"runtime_p50_ms{suffix}"] = runtime
        row[f"end_to_end_p50_ms{suffix}"] = item.detect_p50(where)
        row[f"speedup_vs_first{suffix}"] = (None if runtime is None or first is None
                                            else first / runtime)
    return row


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


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
    require_at_least(parser, 1, threads=args.threads)
    require_at_least(parser, 32, frame_size=min(args.frame_size))
    try:
        parsed = [_parse(spec) for spec in args.models]
    except ValueError as error:
        parser.error(str(error))
    require_zoo_models(parser, (model for model, _, _ in parsed))

    with CoreLatencyProbe() as probe:
        try:
            detectors = [_load(spec, args.threads) for spec in args.models]
        except (ValueError, OSError, RuntimeError) as error:  # a backend or model it refuses
            parser.error(str(error))
        width, height = args.frame_size
        frame = SyntheticScenes(1, seed=0,
                                config=SyntheticConfig(image_size=(width, height)))[0].image
        items = [Timed("backends", spec, detector.backend_name, str(detector.info["precision"]),
                       run=detector.runtime_call(frame),
                       detect=lambda d=detector: d.detect(frame))
                 for spec, detector in zip(args.models, detectors, strict=True)]
        readings = time_interleaved(items, args.rounds, args.calls, args.warmup,
                                    probe if probe.available else None)

    rows = [_row(spec, detector, item, items[0])
            for spec, detector, item in zip(args.models, detectors, items, strict=True)]
    if args.json:
        print(json.dumps({"machine": machine_description(), "threads": args.threads,
                          "rounds": args.rounds, "calls": args.calls,
                          "frame_size": [width, height], "core_round_trips_ns": readings,
                          "models": rows}))
        return 0
    print(f"{machine_description()}: {args.rounds} interleaved rounds x {args.calls} calls, "
          f"frame {width}x{height}, "
          f"threads {args.threads or 'runtime default'}; runtime / detect() p50 ms, speed-up "
          "= the first model's runtime / this one's; near / far: the calls made on near / far "
          "CPUs (benchmarks/core_latency.py)")
    print("| model | backend | precision | all calls | speed-up | near | speed-up | far | "
          "speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = []
        for suffix in ("", "_near", "_far"):
            speedup = row[f"speedup_vs_first{suffix}"]
            cells += [f"{_ms(row[f'runtime_p50_ms{suffix}'])} / "
                      f"{_ms(row[f'end_to_end_p50_ms{suffix}'])}",
                      "-" if speedup is None else f"{speedup:.2f}x"]
        print(f"| {row['model']} | {row['backend']} | {row['precision']} | "
              + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
