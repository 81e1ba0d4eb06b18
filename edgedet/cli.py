"""The ``edgedet`` command line: ``edgedet <command> --help`` explains each command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from edgedet import cli_detect, cli_engine
from edgedet._io import error_text
from edgedet.cli_common import (
    SIGPIPE_STATUS,
    CliError,
    detach_stdout,
    load_detector,
    path_argument,
)


def _cmd_synth(args: argparse.Namespace) -> int:
    from edgedet.data.synthetic import SyntheticConfig, write_synthetic_dataset
    from edgedet.data.synthetic_video import render_synthetic_video

    if args.video and args.out:  # one output per run; --out was silently ignored
        raise CliError("give --out DIR (a dataset) or --video FILE (a video), not both")
    config = SyntheticConfig(image_size=(args.img_size[0], args.img_size[1]))
    if args.video:
        path = render_synthetic_video(args.video, num_frames=args.frames, seed=args.seed,
                                      config=config, fps=args.fps, progress=not args.quiet)
        print(f"wrote {path} ({args.frames} frames) and its ground truth "
              f"{Path(path).with_suffix('.json')}")
        return 0
    if args.out is None:
        raise CliError("edgedet synth needs --out DIR (or --video FILE)")
    ann = write_synthetic_dataset(args.out, num_images=args.num_images, seed=args.seed,
                                  config=config, progress=not args.quiet)
    print(f"wrote {args.num_images} images to {Path(args.out) / 'images'} and {ann}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from edgedet.data.evaluate import evaluate_coco

    gt_path = Path(args.data)
    if gt_path.is_dir():
        gt_path = gt_path / "annotations.json"
    if not gt_path.is_file():
        raise CliError(f"ground truth not found: {gt_path} (give a COCO dataset folder or "
                       "its annotations JSON)")
    if not Path(args.pred).is_file():
        raise CliError(f"predictions file not found: {args.pred}")
    metrics = evaluate_coco(gt_path, args.pred, verbose=args.verbose).to_dict()
    if args.json:
        print(json.dumps(metrics))
    else:
        width = max(len(k) for k in metrics)
        for key, value in metrics.items():
            print(f"{key:<{width}}  {value:.4f}")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    try:
        from edgedet.models.summary import PAPER_CONFIGURATIONS, summarize
    except ImportError as exc:  # edgedet.models names the extra
        raise CliError(f"edgedet summary builds the PyTorch models: {exc}") from exc
    from tqdm import tqdm

    if args.checkpoint is not None:
        from edgedet.models.checkpoint import CheckpointError
        from edgedet.models.summary import summarize_checkpoint

        if args.names or args.no_flops:  # they were silently ignored
            raise CliError("--checkpoint measures that checkpoint against its full network, "
                           "GFLOPs included: --names and --no-flops are for the paper "
                           "configurations")

        try:
            measured = summarize_checkpoint(args.checkpoint)
        except CheckpointError as exc:  # a missing or unreadable file: named, no traceback
            raise CliError(str(exc)) from exc
        print(json.dumps(measured.to_dict()) if args.json else measured.format())
        return 0
    configs = list(PAPER_CONFIGURATIONS)
    if args.names:
        known = {c.name: c for c in configs}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            raise CliError(f"unknown model(s) {', '.join(unknown)}; known: "
                           f"{', '.join(known)}")
        configs = [known[n] for n in args.names]
    rows = [summarize(c, with_flops=not args.no_flops)
            for c in tqdm(configs, desc="building models", disable=args.json, leave=False,
                          file=sys.stderr)]
    if args.json:
        print(json.dumps([r.to_dict() for r in rows]))
        return 0
    width = max(len(r.name) for r in rows)
    print(f"{'name':<{width}}  {'input':>9}  {'params (M)':>10}  {'paper (M)':>9}  "
          f"{'GFLOPs':>7}  {'boxes':>7}")
    for r in rows:
        paper = f"{r.paper_params_m:.2f}" if r.paper_params_m is not None else "-"
        gflops = f"{r.gflops:.1f}" if r.gflops is not None else "-"
        size = f"{r.input_size[0]}x{r.input_size[1]}"
        print(f"{r.name:<{width}}  {size:>9}  {r.params_m:>10.2f}  {paper:>9}  {gflops:>7}  "
              f"{r.num_boxes:>7}")
    return 0


def _latency_stats(seconds: list[float]) -> dict:
    """p50 / p90 / mean latency in ms and FPS (1 / mean) of timed calls."""
    import numpy as np

    ms = np.asarray(seconds) * 1000.0
    mean = float(ms.mean())
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": mean, "fps": 1000.0 / mean}


def _cmd_bench(args: argparse.Namespace) -> int:
    import time

    from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes

    if args.iterations < 1 or args.warmup < 0:
        raise CliError("--iterations must be >= 1 and --warmup >= 0")
    width, height = args.frame_size
    try:  # a bad size fails before the model loads
        config = SyntheticConfig(image_size=(width, height))
    except ValueError as exc:
        raise CliError(f"--frame-size {width} {height}: {exc}") from exc
    detector = load_detector(args)
    # A rendered scene rather than noise: post-processing cost depends on what the model sees.
    frame = SyntheticScenes(1, seed=0, config=config)[0].image
    run_model = detector.runtime_call(frame)  # the model alone, fed as detect() feeds it

    for _ in range(args.warmup):
        run_model()
        detector.detect(frame)
    runtime_s, end_to_end_s = [], []
    for _ in range(args.iterations):
        # Interleaved, so both measurements see the same machine load and CPU clocks.
        start = time.perf_counter()
        run_model()
        middle = time.perf_counter()
        detector.detect(frame)
        runtime_s.append(middle - start)
        end_to_end_s.append(time.perf_counter() - middle)
    runtime, end_to_end = _latency_stats(runtime_s), _latency_stats(end_to_end_s)
    result = {
        "model": detector.name, "backend": detector.backend_name,
        "precision": detector.info["precision"], "threads": detector.options.threads,
        "input_size": list(detector.input_size), "frame_size": [width, height],
        "score_threshold": detector.options.score_threshold,
        "double_scale": detector.options.double_scale, "tiles": detector.options.tiles,
        "iterations": args.iterations, "warmup": args.warmup,
        "runtime_only": runtime, "end_to_end": end_to_end,
        "overhead_p50_ms": end_to_end["p50_ms"] - runtime["p50_ms"],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    threads = detector.options.threads or "runtime default"
    print(f"{detector.name}: {detector.backend_name}, {result['precision']}, input "
          f"{detector.input_size[0]}x{detector.input_size[1]}, frame {width}x{height}, "
          f"threads {threads}, score threshold {detector.options.score_threshold}, "
          f"{args.iterations} iterations after {args.warmup} warm-up")
    extra_runs = [f"{detector.options.tiles}x{detector.options.tiles} tiles"
                  if detector.options.tiles > 1 else "",
                  "double-scale testing" if detector.options.double_scale else ""]
    extra = " and ".join(part for part in extra_runs if part)
    if extra:  # runtime-only is the one 1x run; end-to-end also runs the extra models
        print(f"with {extra}: end-to-end includes their model runs, runtime-only is the "
              f"1x model once")
    print(f"{'':<14}{'p50 ms':>9}{'p90 ms':>9}{'mean ms':>9}{'FPS':>9}")
    for label, stats in (("runtime-only", runtime), ("end-to-end", end_to_end)):
        print(f"{label:<14}{stats['p50_ms']:>9.2f}{stats['p90_ms']:>9.2f}"
              f"{stats['mean_ms']:>9.2f}{stats['fps']:>9.1f}")
    around = "everything but the 1x model run" if extra else "pre/post-processing"
    print(f"{around} (p50 end-to-end - runtime-only): {result['overhead_p50_ms']:.2f} ms")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from edgedet.artifact import ManifestError
    from edgedet.zoo import ZOO_DIR, list_models, model_summary

    rows, broken = [], []
    for name in list_models():
        try:  # named as Detector(name) loads it, whatever its manifest calls it
            rows.append({**model_summary(ZOO_DIR / name), "name": name})
        except ManifestError as exc:  # one broken entry must not hide the others
            broken.append(f"{name}: {exc}")
    for line in broken:
        print(f"edgedet models: skipped {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no models in the zoo ({ZOO_DIR}); load an artifact directory with "
              "Detector(PATH) or --model PATH")
        return 0
    width = max(len(str(r["name"])) for r in rows)
    arch = max(len("architecture"), *(len(r["architecture"] or "-") for r in rows))
    print(f"{'name':<{width}}  {'architecture':<{arch}} {'precision':<9} {'backend':<11} "
          f"{'input':>9} {'classes':>7} {'MB':>6} {'AP':>6}")
    for r in rows:
        size = "x".join(str(v) for v in r["input_size"] or []) or "-"
        ap = f"{r['AP']:.3f}" if isinstance(r["AP"], int | float) else "-"
        print(f"{r['name']!s:<{width}}  {r['architecture'] or '-':<{arch}} "
              f"{r['precision'] or '-':<9} {r['backend'] or '-':<11} {size:>9} "
              f"{r['num_classes']:>7} {r['size_mb']:>6.1f} {ap:>6}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgedet",
        description="edgedet: run, evaluate and benchmark single-stage detectors on the edge. "
        "Errors are reported in one line; set EDGEDET_DEBUG=1 for the full traceback.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    synth = sub.add_parser(
        "synth",
        help="write the built-in synthetic dataset (COCO format) or a demo video",
        description=(
            "Render the built-in synthetic detection dataset: DIR/images/*.jpg plus "
            "DIR/annotations.json in COCO format (category ids 1..K in class-list order). "
            "Deterministic: the same --seed gives the same images. With --video, render a "
            "short video of moving objects instead (plus its per-frame ground truth as a "
            "COCO JSON file beside it)."
        ),
    )
    synth.add_argument("--out", type=path_argument, help="output dataset folder (new, "
                       "empty, or a dataset edgedet synth wrote)")
    synth.add_argument("--num-images", type=int, default=100, help="images to render "
                       "(default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    synth.add_argument("--img-size", type=int, nargs=2, default=(640, 480),
                       metavar=("W", "H"), help="image width and height (default: 640 480)")
    synth.add_argument("--video", type=path_argument,
                       help="render a video to this .mp4/.avi file")
    synth.add_argument("--frames", type=int, default=150, help="video frames "
                       "(default: %(default)s)")
    synth.add_argument("--fps", type=float, default=25.0, help="video frame rate "
                       "(default: %(default)s)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_synth)

    ev = sub.add_parser(
        "eval",
        help="COCO metrics of predictions against a dataset's ground truth",
        description=(
            "Score detections with the COCO protocol (pycocotools): AP (0.50:0.95), AP50, "
            "AP75, AP for small/medium/large objects and AR@100. PRED is a COCO results file "
            "(a JSON list of {image_id, category_id, bbox: [x, y, w, h], score}); a COCO "
            "dataset file is also accepted, its annotations scored as 1.0."
        ),
    )
    ev.add_argument("--pred", required=True, help="predictions JSON (COCO results format)")
    ev.add_argument("--data", required=True,
                    help="COCO dataset folder (with annotations.json) or annotations file")
    ev.add_argument("--json", action="store_true",
                    help="print one JSON object with keys AP, AP50, AP75, APs, APm, APl, AR")
    ev.add_argument("--verbose", action="store_true",
                    help="show pycocotools' own output (on stderr)")
    ev.set_defaults(func=_cmd_eval)

    summary = sub.add_parser(
        "summary",
        help="parameters, GFLOPs and default boxes of every named architecture (needs torch)",
        description=(
            "Build each named architecture (the papers' own configurations: backbone, "
            "classes, input size) and print its parameters in millions next to the "
            "paper's figure where the paper gives one, GFLOPs of one forward at its default "
            "input (torch.utils.flop_counter: a multiply-add counts 2), and the number of "
            "default boxes. Building every model takes a minute or two on a laptop CPU."
        ),
    )
    summary.add_argument("--json", action="store_true", help="print a JSON list of objects "
                         "with keys name, params_m, gflops, num_boxes (and input_size, "
                         "paper_params_m)")
    summary.add_argument("--names", nargs="+", metavar="NAME", help="only these models")
    summary.add_argument("--checkpoint", metavar="CKPT", help="measure a trained checkpoint "
                         "instead; for a pruned one, list the layers its channel plan narrows")
    summary.add_argument("--no-flops", action="store_true",
                         help="skip FLOP counting (faster; gflops is null)")
    summary.set_defaults(func=_cmd_summary)

    detect = sub.add_parser(
        "detect",
        help="detect objects in an image, a folder of images or a video",
        description=(
            "Run a detector (zoo name or artifact directory) on SOURCE: an image, a folder of "
            "images or a video file. Prints one line per image / frame (label, score, box "
            "x1 y1 x2 y2 in pixels), or JSON lines with --json. --save writes the annotated "
            "result: an image file for an image, a folder for a folder, an .mp4/.avi file for "
            "a video. A missing, corrupt or truncated image (or one too small for --tiles) is "
            "an error naming the file (exit "
            "status 2); in a folder, each such image is reported on stderr and skipped, the "
            "others are processed, and the command then exits with status 2."
        ),
    )
    detect.add_argument("source", help="image, folder of images, or video file")
    _add_model_arguments(detect)
    detect.add_argument("--save", type=path_argument, metavar="OUT",
                        help="write annotated image(s) / video here")
    detect.add_argument("--json", action="store_true", help="print JSON lines "
                        "{source, detections: [{label, class_id, score, xyxy}]}")
    detect.add_argument("--max-frames", type=int, help="stop a video after this many frames")
    detect.add_argument("--score-threshold", type=float,
                        help="default: the manifest's application threshold")
    detect.add_argument("--iou-threshold", type=float, help="default: the manifest's")
    detect.add_argument("--max-detections", type=int, help="default: the manifest's")
    detect.add_argument("--nms-mode", choices=("hard", "soft", "soft+voting"),
                        help="default: the manifest's")
    detect.set_defaults(func=cli_detect.cmd_detect)

    bench = sub.add_parser(
        "bench",
        help="latency of the model alone and of detect() end to end (p50/p90, FPS)",
        description=(
            "Time a detector on one rendered synthetic frame: runtime-only (the inference "
            "runtime on an already preprocessed input) and end-to-end detect() (preprocess, "
            "inference, decoding, NMS). Reports p50 / p90 / mean latency in ms and FPS "
            "(1000 / mean), after warm-up calls that are not timed."
        ),
    )
    _add_model_arguments(bench)
    bench.add_argument("--iterations", type=int, default=100,
                       help="timed calls per measurement (default: %(default)s)")
    bench.add_argument("--warmup", type=int, default=10,
                       help="untimed calls first (default: %(default)s)")
    bench.add_argument("--frame-size", type=int, nargs=2, default=(640, 480),
                       metavar=("W", "H"), help="camera frame size (default: 640 480)")
    bench.add_argument("--score-threshold", type=float,
                       help="default: the manifest's application threshold (post-processing "
                       "cost grows with the candidates above it)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=_cmd_bench)

    models = sub.add_parser(
        "models",
        help="list the models shipped in the zoo",
        description="List the zoo models installed with edgedet (usable by name in "
        "Detector(NAME) and --model NAME): architecture, precision, backend, input size, "
        "classes, size of the model files (MB) and AP from the conversion's accuracy check "
        "(COCO AP@[.50:.95] in points, 0-100, on its eval images; `edgedet eval` prints "
        "fractions, 0-1).",
    )
    models.add_argument("--json", action="store_true", help="print a JSON list")
    models.set_defaults(func=_cmd_models)

    cli_engine.add_parser(sub)  # build-engine: its own module, as cli.py is long enough
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="zoo model name (see `edgedet models`) or artifact directory")
    from edgedet.backends import BACKENDS

    parser.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                        help="inference runtime (default: the artifact's own)")
    parser.add_argument("--threads", type=int, help="inference threads (default: runtime's)")
    parser.add_argument("--device", default=None,
                        help="where the runtime runs the model (default: its CPU); "
                        + "; ".join(f"{s.name}: {s.device_help}" for s in BACKENDS.values()))
    parser.add_argument("--allow-unchecked", action="store_true",
                        help="load an artifact whose accuracy check failed or never ran "
                        "(refused by default)")
    parser.add_argument("--double-scale", action="store_const", const=True, default=None,
                        help="HAR-Net's double-scale testing: also run the artifact's 2x model "
                        "and merge (artifacts converted with quantize/run.py --double-scale)")
    parser.add_argument("--tiles", type=int, default=None, metavar="N",
                        help="tiled inference for small objects: also run an N x N grid of "
                        "overlapping crops and merge (N*N+1 model runs per image; default 1)")


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (POLLERR on its write
    end); True where that cannot be asked, as the pipe error most likely was stdout's."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no stdout fd
        return True


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the process's own command: a SIGTERM stops it like Ctrl-C, so that a
        # file being written is finished or removed, never left as a hidden temporary file
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # here, where a reader that left is caught, not at the exit
        return status
    except BrokenPipeError as exc:  # e.g. `edgedet models --json | head -1`: the reader left
        if _stdout_reader_gone():
            detach_stdout()
            return SIGPIPE_STATUS
        print(f"edgedet {args.command}: error: {exc}", file=sys.stderr)  # another pipe's
        return 2
    except (CliError, ValueError, OSError) as exc:
        if os.environ.get("EDGEDET_DEBUG"):
            raise
        print(f"edgedet {args.command}: error: {error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
