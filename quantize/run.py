"""Convert a checkpoint into deployable artifacts and check them against the reference.

``python quantize/run.py --checkpoint CKPT --target cpu|openvino --out DIR`` runs the whole
pipeline: rewrite -> export -> INT8 post-training quantization -> accuracy check -> report.
Run ``python quantize/run.py --help`` for every flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (python quantize/run.py) the repository root is not on sys.path; put it
# there so ``edgedet`` and ``quantize`` import the same way as under pytest.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import argparse  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import onnx  # noqa: E402

from edgedet.data.errors import DatasetError  # noqa: E402
from edgedet.detector import Detector  # noqa: E402
from edgedet.models.checkpoint import (  # noqa: E402
    CheckpointError,
    build_from_checkpoint,
    checkpoint_weights_path,
)
from edgedet.preprocess import PreprocessConfig  # noqa: E402
from quantize.accuracy import (  # noqa: E402
    AGREEMENT_IOU_THRESHOLD,
    AGREEMENT_SCORE_THRESHOLD,
    ReferenceDetector,
    coco_metrics,
    compare_to_reference,
    latency_summary,
    run_detector,
)
from quantize.artifact import build_manifest, sha256_file, write_artifact  # noqa: E402
from quantize.calibration import (  # noqa: E402
    CALIBRATION_SEED,
    EVAL_SEED,
    TRAIN_SEED,
    ImageSet,
    calibration_inputs,
    check_disjoint,
    open_image_set,
)
from quantize.export_onnx import ExportError, export_onnx  # noqa: E402
from quantize.int8_scope import (  # noqa: E402
    CATEGORIES,
    DEFAULT_KEEP_FLOAT_BY_TARGET,
    find_kept_out_nodes,
    flatten,
)
from quantize.report import (  # noqa: E402
    PICTURE,
    REPORT_JSON,
    REPORT_MD,
    comparison_picture,
    set_manifest_accuracy,
    write_report,
)

TARGET_BACKENDS = {"cpu": "onnxruntime", "openvino": "openvino"}
PICTURE_IMAGES = 3

EPILOG = f"""
what it writes (DIR = --out, NAME = --name):
  DIR/NAME_fp32/   fp32 artifact (manifest.json + model.onnx, or model.xml + model.bin)
  DIR/NAME_int8/   INT8 artifact (QDQ ONNX for cpu, NNCF-quantized IR for openvino)
  DIR/report.json, DIR/report.md, DIR/comparison.png   the accuracy check; a copy of the
                   three goes into each artifact directory, and each manifest's "accuracy"
                   holds that artifact's summary

data (SPEC: synthetic | synthetic:SEED | coco:PATH | voc:PATH | yolo:PATH):
  synthetic seeds follow train/main.py: training images seed {TRAIN_SEED}, validation seed
  {EVAL_SEED}. The accuracy check evaluates on seed {EVAL_SEED} (--eval-data) and INT8
  calibrates on seed {CALIBRATION_SEED} (--calib-data), so the three never overlap;
  calibration images that also appear in the eval set (same image bytes) are refused.

kept out of INT8 (--keep-float, categories found on the graph by structure):
{chr(10).join(f"  {name:9s}  {reason}" for name, reason in CATEGORIES.items())}

exit status: 0 all artifacts within --max-drop of the reference, 1 an artifact dropped more,
2 bad input (checkpoint, data, arguments) or a failed export.

