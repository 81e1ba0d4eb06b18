"""Convert a checkpoint into deployable artifacts and check them against the reference.

``python quantize/run.py --checkpoint CKPT --target TARGET --out DIR`` runs the whole
pipeline: rewrite -> export -> INT8 post-training quantization -> accuracy check -> report.
A thin command line over ``quantize.convert``; run ``python quantize/run.py --help``.
"""

from __future__ import annotations

import os
import sys

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import shlex

from edgedet._io import DirectoryBusyError, error_text
from edgedet.backends import BackendError
from edgedet.data.errors import DatasetError
from edgedet.models.checkpoint import CheckpointError
from quantize.accuracy_control import DEFAULT_MAX_FLOAT_LAYERS, DEFAULT_STEP
from quantize.calibration import CALIBRATION_SEED, EVAL_SEED, TRAIN_SEED
from quantize.convert import ConversionReport, ConvertConfig, convert
from quantize.export_onnx import ExportError
from quantize.int8_scope import CATEGORIES
from quantize.report import PICTURE, REPORT_JSON, REPORT_MD
from quantize.sensitivity import DEFAULT_IMAGES
from quantize.targets import TARGETS

EPILOG = f"""
targets (the backend their artifacts run on; float categories kept out of INT8 by default):
{chr(10).join(f"  {t.name:9s}  {t.summary}; runs on {t.backend}; keeps "
              f"{','.join(t.default_keep_float) or 'nothing'} in float"
              for t in TARGETS.values())}

what it writes (DIR = --out, NAME = --name):
  DIR/NAME_fp32/, DIR/NAME_int8/, ...   one artifact per precision that PASSED the check
                   (manifest.json + model files + a copy of the report; its accuracy in the
                   manifest's "accuracy"), swapped in atomically for the previous one
  DIR/rejected/NAME_<precision>/   an artifact that FAILED the check, with its report; the
                   previous artifact at DIR/NAME_<precision> is left as it was
  DIR/report.json, DIR/report.md, DIR/comparison.png   the accuracy check
  A killed run leaves nothing at DIR/NAME_*; its scratch files are removed by the next run.

data (SPEC: synthetic | synthetic:SEED | coco:PATH | voc:PATH | yolo:PATH):
  synthetic seeds follow train/main.py: training images seed {TRAIN_SEED}, validation seed
  {EVAL_SEED}. The accuracy check evaluates on seed {EVAL_SEED} (--eval-data) and INT8
  calibrates on seed {CALIBRATION_SEED} (--calib-data), so the three never overlap;
  calibration images that also appear in the eval set (same image bytes) are refused.

kept out of INT8 (--keep-float, categories found on the graph by structure):
{chr(10).join(f"  {name:14s}  {reason}" for name, reason in CATEGORIES.items())}

jetson: the INT8 model is QDQ ONNX that follows TensorRT's explicit-quantization rules (signed
  symmetric INT8, per-channel weights, Q/DQ only on the inputs of weighted layers and residual
  Adds, nothing quantized in the float scope or before an output); a model that breaks one is
  never written: the run stops with the list of violations (quantize/tensorrt_rules.py). The
  accuracy check runs the ONNX with ONNX Runtime on this CPU; the device builds an engine from
  it without calibrating (edgedet build-engine, or the trtexec command in the manifest).

exit status: 0 all artifacts within --max-drop of the reference, 1 an artifact dropped more,
2 bad input (checkpoint, data, arguments), a failed export or a TensorRT rules violation.

examples:
  python quantize/run.py --checkpoint runs/p/best.safetensors --target cpu --out runs/p/cpu
  python quantize/run.py --checkpoint runs/p/best --target jetson --out runs/p/jetson
  python quantize/run.py --checkpoint runs/p/best --target openvino --out runs/p/ov \\
      --precision int8 --calib-data coco:/data/coco/train --eval-data coco:/data/coco/val
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantize/run.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rewrite, export and INT8-quantize a checkpoint for a deployment target, "
                    "then check every artifact against the full-precision PyTorch reference.",
        epilog=EPILOG)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint from train/main.py (X.safetensors, X.json or X)")
    parser.add_argument("--target", required=True, choices=sorted(TARGETS),
                        help="deployment target (see below)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory (artifact directories and the report)")
    parser.add_argument("--name", default=None,
                        help="artifact name stem (default: the checkpoint's model name); "
                             "artifacts are NAME_<precision>")
    precisions = sorted({p for t in TARGETS.values() for p in t.precisions})
    parser.add_argument("--precision", choices=(*precisions, "both"), default="both",
                        help="artifact to produce (default both: every precision the target "
                             "builds)")
    parser.add_argument("--calib-data", default="synthetic", metavar="SPEC",
                        help=f"INT8 calibration images (default synthetic, seed "
                             f"{CALIBRATION_SEED})")
    parser.add_argument("--calib-size", type=int, default=None, metavar="N",
                        help="calibration images (default 128)")
    parser.add_argument("--eval-data", default="synthetic", metavar="SPEC",
                        help=f"images of the accuracy check (default synthetic, seed "
                             f"{EVAL_SEED})")
    parser.add_argument("--eval-size", type=int, default=200, metavar="N",
                        help="eval images (default 200)")
    parser.add_argument("--max-drop", type=float, default=1.0, metavar="AP",
                        help="largest allowed AP drop of an artifact below the reference, in "
                             "AP points (default 1.0; a negative value demands a gain)")
    parser.add_argument("--allow-weak-reference", action="store_true",
                        help="go on when the reference scores no more than --max-drop AP on "
                             "the eval images (a smoke test on an untrained model): the check "
                             "then cannot tell a broken artifact from a good one, and the "
                             "manifests and the report say it was inconclusive; such an "
                             "artifact never replaces a conclusively checked one of the same "
                             "name, it goes to OUT/rejected/ (default: stop with an error)")
    parser.add_argument("--max-float-layers", type=int, default=None,
                        metavar="N",
                        help="accuracy control: when an INT8 artifact misses --max-drop, put "
                             "back in float what the target lets into INT8 beyond the common "
                             "scope (openvino: sampling_reads), try the target's other "
                             "calibration methods, then return the most "
                             "harmful weight layers (sensitivity ranking) to float, --float-step "
                             f"at a time, up to N (default {DEFAULT_MAX_FLOAT_LAYERS}; 0: plain "
                             "PTQ, --max-drop only gates)")
    parser.add_argument("--float-step", type=int, default=None, metavar="K",
                        help=f"weight layers returned to float per step (default {DEFAULT_STEP})")
    parser.add_argument("--sensitivity-images", type=int, default=None, metavar="N",
                        help="calibration images the sensitivity ranking runs on (default "
                             f"{DEFAULT_IMAGES})")
    parser.add_argument("--no-sensitivity-report", action="store_true",
                        help="rank the INT8 layers by sensitivity only when accuracy control "
                             "needs it, not for the report's table and plot when plain PTQ "
                             "passes (saves 25 s to 2 min per INT8 artifact)")
    parser.add_argument("--keep-float", default=None, metavar="LIST",
                        help="comma-separated categories kept out of INT8, or 'none' "
                             "(default: the target's, listed below)")
    parser.add_argument("--device", default=None,
                        help="torch device of the reference (default cuda when available)")
    parser.add_argument("--double-scale", action="store_true",
                        help="also build each artifact's model at twice the input size and "
                        "check HAR-Net's double-scale testing (Detector(..., "
                        "double_scale=True)) against the PyTorch reference's; models with grid "
                        "anchors (HAR-Net, DSANet, PASSD; not DAIPNet's SSD priors); the "
                        "artifact grows by the 2x model")
    parser.add_argument("--float-precision", default="f32",
                        choices=sorted({p for t in TARGETS.values() for p in t.float_precisions}),
                        help="what the ops INT8 artifacts keep in float compute in (default "
                             "f32); openvino also takes bf16: every float op but the P&A / "
                             "deformable sampling coordinates runs in bf16 where the CPU has "
                             "it, and the accuracy check measures it so")
    parser.add_argument("--weight-storage", default="float32",
                        choices=sorted({w for t in TARGETS.values() for w in t.weight_storages}),
                        help="the dtype model files store float weights in (default float32); "
                             "cpu also takes float16: large float weights stored as float16 "
                             "and cast to float32 when the model loads (about half the file of "
                             "a float model, compute unchanged), and the accuracy check "
                             "measures the stored file")
    parser.add_argument("--int8-weight-bits", type=int, default=8,
                        choices=sorted({b for t in TARGETS.values() for b in t.int8_weight_bits}),
                        help="range of INT8 weights (default 8); cpu also takes 7, for x86 "
                             "CPUs without VNNI (AVX2 or AVX-512 only), whose ONNX Runtime "
                             "INT8 kernels can clip sums of 8-bit weights (run the conversion "
                             "on such a CPU: its accuracy check then measures what they do)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (step messages still print: for logs)")
    return parser


def _keep_float(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def config_from_args(args: argparse.Namespace, argv: list[str]) -> ConvertConfig:
    """The ``ConvertConfig`` of parsed command-line arguments (ValueError for bad values)."""
    # INT8 tuning flags default to None here, so a value given can be told from none: given
    # for a run that builds no INT8 artifact, they would be accepted and ignored.
    int8_tuning = {"calib_size": args.calib_size, "max_float_layers": args.max_float_layers,
                   "float_step": args.float_step, "sensitivity_images": args.sensitivity_images}
    config = ConvertConfig(
        checkpoint=args.checkpoint, target=args.target, out=args.out, name=args.name,
        precisions=None if args.precision == "both" else (args.precision,),
        calib_data=args.calib_data, eval_data=args.eval_data,
        eval_size=args.eval_size, max_drop=args.max_drop,
        **{field: value for field, value in int8_tuning.items() if value is not None},
        keep_float=_keep_float(args.keep_float), device=args.device,
        double_scale=args.double_scale, float_precision=args.float_precision,
        weight_storage=args.weight_storage, int8_weight_bits=args.int8_weight_bits,
        allow_weak_reference=args.allow_weak_reference,
        sensitivity_report=not args.no_sensitivity_report,
        progress=not args.no_progress,
        command="python quantize/run.py " + shlex.join(argv))
    given = ["--" + field.replace("_", "-") for field, value in int8_tuning.items()
             if value is not None]
    if given and "int8" not in config.resolved_precisions():
        raise ValueError(f"{', '.join(given)} tune INT8 artifacts, and precisions "
                         f"{config.resolved_precisions()} builds none")
    return config


def _print_summary(report: ConversionReport, out: str) -> None:
    ref = report.reference
    print(f"reference: AP {ref['AP']:.2f}, AP50 {ref['AP50']:.2f}")
    for art in report.artifacts:
        acc = art.accuracy
        print(f"{art.name} ({art.backend}): AP {acc['AP']:.2f} (ΔAP "
              f"{acc['delta_AP']:+.2f}), agreement {acc['agreement']:.3f}, p50 "
              f"{acc['latency_p50_ms']:.1f} ms, {art.size_bytes / 2**20:.2f} MiB -> "
              f"{'pass' if art.passed else 'FAIL'}: {art.directory}")
        if acc.get("inconclusive"):
            print(f"  inconclusive check: {acc['inconclusive']}")
        if art.kept_instead:
            print(f"  not put in place: {art.kept_instead} holds a conclusively checked "
                  "artifact, which stays")
        if art.double_scale is not None:
            two = art.double_scale
            print(f"  double-scale testing: AP {two['AP']:.2f} (reference "
                  f"{two['reference_AP']:.2f}, ΔAP {two['delta_AP']:+.2f}), p50 "
                  f"{two['latency_p50_ms']:.1f} ms -> {'pass' if two['passed'] else 'FAIL'}"
                  + ("" if two["passed"] else ": Detector(double_scale=True) refuses it"))
    print(f"report: {out}/{REPORT_MD} ({REPORT_JSON}, {PICTURE})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args, argv)
        report = convert(config)
    # OSError: a missing file, an --out it cannot write; BackendError: a built model its own
    # runtime cannot load (the check loads each artifact as a user would)
    except (CheckpointError, DatasetError, ExportError, ValueError, OSError,
            DirectoryBusyError, BackendError) as error:
        if os.environ.get("EDGEDET_DEBUG"):  # the whole traceback
            raise
        print(f"error: {error_text(error)}", file=sys.stderr)
        return 2
    _print_summary(report, args.out)
    if report.failed:
        details = ", ".join(f"{a.name} ΔAP {a.accuracy['delta_AP']:+.2f}"
                            for a in report.failed)
        print(f"error: accuracy check failed: {details} (allowed drop: {args.max_drop} AP "
              f"points, --max-drop); rejected artifacts are in {args.out}/rejected/, the "
              "previous ones (if any) stay in place", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
