"""COCO metrics of zoo models (or artifact folders) on a synthetic split of any seed:
``python benchmarks/eval_split.py --seed 7``

The accuracy check of ``quantize/run.py`` scores every artifact on the synthetic eval split,
seed 1; training uses seed 0 and INT8 calibration seed 2. A model tuned while watching seed 1
could flatter itself there, so this scores artifacts, exactly as the SDK runs them
(``Detector(..., settings="evaluation")``), on a split of another seed that nothing saw. The
frames are the size of each artifact's own accuracy check (its manifest's
``accuracy.eval_data.image_size``; else 640x480). Prints AP / AP50 / AP75 / APs / APm / APl /
AR in points and the p50 ``detect()`` latency (one call at a time on this machine: a rough
figure, compare speeds with ``benchmarks/speed.py``).
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import json
import statistics
import sys
from collections.abc import Sequence

from benchmarks.common.args import require_zoo_models
from edgedet.backends import BACKENDS, BackendError
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.detector import Detector
from edgedet.zoo import list_models
from quantize.accuracy import coco_metrics, run_detector

DEFAULT_FRAME_SIZE = (640, 480)
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR")


def frame_size_of(detector: Detector) -> tuple[int, int]:
    """The frame size of the artifact's own accuracy check (its eval images)."""
    eval_data = (detector.info.get("accuracy") or {}).get("eval_data") or {}
    size = eval_data.get("image_size") or DEFAULT_FRAME_SIZE
    return int(size[0]), int(size[1])


def measure(model: str, seed: int, images: int, backend: str, progress: bool) -> dict:
    detector = Detector(model, backend=backend, settings="evaluation")
    config = SyntheticConfig(image_size=frame_size_of(detector))
    samples = list(SyntheticScenes(images, seed=seed, config=config))
    run = run_detector(detector.detect, samples, progress, model)
    metrics = coco_metrics(samples, run.detections, detector.class_names)
    return {"model": model, "backend": detector.backend_name, "seed": seed,
            "images": images, **{k: metrics[k] for k in KEYS},
            "detect_p50_ms": statistics.median(run.latencies_ms)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/eval_split.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated zoo names or artifact folders (default: every "
                             "zoo model)")
    parser.add_argument("--seed", type=int, default=7,
                        help="synthetic split seed (default 7; 0 train, 1 eval, 2 calibration)")
    parser.add_argument("--images", type=int, default=200, help="images (default 200)")
    parser.add_argument("--backend", default="auto",
                        help="backend name, or auto: each artifact's own (default)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per model")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be >= 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.backend not in (*BACKENDS, "auto"):
        parser.error(f"--backend {args.backend!r}: choose auto or one of {', '.join(BACKENDS)}")
    if args.models is not None and not [m for m in args.models.split(",") if m.strip()]:
        parser.error("--models: give at least one model (leave it out for every zoo model)")
    models = require_zoo_models(parser, [m.strip() for m in args.models.split(",") if m.strip()]
                                if args.models is not None else list_models())
    if not args.json:
        print(f"synthetic split seed {args.seed}, {args.images} images, evaluation settings")
        print(f"{'model':<28} {'backend':<12} " + " ".join(f"{k:>5}" for k in KEYS)
              + "  p50 ms")
    measured = 0
    for model in models:
        try:
            row = measure(model, args.seed, args.images, args.backend, progress=not args.json)
        except BackendError as error:  # e.g. a _tflite zoo file under --backend openvino
            print(f"{model}: skipped, {error}", file=sys.stderr)
            continue
        measured += 1
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['model']:<28} {row['backend']:<12} "
                  + " ".join(f"{row[k]:>5.1f}" for k in KEYS)
                  + f"  {row['detect_p50_ms']:>6.1f}")
    if not measured:
        print(f"error: no model ran on --backend {args.backend}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
