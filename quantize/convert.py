"""The conversion pipeline as a library: ``convert(ConvertConfig(...)) -> ConversionReport``.

One run, for one target (``quantize.targets``)::

    checkpoint ─► rewrite ─► fp32 ONNX ─► target.build per precision ─► staged artifacts
        ─► accuracy check (PyTorch reference vs every staged artifact, on the eval images)
        ─► report ─► each artifact written once, complete, with its accuracy section:
           passed → OUT/NAME_<precision> (swapped in atomically), failed → OUT/rejected/

With ``double_scale`` (HAR-Net's double-scale testing), every checked artifact also gets the
model at twice the input size, built the same way (same precision, INT8 calibration method and
float layers, calibrated on the calibration images at 2x), as ``model_2x.*`` and the
manifest's ``double_scale`` section, whose accuracy is double-scale testing checked against
the PyTorch reference's own double-scale testing.

``python quantize/run.py`` is a thin command line over it. The scratch work happens in a
``.work-*`` folder inside ``out``; the run holds ``out``'s lock, and first clears what a killed
run left there, so nothing unchecked or half-written ever stands at an artifact's name.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgedet._io import exclusive_lock
from edgedet.artifact import DOUBLE_SCALE_STEM, MODEL_STEM, Artifact, sha256_file
from edgedet.artifact_writer import clean_leftovers, write_artifact
from edgedet.double_scale import DoubleScaleLayout
from edgedet.models.checkpoint import build_from_checkpoint, checkpoint_weights_path
from edgedet.preprocess import PreprocessConfig
from quantize.accuracy import AGREEMENT_IOU_THRESHOLD, AGREEMENT_SCORE_THRESHOLD, AccuracyCheck
from quantize.accuracy_control import (
    DEFAULT_MAX_FLOAT_LAYERS,
    DEFAULT_STEP,
    ControlConfig,
    ControlOutcome,
    Trial,
    TrialResult,
    control,
)
from quantize.calibration import (
    CALIBRATION_SEED,
    EVAL_SEED,
    TRAIN_SEED,
    ImageSet,
    calibration_inputs,
    check_calibration,
    check_disjoint,
    open_image_set,
)
from quantize.export_onnx import export_onnx
from quantize.int8_scope import CATEGORIES, find_kept_out_nodes, flatten, layer_units
from quantize.manifest import build_manifest
from quantize.report import comparison_picture, write_report
from quantize.rewrites import rewrite_for_export
from quantize.sensitivity import (
    DEFAULT_IMAGES,
    LayerSensitivity,
    detection_weighting,
    rank_layers,
)
from quantize.targets import BuildRequest, Target, target_named

# Eval images drawn in the report's comparison picture.
PICTURE_IMAGES = 3
# Artifacts that fail the check are written under OUT/rejected/, never over a good one.
REJECTED_DIR = "rejected"
# Scratch folder of a run inside OUT (removed at the end; a killed run's at the next run).
WORK_PREFIX = ".work-"


@dataclass(frozen=True)
class ConvertConfig:
    """What to convert, for which target, and how it is checked.

    Attributes:
        checkpoint: from ``train/main.py`` (``X.safetensors``, ``X.json`` or ``X``).
        target: a ``quantize.targets.TARGETS`` name.
        out: output folder: one artifact directory per precision plus the report.
        name: artifact name stem (default: the checkpoint's model name); artifacts are
            ``NAME_<precision>``.
        precisions: artifacts to build (default: every precision of the target).
        calib_data, eval_data: dataset specs (``quantize.calibration``); ``synthetic`` takes
            the calibration / eval seed.
        calib_size, eval_size: images of each.
        max_drop: largest allowed AP drop of an artifact below the reference (AP points);
            for INT8 the target of accuracy control (``quantize.accuracy_control``).
        max_float_layers: most weight layers accuracy control may return to float (0: plain
            PTQ, the check only gates).
        float_step: weight layers returned to float per accuracy-control step.
        sensitivity_images: calibration images the sensitivity ranking runs on.
        keep_float: ``quantize.int8_scope.CATEGORIES`` kept out of INT8 (default: the
            target's ``default_keep_float``).
        device: torch device of the reference (default CUDA when available).
        double_scale: also build and check each artifact's 2x model for HAR-Net's
            double-scale testing (grid anchors only: HAR-Net, DSANet, PASSD).
        progress: progress bars and step messages.
        command: how the run was started, for the report (default: this config).
    """

    checkpoint: str | Path
    target: str
    out: str | Path
    name: str | None = None
    precisions: tuple[str, ...] | None = None
    calib_data: str = "synthetic"
    calib_size: int = 128
    eval_data: str = "synthetic"
    eval_size: int = 200
    max_drop: float = 1.0
    max_float_layers: int = DEFAULT_MAX_FLOAT_LAYERS
    float_step: int = DEFAULT_STEP
    sensitivity_images: int = DEFAULT_IMAGES
    keep_float: tuple[str, ...] | None = None
    device: str | None = None
    double_scale: bool = False
    progress: bool = True
    command: str | None = None

    def __post_init__(self) -> None:
        target = target_named(self.target)
        ControlConfig(self.max_drop, self.max_float_layers, self.float_step)  # validates
        if self.sensitivity_images < 1:
            raise ValueError(f"sensitivity_images (--sensitivity-images) must be >= 1, got "
                             f"{self.sensitivity_images}")
        if self.calib_size < 1 or self.eval_size < 1:
            raise ValueError(f"calib_size and eval_size must be >= 1, got {self.calib_size} "
                             f"and {self.eval_size}")
        unknown = [p for p in self.precisions or () if p not in target.precisions]
        if unknown or self.precisions == ():
            raise ValueError(f"target {target.name!r} builds {', '.join(target.precisions)}; "
                             f"got precisions {self.precisions}")
        bad = [c for c in self.keep_float or () if c not in CATEGORIES]
        if bad:
            raise ValueError(f"keep_float: unknown categories {bad}; choose from "
                             f"{', '.join(CATEGORIES)}")

    @property
    def target_entry(self) -> Target:
        return target_named(self.target)

    def resolved_precisions(self) -> tuple[str, ...]:
        return self.precisions or self.target_entry.precisions

    def resolved_keep_float(self) -> tuple[str, ...]:
        return (self.target_entry.default_keep_float if self.keep_float is None
                else self.keep_float)


@dataclass
class ArtifactReport:
    """One written artifact and its accuracy-check result (the manifest's ``accuracy``)."""

    name: str
    directory: str
    backend: str
    precision: str
    size_bytes: int
    passed: bool
    accuracy: dict[str, Any]
    checked_on: str = ""
    notes: list[str] = field(default_factory=list)
    # Double-scale testing's accuracy section (None: the artifact has no 2x model).
    double_scale: dict[str, Any] | None = None


@dataclass
class ConversionReport:
    """The result of ``convert``; ``to_dict()`` is ``report.json``."""

    name: str
    target: str
    command: str
    checkpoint: str
    checkpoint_sha256: str
    seeds: dict[str, int]
    evaluation: dict[str, Any]
    calibration: dict[str, Any] | None
    max_drop: float
    agreement_score: float
    agreement_iou: float
    reference: dict[str, Any]
    kept_out_of_int8: dict[str, dict[str, Any]]
    artifacts: list[ArtifactReport] = field(default_factory=list)
    # Per INT8 artifact: its calibration, float layers, steps and the sensitivity ranking.
    accuracy_control: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every artifact within ``max_drop`` of the reference."""
        return all(a.passed for a in self.artifacts)

    @property
    def failed(self) -> list[ArtifactReport]:
        return [a for a in self.artifacts if not a.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def convert(config: ConvertConfig) -> ConversionReport:
    """Run the pipeline of ``config`` (see the module docstring).

    Only artifacts that pass the check take the place of ``out/NAME_<precision>``; one that
    fails goes to ``out/rejected/NAME_<precision>`` with its report, and ``report.passed``
    says whether all passed. Raises ``CheckpointError``, ``DatasetError``, ``ExportError`` or
    ``ValueError`` for bad input, before anything is written to ``out``, and
    ``DirectoryBusyError`` when another run is writing to ``out``.
    """
    target = config.target_entry
    precisions = config.resolved_precisions()
    model, checkpoint_config = build_from_checkpoint(config.checkpoint)
    checkpoint_path = checkpoint_weights_path(config.checkpoint)
    name = (config.name or checkpoint_config.get("model_name")
            or checkpoint_config["architecture"])
    preprocess_config = PreprocessConfig.from_dict(checkpoint_config["preprocess"])
    if config.double_scale:  # a model whose levels do not pair is refused before any work
        width, height = preprocess_config.input_size
        DoubleScaleLayout.of(model.anchor_spec((width, height)),
                             model.anchor_spec((2 * width, 2 * height)))
    class_names = tuple(checkpoint_config["class_names"])
    # Synthetic frames at the size training validated on (older checkpoints: the input size).
    synthetic_size = tuple(checkpoint_config.get("synthetic_size") or preprocess_config.input_size)
    evaluation, calibration = _load_data(
        config, synthetic_size, preprocess_config.input_size,  # type: ignore[arg-type]
        class_names, need_calibration="int8" in precisions)
    out = Path(config.out)
    source = {"checkpoint": str(checkpoint_path),
              "checkpoint_sha256": sha256_file(checkpoint_path), "calibration": None}
    with exclusive_lock(out, "quantize/run.py"):
        for note in clean_output_folder(out):
            _say(config, f"cleaned up after an interrupted run: {note}")
        with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=out) as tmp:
            work = Path(tmp)
            builder = _Builder(config, model, checkpoint_config, name, source, work,
                               preprocess_config, calibration)
            check = AccuracyCheck(model, evaluation.samples, evaluation.describe(),
                                  config.max_drop, target.accuracy_backend, config.device,
                                  config.progress)
            _say(config, f"accuracy check on {len(evaluation.samples)} images of "
                         f"{evaluation.spec}")
            staged, artifact_reports, columns, controlled = _build_and_check(
                config, builder, check)
            reference = check.reference_summary()
            columns = {"reference (PyTorch fp32)": check.reference(staged[0])[0].detections,
                       **columns}
            shown = slice(0, min(PICTURE_IMAGES, len(evaluation.samples)))
            picture = comparison_picture(evaluation.samples[shown],
                                         {k: v[shown] for k, v in columns.items()})
            report = ConversionReport(
                name=name, target=target.name, command=config.command or repr(config),
                checkpoint=source["checkpoint"], checkpoint_sha256=source["checkpoint_sha256"],
                seeds={"train": TRAIN_SEED, "eval": EVAL_SEED, "calibration": CALIBRATION_SEED},
                evaluation=evaluation.describe(),
                calibration=calibration.describe() if calibration is not None else None,
                max_drop=config.max_drop, agreement_score=AGREEMENT_SCORE_THRESHOLD,
                agreement_iou=AGREEMENT_IOU_THRESHOLD, reference=reference,
                kept_out_of_int8=builder.kept_report, artifacts=artifact_reports,
                accuracy_control=controlled)
            _publish(out, work, staged, report, picture)
    return report


def clean_output_folder(out: Path) -> list[str]:
    """Remove what killed runs left in ``out`` (scratch folders, half-made copies) and put
    back an artifact a kill caught between two renames; returns what was done. Called with
    the folder's lock held."""
    done = []
    for work in sorted(out.glob(f"{WORK_PREFIX}*")):
        if work.is_dir():
            shutil.rmtree(work, ignore_errors=True)
            done.append(f"removed {work.name}")
    return done + clean_leftovers(out) + clean_leftovers(out / REJECTED_DIR)


def _publish(out: Path, work: Path, staged: list[Artifact], report: ConversionReport,
             picture: np.ndarray) -> None:
    """Write each checked artifact once, complete, with its accuracy section: those that passed
    in the place of the previous ones, those that failed under ``out/rejected/`` (the
    previous, passing artifact stays in place). The reports travel with each artifact."""
    report_files = write_report(work / "report", report.to_dict(), picture)
    extras = {p.name: p for p in report_files}
    for artifact, entry in zip(staged, report.artifacts, strict=True):
        write_artifact(entry.directory, artifact.files,
                       {**artifact.manifest, "accuracy": entry.accuracy}, extras)
        if entry.passed:  # a rejected copy of an earlier run is stale now
            shutil.rmtree(out / REJECTED_DIR / artifact.name, ignore_errors=True)
    write_report(out, report.to_dict(), picture)


def _load_data(config: ConvertConfig, synthetic_size: tuple[int, int],
               input_size: tuple[int, int], class_names: tuple[str, ...],
               need_calibration: bool) -> tuple[ImageSet, ImageSet | None]:
    evaluation = open_image_set(config.eval_data, config.eval_size, synthetic_size, EVAL_SEED,
                                config.progress, "eval images")
    if evaluation.class_names != class_names:
        raise ValueError(f"eval data {evaluation.spec} has classes {evaluation.class_names}, "
                         f"the checkpoint {class_names}")
    if not need_calibration:
        return evaluation, None
    calibration = open_image_set(config.calib_data, config.calib_size, synthetic_size,
                                 CALIBRATION_SEED, config.progress, "calibration images")
    check_disjoint(calibration, evaluation)
    check_calibration(calibration, input_size)
    return evaluation, calibration


class _Builder:
    """Builds and stages one artifact per precision (and per accuracy-control trial) from
    the single fp32 export of the run."""

    def __init__(self, config: ConvertConfig, model: Any, checkpoint_config: dict,
                 name: str, source: dict, work: Path, preprocess_config: PreprocessConfig,
                 calibration: ImageSet | None) -> None:
        self.config, self.target = config, config.target_entry
        self.model, self.checkpoint_config = model, checkpoint_config
        self.name, self.source, self.work = name, source, work
        self.input_size = preprocess_config.input_size
        self.calibration = calibration
        _say(config, f"exporting {name} ({checkpoint_config['architecture']}) to ONNX, input "
                     f"{self.input_size[0]}x{self.input_size[1]}, {self.target.sampler} "
                     f"sampling")
        self.rewritten = rewrite_for_export(model, self.target.sampler)
        self.onnx_fp32 = export_onnx(self.rewritten, work / "model.onnx", self.input_size)
        self.keep_float: tuple[str, ...] = ()
        self.kept_report: dict[str, dict[str, Any]] = {}
        self.units: dict[str, list[str]] = {}
        if "int8" in config.resolved_precisions():
            graph = onnx.load(str(self.onnx_fp32))
            kept = find_kept_out_nodes(graph, config.resolved_keep_float())
            self.keep_float = tuple(flatten(kept))
            self.kept_report = {c: {"nodes": nodes, "reason": CATEGORIES[c]}
                                for c, nodes in kept.items() if nodes}
            self.units = layer_units(graph, self.keep_float)
        self.calibration_arrays = (
            calibration_inputs(calibration.samples, preprocess_config)
            if calibration is not None else None)
        self.size_2x: tuple[int, int] | None = None
        if config.double_scale:
            width, height = self.input_size
            self.size_2x = (2 * width, 2 * height)
            _say(config, f"exporting the 2x model for double-scale testing, input "
                         f"{2 * width}x{2 * height}")
            (work / "x2").mkdir()
            self.onnx_fp32_2x = export_onnx(self.rewritten, work / "x2" / "model.onnx",
                                            self.size_2x)
            preprocess_2x = PreprocessConfig.from_dict(
                {**preprocess_config.to_dict(), "input_size": list(self.size_2x)})
            self.calibration_arrays_2x = (
                calibration_inputs(calibration.samples, preprocess_2x)
                if calibration is not None else None)
        self.notes: dict[str, list[str]] = {}
        self._trials = 0

    def stage(self, precision: str, trial: Trial | None = None) -> Artifact:
        """Build ``precision`` (for INT8: with ``trial``'s calibration and float layers) and
        stage it under the work folder."""
        trial = trial or Trial()
        artifact_name = f"{self.name}_{precision}"
        _say(self.config, f"building {artifact_name} for {self.target.backend}")
        built = self.target.build(self._request(precision, trial, self.onnx_fp32,
                                                self.input_size, self.work,
                                                self.calibration_arrays))
        artifact_source = dict(self.source)
        if precision == "int8" and self.calibration is not None:
            artifact_source["calibration"] = self.calibration.describe()
        manifest = build_manifest(self.model, self.checkpoint_config, artifact_name, precision,
                                  self.target.backend, source=artifact_source,
                                  kept_out_of_int8=built.kept_out_of_int8)
        self._trials += 1
        self.notes[artifact_name] = list(built.notes)
        return Artifact.stage(self.work / "staged" / str(self._trials) / artifact_name,
                              built.files, {**manifest, **built.manifest_extra})

    def _request(self, precision: str, trial: Trial, onnx_fp32: Path,
                 input_size: tuple[int, int], work_dir: Path,
                 calibration: Any) -> BuildRequest:
        """The target's build request for ``precision`` and ``trial`` at one input size."""
        extra_float = [n for layer in trial.float_layers for n in self.units[layer]]
        return BuildRequest(
            precision=precision, onnx_fp32=onnx_fp32, model=self.rewritten,
            input_size=input_size, work_dir=work_dir,
            calibration=calibration if precision == "int8" else None,
            # Two layers' tails can share a node (both feed one Add): name each node once.
            keep_float=tuple(dict.fromkeys((*self.keep_float, *extra_float))),
            keep_float_categories=self.config.resolved_keep_float(),
            float_layers=trial.float_layers, calibration_method=trial.calibration)

    def add_second_scale(self, artifact: Artifact, trial: Trial | None = None) -> Artifact:
        """``artifact`` plus its 2x model for double-scale testing, built like it (same
        precision; for INT8 the same calibration method and float layers), staged anew with
        the manifest's ``double_scale`` section (accuracy None until checked)."""
        assert self.size_2x is not None, "the run was not configured for double-scale testing"
        trial = trial or Trial()
        precision = str(artifact.manifest["precision"])
        _say(self.config, f"building the 2x model of {artifact.name}")
        built = self.target.build(self._request(precision, trial, self.onnx_fp32_2x,
                                                self.size_2x, self.work / "x2",
                                                self.calibration_arrays_2x))
        files_2x = {DOUBLE_SCALE_STEM + name.removeprefix(MODEL_STEM)
                    if name.startswith(MODEL_STEM + ".") else f"{DOUBLE_SCALE_STEM}_{name}": path
                    for name, path in built.files.items()}
        section = {"input_size": list(self.size_2x),
                   "anchor_spec": self.model.anchor_spec(self.size_2x).to_dict(),
                   "files": list(files_2x), "accuracy": None}
        self._trials += 1
        return Artifact.stage(self.work / "staged" / str(self._trials) / artifact.name,
                              {**artifact.files, **files_2x},
                              {**artifact.manifest, "double_scale": section})

    def rank(self) -> list[LayerSensitivity]:
        """The sensitivity ranking of the weight layers the target puts in INT8."""
        _say(self.config, f"ranking {len(self.units)} INT8 layers by sensitivity")
        assert self.calibration_arrays is not None
        return rank_layers(self.onnx_fp32, self.calibration_arrays, self.keep_float,
                           quantize_outputs=self.target.rounds_outputs,
                           max_images=self.config.sensitivity_images,
                           progress=self.config.progress,
                           weighting=detection_weighting(self.checkpoint_config))


def _build_and_check(config: ConvertConfig, builder: _Builder, check: AccuracyCheck
                     ) -> tuple[list[Artifact], list[ArtifactReport], dict[str, list],
                                dict[str, dict[str, Any]]]:
    """Every precision built, staged and checked; INT8 under accuracy control.

    Returns ``(staged artifacts, their reports, detections per picture column, accuracy
    control per INT8 artifact)``.
    """
    staged, reports, columns, controlled = [], [], {}, {}
    for precision in config.resolved_precisions():
        trial = None
        if precision == "int8":
            outcome = _controlled_int8(config, builder, check)
            artifact, accuracy, run = outcome.chosen.payload
            controlled[artifact.name] = {**outcome.manifest_section(),
                                         "ranking": [r.to_dict() for r in outcome.ranking]}
            artifact = _with_control_section(artifact, outcome)
            trial = outcome.chosen.trial
        else:
            artifact = builder.stage(precision)
            accuracy, run = check.check(artifact)
        double_scale = None
        if config.double_scale:
            artifact = builder.add_second_scale(artifact, trial)
            double_scale, _ = check.check(artifact, double_scale=True)
            manifest = {**artifact.manifest,
                        "double_scale": {**artifact.manifest["double_scale"],
                                         "accuracy": double_scale}}
            artifact = Artifact(artifact.directory, manifest)
        passed = bool(accuracy["passed"])
        reports.append(ArtifactReport(
            name=artifact.name,
            directory=str(Path(config.out) / ("" if passed else REJECTED_DIR) / artifact.name),
            backend=builder.target.backend, precision=str(artifact.manifest["precision"]),
            size_bytes=sum(p.stat().st_size for p in artifact.files.values()),
            passed=passed, accuracy=accuracy, checked_on=check.backend,
            notes=builder.notes.get(artifact.name, []), double_scale=double_scale))
        staged.append(artifact)
        columns[f"{artifact.name} ({check.backend})"] = run.detections
    return staged, reports, columns, controlled


def _controlled_int8(config: ConvertConfig, builder: _Builder, check: AccuracyCheck
                     ) -> ControlOutcome:
    def evaluate(trial: Trial) -> TrialResult:
        artifact = builder.stage("int8", trial)
        accuracy, run = check.check(artifact)
        return TrialResult(trial, float(accuracy["delta_AP"]), float(accuracy["AP"]),
                           float(accuracy["latency_p50_ms"]), bool(accuracy["passed"]),
                           payload=(artifact, accuracy, run))

    control_config = ControlConfig(config.max_drop, config.max_float_layers, config.float_step)
    outcome = control(evaluate, control_config, builder.target.calibration_methods,
                      builder.rank, say=lambda message: _say(config, message))
    if not outcome.ranking:  # passed without the fallback: rank anyway, for the report
        outcome.ranking = builder.rank()
    return outcome


def _with_control_section(artifact: Artifact, outcome: ControlOutcome) -> Artifact:
    """``artifact`` with the manifest's ``accuracy_control`` section (the float layers it
    keeps and why, the steps taken)."""
    manifest = {**artifact.manifest, "accuracy_control": outcome.manifest_section()}
    return Artifact(artifact.directory, manifest)


def _say(config: ConvertConfig, message: str) -> None:
    if config.progress:
        print(message, flush=True)