examples:
  python quantize/run.py --checkpoint runs/p/best.safetensors --target cpu --out runs/p/cpu
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
    parser.add_argument("--target", required=True, choices=sorted(TARGET_BACKENDS),
                        help="cpu: ONNX for ONNX Runtime; openvino: OpenVINO IR")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory (artifact directories and the report)")
    parser.add_argument("--name", default=None,
                        help="artifact name stem (default: the checkpoint's model name); "
                             "artifacts are NAME_fp32 and NAME_int8")
    parser.add_argument("--precision", choices=("fp32", "int8", "both"), default="both",
                        help="artifacts to produce (default both)")
    parser.add_argument("--calib-data", default="synthetic", metavar="SPEC",
                        help=f"INT8 calibration images (default synthetic, seed "
                             f"{CALIBRATION_SEED})")
    parser.add_argument("--calib-size", type=int, default=128, metavar="N",
                        help="calibration images (default 128)")
    parser.add_argument("--eval-data", default="synthetic", metavar="SPEC",
                        help=f"images of the accuracy check (default synthetic, seed "
                             f"{EVAL_SEED})")
    parser.add_argument("--eval-size", type=int, default=200, metavar="N",
                        help="eval images (default 200)")
    parser.add_argument("--max-drop", type=float, default=1.0, metavar="AP",
                        help="largest allowed AP drop of an artifact below the reference, in "
                             "AP points (0-100; default 1.0)")
    defaults = "; ".join(f"{target}: {','.join(categories)}"
                         for target, categories in DEFAULT_KEEP_FLOAT_BY_TARGET.items())
    parser.add_argument("--keep-float", default=None, metavar="LIST",
                        help="comma-separated categories kept out of INT8, or 'none' (default "
                             f"per target, {defaults})")
    parser.add_argument("--device", default=None,
                        help="torch device of the reference (default cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


@dataclass
class Artifact:
    """One produced artifact directory."""

    name: str
    directory: Path
    precision: str
    backend: str


def _keep_float(value: str) -> tuple[str, ...]:
    if value.strip().lower() in ("", "none"):
        return ()
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise ValueError(f"--keep-float: unknown categories {unknown}; choose from "
                         f"{', '.join(CATEGORIES)} or none")
    return names


def _model_files(target: str, precision: str, onnx_fp32: Path, work: Path,
                 calibration: list | None, kept_onnx: list[str]) -> tuple[dict, list[str]]:
    """``({artifact file name: path}, names kept out of INT8)`` of one artifact."""
    if target == "cpu":
        if precision == "fp32":
            return {"model.onnx": onnx_fp32}, []
        from quantize.ptq_onnx import quantize_onnx

        path = quantize_onnx(onnx_fp32, work / "model_int8.onnx", calibration, kept_onnx)
        return {"model.onnx": path}, list(kept_onnx)
    from quantize.export_openvino import export_openvino

    xml, weights = work / "ov_fp32" / "model.xml", work / "ov_fp32" / "model.bin"
    if not xml.is_file():
        xml, weights = export_openvino(onnx_fp32, work / "ov_fp32")
    if precision == "fp32":
        return {"model.xml": xml, "model.bin": weights}, []
    import openvino as ov

    from quantize.ptq_openvino import openvino_names_for, quantize_openvino

    ignored = openvino_names_for(ov.Core().read_model(str(xml)), kept_onnx)
    xml8, weights8 = quantize_openvino(xml, work / "ov_int8", calibration, ignored)
    return {"model.xml": xml8, "model.bin": weights8}, ignored


def _load_data(args: argparse.Namespace, input_size: tuple[int, int],
               class_names: tuple[str, ...], need_calibration: bool
               ) -> tuple[ImageSet, ImageSet | None]:
    progress = not args.no_progress
    evaluation = open_image_set(args.eval_data, args.eval_size, input_size, EVAL_SEED,
                                progress, "eval images")
    if evaluation.class_names != class_names:
        raise ValueError(f"eval data {evaluation.spec} has classes {evaluation.class_names}, "
                         f"the checkpoint {class_names}")
    if not need_calibration:
        return evaluation, None
    calibration = open_image_set(args.calib_data, args.calib_size, input_size,
                                 CALIBRATION_SEED, progress, "calibration images")
    check_disjoint(calibration, evaluation)
    return evaluation, calibration


def convert(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """The whole pipeline; returns the report (also written to ``args.out``)."""
    keep_float = (DEFAULT_KEEP_FLOAT_BY_TARGET[args.target] if args.keep_float is None
                  else _keep_float(args.keep_float))
    model, config = build_from_checkpoint(args.checkpoint)
    checkpoint_path = checkpoint_weights_path(args.checkpoint)
    name = args.name or config.get("model_name") or config["architecture"]
    preprocess_config = PreprocessConfig.from_dict(config["preprocess"])
    input_size = preprocess_config.input_size
    class_names = tuple(config["class_names"])
    precisions = ("fp32", "int8") if args.precision == "both" else (args.precision,)
    backend = TARGET_BACKENDS[args.target]
    progress = not args.no_progress
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    evaluation, calibration = _load_data(args, input_size, class_names, "int8" in precisions)
    calibration_arrays = (calibration_inputs(calibration.samples, preprocess_config)
                          if calibration is not None else None)
    source = {"checkpoint": str(checkpoint_path),
              "checkpoint_sha256": sha256_file(checkpoint_path), "calibration": None}
    artifacts: list[Artifact] = []
    kept_report: dict[str, dict] = {}
    manifests: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as tmp:
        work = Path(tmp)
        print(f"exporting {name} ({config['architecture']}) to ONNX, input "
              f"{input_size[0]}x{input_size[1]}")
        onnx_fp32 = export_onnx(model, work / "model.onnx", input_size)
        kept_onnx: list[str] = []
        if "int8" in precisions:
            kept = find_kept_out_nodes(onnx.load(str(onnx_fp32)), keep_float)
            kept_onnx = flatten(kept)
            kept_report = {c: {"nodes": nodes, "reason": CATEGORIES[c]}
                           for c, nodes in kept.items() if nodes}
        for precision in precisions:
            artifact_name = f"{name}_{precision}"
            print(f"building {artifact_name} for {backend}")
            files, kept_names = _model_files(args.target, precision, onnx_fp32, work,
                                             calibration_arrays, kept_onnx)
            artifact_source = dict(source)
            if precision == "int8" and calibration is not None:
                artifact_source["calibration"] = calibration.describe()
            manifest = build_manifest(model, config, artifact_name, precision, backend,
                                      source=artifact_source, kept_out_of_int8=kept_names)
            directory = write_artifact(out / artifact_name, files, manifest)
            manifests[artifact_name] = manifest
            artifacts.append(Artifact(artifact_name, directory, precision, backend))

    # The accuracy check.
    reference = ReferenceDetector(model, next(iter(manifests.values())), args.device)
    print(f"accuracy check on {len(evaluation.samples)} images of {evaluation.spec}; "
          f"reference on {reference.device}")
    reference_run = run_detector(reference.detect, evaluation.samples, progress, "reference")
    reference_metrics = coco_metrics(evaluation.samples, reference_run.detections, class_names)
    columns = {"reference (PyTorch fp32)": reference_run.detections}
    artifact_reports = []
    for artifact in artifacts:
        detector = Detector(artifact.directory, backend=artifact.backend)
        run = run_detector(detector.detect, evaluation.samples, progress, artifact.name)
        accuracy = compare_to_reference(evaluation.samples, class_names, reference_run,
                                        reference_metrics, run)
        passed = -accuracy["delta_AP"] <= args.max_drop
        accuracy.update({"max_drop": args.max_drop, "passed": passed,
                         "eval_data": evaluation.describe()})
        size = sum((artifact.directory / f).stat().st_size
                   for f in detector.info["files"])
        artifact_reports.append({"name": artifact.name, "directory": str(artifact.directory),
                                 "backend": artifact.backend, "precision": artifact.precision,
                                 "size_bytes": size, "passed": passed, "accuracy": accuracy})
        columns[f"{artifact.name} ({artifact.backend})"] = run.detections

    report = {
        "name": name,
        "target": args.target,
        "command": "python quantize/run.py " + shlex.join(argv),
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": source["checkpoint_sha256"],
        "seeds": {"train": TRAIN_SEED, "eval": EVAL_SEED, "calibration": CALIBRATION_SEED},
        "evaluation": evaluation.describe(),
        "calibration": calibration.describe() if calibration is not None else None,
        "max_drop": args.max_drop,
        "agreement_score": AGREEMENT_SCORE_THRESHOLD,
        "agreement_iou": AGREEMENT_IOU_THRESHOLD,
        "reference": {**reference_metrics, **latency_summary(reference_run.latencies_ms),
                      "device": str(reference.device)},
        "kept_out_of_int8": kept_report,
        "artifacts": artifact_reports,
        "passed": all(a["passed"] for a in artifact_reports),
    }
    shown = slice(0, min(PICTURE_IMAGES, len(evaluation.samples)))
    picture = comparison_picture(evaluation.samples[shown],
                                 {k: v[shown] for k, v in columns.items()})
    write_report(out, report, picture)
    for artifact, entry in zip(artifacts, artifact_reports, strict=True):
        write_report(artifact.directory, report, picture)
        set_manifest_accuracy(artifact.directory, entry["accuracy"])
    return report


def _print_summary(report: dict[str, Any], out: Path) -> None:
    ref = report["reference"]
    print(f"reference: AP {ref['AP']:.2f}, AP50 {ref['AP50']:.2f}")
    for art in report["artifacts"]:
        acc = art["accuracy"]
        print(f"{art['name']} ({art['backend']}): AP {acc['AP']:.2f} (ΔAP "
              f"{acc['delta_AP']:+.2f}), agreement {acc['agreement']:.3f}, p50 "
              f"{acc['latency_p50_ms']:.1f} ms, {art['size_bytes'] / 2**20:.2f} MiB -> "
              f"{'pass' if art['passed'] else 'FAIL'}")
    print(f"report: {out / REPORT_MD} ({REPORT_JSON}, {PICTURE})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.calib_size < 1 or args.eval_size < 1:
        print("error: --calib-size and --eval-size must be >= 1", file=sys.stderr)
        return 2
    try:
        report = convert(args, argv)
    except (CheckpointError, DatasetError, ExportError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_summary(report, Path(args.out))
    failed = [a for a in report["artifacts"] if not a["passed"]]
    if failed:
        details = ", ".join(f"{a['name']} ΔAP {a['accuracy']['delta_AP']:+.2f}" for a in failed)
        print(f"error: accuracy check failed: {details} (allowed drop: {args.max_drop} AP "
              "points, --max-drop)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
