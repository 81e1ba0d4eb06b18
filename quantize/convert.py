"""The conversion pipeline as a library: ``convert(ConvertConfig(...)) -> ConversionReport``.

One run, for one target (``quantize.targets``)::

    checkpoint ─► rewrite ─► fp32 ONNX ─► target.build per precision ─► staged artifacts
        ─► accuracy check (PyTorch reference vs every staged artifact, on the eval images)
        ─► report ─► each artifact written once, complete, with its accuracy section:
           passed → OUT/NAME_<precision> (swapped in atomically), failed → OUT/rejected/

With ``double_scale`` (HAR-Net's double-scale testing), every checked artifact also gets the
model at twice the input size, as ``model_2x.*`` and the manifest's ``double_scale`` section,
whose accuracy is double-scale testing checked against the PyTorch reference's own. It is
built the same way (same precision; INT8 calibrated on the calibration images at 2x, starting
from the 1x model's calibration method and float layers, under accuracy control of its own).
The building and checking is ``quantize.build_check``.

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

from edgedet._io import exclusive_lock, folder_problem
from edgedet.artifact import Artifact, sha256_file
from edgedet.artifact_writer import clean_leftovers, write_artifact
from edgedet.data.errors import DatasetError
from edgedet.double_scale import COARSE_LEVELS_FROM_1X, DoubleScaleLayout
from edgedet.models.checkpoint import (
    CheckpointError,
    build_from_checkpoint,
    checkpoint_weights_path,
    config_field,
)
from edgedet.preprocess import PreprocessConfig
from quantize.accuracy import AGREEMENT_IOU_THRESHOLD, AGREEMENT_SCORE_THRESHOLD, AccuracyCheck
from quantize.accuracy_control import DEFAULT_MAX_FLOAT_LAYERS, DEFAULT_STEP, ControlConfig
from quantize.build_check import REJECTED_DIR, ArtifactReport, Builder, build_and_check, say
from quantize.calibration import (
    CALIBRATION_SEED,
    EVAL_SEED,
    TRAIN_SEED,
    ImageSet,
    check_calibration,
    check_disjoint,
    open_image_set,
)
from quantize.int8_scope import CATEGORIES
from quantize.report import comparison_picture, write_report
from quantize.sensitivity import DEFAULT_IMAGES
from quantize.targets import Target, target_named

# Eval images drawn in the report's comparison picture.
PICTURE_IMAGES = 3
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
        sensitivity_report: rank the INT8 layers for the report (its table and
            ``sensitivity.png``) also where plain PTQ passes and nothing else needs the
            ranking (default; 25 s to 2 min per INT8 artifact on the 2-core CPUs). False
            ranks only when accuracy control returns layers to float.
        keep_float: ``quantize.int8_scope.CATEGORIES`` kept out of INT8 (default: the
            target's ``default_keep_float``; its ``required_keep_float`` are kept anyway).
        device: torch device of the reference (default CUDA when available).
        double_scale: also build and check each artifact's 2x model for HAR-Net's
            double-scale testing (grid anchors only: HAR-Net, DSANet, PASSD).
        float_precision: what the float ops of INT8 artifacts compute in, one of the
            target's ``float_precisions`` (default f32; ``bf16`` on openvino keeps only the
            sampling coordinates f32: ``quantize.openvino_precision``).
        weight_storage: the dtype the artifacts' model files store float weights in, one of
            the target's ``weight_storages`` (default float32; ``float16`` on cpu halves a
            float model's file, compute stays float32: ``quantize.weight_storage``).
        int8_weight_bits: INT8 weights in 8 bits (default) or, on the cpu target, 7: for
            x86 CPUs without VNNI, whose INT8 kernels can clip 8-bit weights
            (``quantize.ptq_onnx.QdqScheme.weight_bits``).
        allow_weak_reference: go on when the reference scores no more than ``max_drop`` AP
            on the eval images (an untrained model in a smoke test of the pipeline): the
            check then rests on the AP difference alone, which cannot tell a broken artifact
            from a good one, and the accuracy sections say so (``"inconclusive"``); such an
            artifact never replaces one whose check was conclusive (it goes to
            ``out/rejected/``, ``ArtifactReport.kept_instead``). Without it such a run stops
            with an error.
        progress: progress bars (step messages always print).
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
    sensitivity_report: bool = True
    keep_float: tuple[str, ...] | None = None
    device: str | None = None
    double_scale: bool = False
    float_precision: str = "f32"
    weight_storage: str = "float32"
    int8_weight_bits: int = 8
    allow_weak_reference: bool = False
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
        if self.float_precision not in target.float_precisions:
            raise ValueError(f"target {target.name!r} runs the float ops of INT8 artifacts in "
                             f"{' or '.join(target.float_precisions)}; got float precision "
                             f"{self.float_precision!r}")
        if self.weight_storage not in target.weight_storages:
            raise ValueError(f"target {target.name!r} stores float weights as "
                             f"{' or '.join(target.weight_storages)}; got weight storage "
                             f"{self.weight_storage!r}")
        if self.int8_weight_bits not in target.int8_weight_bits:
            raise ValueError(f"target {target.name!r} builds INT8 weights of "
                             f"{' or '.join(map(str, target.int8_weight_bits))} bits; got "
                             f"{self.int8_weight_bits}")
        if "int8" not in self.resolved_precisions():
            # Settings that shape INT8 artifacts only: given for a run that builds none, they
            # would be accepted and ignored.
            int8_only = {"int8_weight_bits (--int8-weight-bits)": self.int8_weight_bits != 8,
                         "float_precision (--float-precision)": self.float_precision != "f32",
                         "keep_float (--keep-float)": self.keep_float is not None,
                         "calib_data (--calib-data)": self.calib_data != "synthetic"}
            given = [name for name, changed in int8_only.items() if changed]
            if given:
                raise ValueError(f"{', '.join(given)} shape INT8 artifacts, and precisions "
                                 f"{self.resolved_precisions()} builds none")
        if self.name is not None and (not self.name or self.name != Path(self.name).name
                                      or self.name.startswith(".")):
            # A leading dot would also read as a killed run's leftover (".NAME.old-...").
            raise ValueError(f"name (--name) must be a plain file name not starting with a "
                             f"dot (artifacts are OUT/NAME_<precision>), got {self.name!r}")
        if problem := folder_problem(self.out):
            raise ValueError(f"out (--out) {self.out} {problem}; give the output folder")
        if self.device is not None:
            import torch

            try:
                device = torch.device(self.device)
            except RuntimeError as error:
                raise ValueError(f"device (--device) {self.device!r}: {error}") from error
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device (--device) {self.device!r}: this torch build sees "
                                 "no CUDA device")
            try:  # e.g. "mps" on a build without it, "cuda:3" on a machine with one GPU
                torch.empty(0, device=device)
            except (RuntimeError, AssertionError) as error:
                first = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ValueError(f"device (--device) {self.device!r} cannot be used here: "
                                 f"{first.split('. ')[0]}") from error
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
        """``keep_float`` (None: the target's default) plus what the target always keeps."""
        chosen = (self.target_entry.default_keep_float if self.keep_float is None
                  else self.keep_float)
        return tuple(dict.fromkeys((*chosen, *self.target_entry.required_keep_float)))


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
    ``DirectoryBusyError`` when another run is writing to ``out`` (``OutputFolderError``
    when ``out`` cannot be created).
    """
    target = config.target_entry
    precisions = config.resolved_precisions()
    checkpoint_path = checkpoint_weights_path(config.checkpoint)
    checkpoint_sha256 = sha256_file(checkpoint_path)
    model, checkpoint_config = build_from_checkpoint(config.checkpoint)
    if sha256_file(checkpoint_path) != checkpoint_sha256:
        # A training run replaced it meanwhile: the manifests would name other weights.
        raise CheckpointError(f"{checkpoint_path} changed while it was read (a training run "
                              "writing it?); convert a checkpoint nothing is writing")
    name = (config.name or checkpoint_config.get("model_name")
            or checkpoint_config["architecture"])
    try:
        preprocess_config = PreprocessConfig.from_dict(
            config_field(checkpoint_config, "preprocess", config.checkpoint))
        class_names = tuple(config_field(checkpoint_config, "class_names", config.checkpoint))
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{checkpoint_path}: bad preprocess or class names in its "
                              f"embedded config ({error})") from error
    if config.double_scale:  # a model whose levels do not pair is refused before any work
        width, height = preprocess_config.input_size
        DoubleScaleLayout.of(model.anchor_spec((width, height)),
                             model.anchor_spec((2 * width, 2 * height)), COARSE_LEVELS_FROM_1X)
    # Synthetic frames at the size training validated on (older checkpoints: the input size).
    synthetic_size = tuple(checkpoint_config.get("synthetic_size") or preprocess_config.input_size)
    evaluation, calibration = _load_data(
        config, synthetic_size, preprocess_config.input_size,  # type: ignore[arg-type]
        class_names, need_calibration="int8" in precisions)
    out = Path(config.out)
    source = {"checkpoint": str(checkpoint_path),
              "checkpoint_sha256": checkpoint_sha256, "calibration": None}
    with exclusive_lock(out, "quantize/run.py"):
        for note in clean_output_folder(out):
            say(f"cleaned up after an interrupted run: {note}")
        with tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=out) as tmp:
            work = Path(tmp)
            builder = Builder(config, model, checkpoint_config, name, source, work,
                               preprocess_config, calibration)
            check = AccuracyCheck(model, evaluation.samples, evaluation.describe(),
                                  config.max_drop, target.accuracy_backend, config.device,
                                  config.progress, config.allow_weak_reference)
            say(f"accuracy check on {len(evaluation.samples)} images of "
                         f"{evaluation.spec}")
            staged, artifact_reports, columns, controlled = build_and_check(
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
        if entry.passed and entry.kept_instead is None:  # an earlier rejected copy is stale
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
    if not any(len(sample.class_ids) for sample in evaluation.samples):
        raise DatasetError(f"eval data {evaluation.spec}: its {len(evaluation.samples)} images "
                           "hold no annotated object, so the accuracy check has nothing to "
                           "measure")
    if not need_calibration:
        return evaluation, None
    calibration = open_image_set(config.calib_data, config.calib_size, synthetic_size,
                                 CALIBRATION_SEED, config.progress, "calibration images")
    check_disjoint(calibration, evaluation)
    check_calibration(calibration, input_size)
    return evaluation, calibration
