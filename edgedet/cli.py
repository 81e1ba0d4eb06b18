"""The ``edgedet`` command line: ``edgedet <command> --help`` explains each command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path


class CliError(Exception):
    """An error to report to the user as one line, without a traceback."""


def _cmd_synth(args: argparse.Namespace) -> int:
    from edgedet.data.synthetic import (
        SyntheticConfig,
        render_synthetic_video,
        write_synthetic_dataset,
    )

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
    except ImportError as exc:
        raise CliError(f"edgedet summary builds the PyTorch models and needs torch ({exc}); "
                       "install it with: pip install 'edgedet[torch]'") from exc
    from tqdm import tqdm

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
    synth.add_argument("--out", type=Path, help="output dataset folder")
    synth.add_argument("--num-images", type=int, default=100, help="images to render "
                       "(default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    synth.add_argument("--img-size", type=int, nargs=2, default=(640, 480),
                       metavar=("W", "H"), help="image width and height (default: 640 480)")
    synth.add_argument("--video", type=Path, help="render a video to this .mp4/.avi file")
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
    ev.add_argument("--verbose", action="store_true", help="show pycocotools' own output")
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
    summary.add_argument("--no-flops", action="store_true",
                         help="skip FLOP counting (faster; gflops is null)")
    summary.set_defaults(func=_cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CliError, ValueError, OSError) as exc:
        if os.environ.get("EDGEDET_DEBUG"):
            raise
        print(f"edgedet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
