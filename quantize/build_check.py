"""Build every precision of one conversion run, stage each artifact and check it.

``Builder`` holds what one run shares (the rewritten model, its fp32 ONNX export at the input
size and, for double-scale testing, at 2x, the calibration inputs, the INT8 float scope) and
stages one artifact per precision and accuracy-control trial. ``build_and_check`` is the
pipeline's middle: fp32 built once and checked; INT8 under accuracy control
(``quantize.accuracy_control``); with double-scale testing each artifact's 2x model too, an
INT8 one under accuracy control of its own started from its 1x model's trial.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from edgedet.artifact import DOUBLE_SCALE_STEM, MANIFEST_NAME, MODEL_STEM, Artifact
from edgedet.attend_tail import AttendTail
from edgedet.double_scale import COARSE_LEVELS_FROM_1X
from edgedet.preprocess import PreprocessConfig
from quantize.accuracy import AccuracyCheck
from quantize.accuracy_control import ControlConfig, ControlOutcome, Trial, TrialResult, control
from quantize.attend_tail import tail_spec
from quantize.calibration import ImageSet, calibration_inputs
from quantize.export_onnx import export_onnx
from quantize.int8_scope import (
    CATEGORIES,
    DEFAULT_KEEP_FLOAT,
    find_kept_out_nodes,
    flatten,
    layer_units,
)
from quantize.manifest import build_manifest
from quantize.rewrites import rewrite_for_export
from quantize.sensitivity import LayerSensitivity, detection_weighting, rank_layers
from quantize.targets import BuildRequest, BuiltModel

if TYPE_CHECKING:
    from quantize.convert import ConvertConfig

# Artifacts that fail the check are written under OUT/rejected/, never over a good one.
REJECTED_DIR = "rejected"


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
    # Where a conclusively checked artifact of the same name stayed because this one's check
    # was inconclusive (--allow-weak-reference); this one then goes to rejected/ (passed, but
    # not put in place).
    kept_instead: str | None = None


@dataclass
class _Int8Form:
    """The run's model exported in its target's INT8 form (``Target.export_options``), with
    its weight-layer units and INT8 scopes found on this graph (node names differ from the
    main export's; the weight layers', which accuracy control names, must not)."""

    rewritten: Any
    onnx_path: Path
    work_dir: Path
    onnx_model: onnx.ModelProto
    units: dict[str, list[str]]
    _kept: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, rewritten: Any, onnx_path: Path, base_scope: tuple[str, ...],
           main_units: dict[str, list[str]]) -> _Int8Form:
        graph = onnx.load(str(onnx_path))
        form = cls(rewritten, onnx_path, onnx_path.parent, graph, {})
        form.units = layer_units(graph, form.kept(base_scope))
        if set(form.units) != set(main_units):
            raise RuntimeError(
                "the INT8 export form's weight layers differ from the main export's: "
                f"{sorted(set(form.units) ^ set(main_units))[:5]}")
        return form

    def kept(self, categories: tuple[str, ...]) -> tuple[str, ...]:
        """The node names of this graph the INT8 scope ``categories`` keeps float."""
        if categories not in self._kept:
            self._kept[categories] = tuple(flatten(find_kept_out_nodes(self.onnx_model,
                                                                       categories)))
        return self._kept[categories]


class Builder:
    """Builds and stages one artifact per precision (and per accuracy-control trial) from
    the fp32 export of the run (and, where the target's INT8 form differs,
    ``Target.export_options``, from that form's export)."""

    def __init__(self, config: ConvertConfig, model: Any, checkpoint_config: dict,
                 name: str, source: dict, work: Path, preprocess_config: PreprocessConfig,
                 calibration: ImageSet | None) -> None:
        self.config, self.target = config, config.target_entry
        self.model, self.checkpoint_config = model, checkpoint_config
        self.name, self.source, self.work = name, source, work
        self.input_size = preprocess_config.input_size
        self.calibration = calibration
        say(f"exporting {name} ({checkpoint_config['architecture']}) to ONNX, input "
                     f"{self.input_size[0]}x{self.input_size[1]}, {self.target.sampler} "
                     f"sampling" + (", PASSD's attend tap sum in the SDK"
                                    if self.target.attend_tail else ""))
        self.rewritten = rewrite_for_export(model, self.target.sampler,
                                            **self.target.export_options())
        self.onnx_fp32 = export_onnx(self.rewritten, work / "model.onnx", self.input_size)
        # The INT8 form of the target's export where it differs (Target.export_options),
        # exported when a trial first needs it.
        self._int8_form: _Int8Form | None = None
        self.keep_float: tuple[str, ...] = ()
        self.kept_report: dict[str, dict[str, Any]] = {}
        self.units: dict[str, list[str]] = {}
        self._graph: onnx.ModelProto | None = None
        self._kept_by_scope: dict[tuple[str, ...], dict[str, list[str]]] = {}
        if "int8" in config.resolved_precisions():
            graph = self._graph = onnx.load(str(self.onnx_fp32))
            kept = self._kept_out(())
            self.keep_float = tuple(flatten(kept))
            self.units = layer_units(graph, self.keep_float)
            self.kept_report = self._kept_report_for(())
        self.calibration_arrays = (
            calibration_inputs(calibration.samples, preprocess_config)
            if calibration is not None else None)
        self.size_2x: tuple[int, int] | None = None
        if config.double_scale:
            width, height = self.input_size
            self.size_2x = (2 * width, 2 * height)
            say(f"exporting the 2x model for double-scale testing, input "
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
        say(f"building {artifact_name} for {self.target.backend}")
        built = self.target.build(self._request(precision, trial, self.onnx_fp32,
                                                self.input_size, self.work,
                                                self.calibration_arrays))
        if self._uses_int8_form(precision, trial):
            built = BuiltModel(built.files, built.kept_out_of_int8, built.manifest_extra,
                               (*built.notes, "PASSD's attend tap sums: a position's anchors "
                                "in one matrix product (the target's INT8 form with INT8 "
                                "sampling reads, `Target.int8_reads_in_one_product`; a 2x "
                                "model of double-scale testing keeps one product per "
                                "anchor)"))
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

    def _scope(self, float_categories: Sequence[str]) -> tuple[str, ...]:
        """The run's keep-float categories plus ``float_categories`` (accuracy control's)."""
        return tuple(dict.fromkeys((*self.config.resolved_keep_float(), *float_categories)))

    def _kept_out(self, float_categories: Sequence[str]) -> dict[str, list[str]]:
        """``find_kept_out_nodes`` of the fp32 graph for ``_scope(float_categories)``, found
        once per scope (every accuracy-control step of a widened trial asks again)."""
        scope = self._scope(float_categories)
        if scope not in self._kept_by_scope:
            assert self._graph is not None  # scopes are asked for only in INT8 runs
            self._kept_by_scope[scope] = find_kept_out_nodes(self._graph, scope)
        return self._kept_by_scope[scope]

    def report_float_categories(self, categories: Sequence[str]) -> None:
        """Make ``kept_report`` list what the shipped INT8 artifact keeps float once accuracy
        control put ``categories`` back in float (its graph may then be the other export
        form: node names from that graph)."""
        if categories:
            self.kept_report = self._kept_report_for(categories)

    def _kept_report_for(self, float_categories: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The report's kept-float nodes per category, found on the graph an INT8 build with
        ``float_categories`` is built from."""
        trial = Trial(float_categories=tuple(float_categories))
        if self._uses_int8_form("int8", trial):
            form = self._int8_form_for("int8", trial)
            kept = find_kept_out_nodes(form.onnx_model, self._scope(float_categories))
        else:
            kept = self._kept_out(float_categories)
        return {c: {"nodes": nodes, "reason": CATEGORIES[c]} for c, nodes in kept.items()
                if nodes}

    def _uses_int8_form(self, precision: str, trial: Trial) -> bool:
        """Whether the 1x build of ``precision`` / ``trial`` runs on the INT8 form."""
        options = self.target.export_options(precision, self._scope(trial.float_categories))
        return (options != self.target.export_options()
                and bool(self.rewritten.export_rewrites.get("ProposeAttendHead")))

    def _request(self, precision: str, trial: Trial, onnx_fp32: Path,
                 input_size: tuple[int, int], work_dir: Path,
                 calibration: Any) -> BuildRequest:
        """The target's build request for ``precision`` and ``trial`` at one input size."""
        if onnx_fp32 == self.onnx_fp32 and self._uses_int8_form(precision, trial):
            form = self._int8_form_for(precision, trial)
            rewritten, onnx_fp32, work_dir = form.rewritten, form.onnx_path, form.work_dir
            scope, units = form.kept(self._scope(trial.float_categories)), form.units
        else:
            rewritten, units, scope = self.rewritten, self.units, self.keep_float
            if trial.float_categories:  # accuracy control widened the scope
                scope = tuple(flatten(self._kept_out(trial.float_categories)))
        extra_float = [n for layer in trial.float_layers for n in units[layer]]
        return BuildRequest(
            precision=precision, onnx_fp32=onnx_fp32, model=rewritten,
            input_size=input_size, work_dir=work_dir,
            calibration=calibration if precision == "int8" else None,
            # Two layers' tails can share a node (both feed one Add): name each node once.
            keep_float=tuple(dict.fromkeys((*scope, *extra_float))),
            keep_float_categories=self._scope(trial.float_categories),
            float_layers=trial.float_layers, calibration_method=trial.calibration,
            float_precision=self.config.float_precision,
            weight_storage=self.config.weight_storage,
            int8_weight_bits=self.config.int8_weight_bits)

    def _int8_form_for(self, precision: str, trial: Trial) -> _Int8Form:
        """The run's INT8 form, exported the first time a build needs it (one per run: its
        options depend only on the target, ``Target.export_options``)."""
        if self._int8_form is None:
            options = self.target.export_options(precision,
                                                 self._scope(trial.float_categories))
            say(f"exporting {self.name} in the target's INT8 form ({options})")
            rewritten = rewrite_for_export(self.model, self.target.sampler, **options)
            onnx_path = export_onnx(rewritten, self.work / "int8_form" / "model.onnx",
                                    self.input_size)
            self._int8_form = _Int8Form.of(rewritten, onnx_path, self._scope(()),
                                           self.units)
        return self._int8_form

    def add_second_scale(self, artifact: Artifact, trial: Trial | None = None) -> Artifact:
        """``artifact`` plus its 2x model for double-scale testing, built like it (same
        precision; for INT8 the same calibration method and float layers), staged anew with
        the manifest's ``double_scale`` section (accuracy None until checked)."""
        assert self.size_2x is not None, "the run was not configured for double-scale testing"
        trial = trial or Trial()
        precision = str(artifact.manifest["precision"])
        say(f"building the 2x model of {artifact.name}")
        built = self.target.build(self._request(precision, trial, self.onnx_fp32_2x,
                                                self.size_2x, self.work / "x2",
                                                self.calibration_arrays_2x))
        files_2x = {DOUBLE_SCALE_STEM + name.removeprefix(MODEL_STEM)
                    if name.startswith(MODEL_STEM + ".") else f"{DOUBLE_SCALE_STEM}_{name}": path
                    for name, path in built.files.items()}
        section = {"input_size": list(self.size_2x),
                   "anchor_spec": self.model.anchor_spec(self.size_2x).to_dict(),
                   "coarse_levels_from_1x": COARSE_LEVELS_FROM_1X,
                   "files": list(files_2x), "accuracy": None}
        if "attend_tail" in built.manifest_extra:  # the 2x model's own levels and scales
            section["attend_tail"] = built.manifest_extra["attend_tail"]
        self._trials += 1
        return Artifact.stage(self.work / "staged" / str(self._trials) / artifact.name,
                              {**artifact.files, **files_2x},
                              {**artifact.manifest, "double_scale": section})

    def rank(self) -> list[LayerSensitivity]:
        """The sensitivity ranking of the weight layers the target puts in INT8 (on the main
        export: the INT8 form has the same weight layers, only its tap sums are grouped
        otherwise)."""
        say(f"ranking {len(self.units)} INT8 layers by sensitivity")
        assert self.calibration_arrays is not None
        anchors = self.rewritten.anchor_spec(self.input_size)
        spec = tail_spec(self.rewritten, anchors.feature_sizes)
        tail = AttendTail(spec, 1, anchors.generate()) if spec is not None else None
        return rank_layers(self.onnx_fp32, self.calibration_arrays, self.keep_float,
                           quantize_outputs=self.target.rounds_outputs,
                           max_images=self.config.sensitivity_images,
                           progress=self.config.progress,
                           weighting=detection_weighting(self.checkpoint_config),
                           finish=tail)


def build_and_check(config: ConvertConfig, builder: Builder, check: AccuracyCheck
                     ) -> tuple[list[Artifact], list[ArtifactReport], dict[str, list],
                                dict[str, dict[str, Any]]]:
    """Every precision built, staged and checked; INT8 under accuracy control.

    Returns ``(staged artifacts, their reports, detections per picture column, accuracy
    control per INT8 artifact)``.
    """
    staged, reports, columns, controlled = [], [], {}, {}
    for precision in config.resolved_precisions():
        outcome = None
        if precision == "int8":
            outcome = _controlled_int8(config, builder, check)
            artifact, accuracy, run = outcome.chosen.payload
            builder.report_float_categories(outcome.chosen.trial.float_categories)
            controlled[artifact.name] = {**outcome.manifest_section(),
                                         "ranking": [r.to_dict() for r in outcome.ranking]}
            artifact = _with_control_section(artifact, outcome)
        else:
            artifact = builder.stage(precision)
            accuracy, run = check.check(artifact)
        double_scale = None
        if config.double_scale:
            artifact, double_scale = _with_second_scale(config, builder, check, artifact,
                                                        outcome)
            if outcome is not None:  # the report shows the 2x model's steps too
                controlled[f"{artifact.name}, 2x model (double-scale testing)"] = (
                    artifact.manifest["double_scale"]["accuracy_control"])
        passed = bool(accuracy["passed"])
        in_place = Path(config.out) / artifact.name
        kept_instead = None
        if passed and accuracy.get("inconclusive") and _conclusively_checked(in_place):
            # --allow-weak-reference: a smoke test's artifact never replaces a checked one;
            # it goes beside the rejected ones (its check passed, but proved nothing).
            kept_instead = str(in_place)
        reports.append(ArtifactReport(
            name=artifact.name,
            directory=str(in_place if passed and kept_instead is None
                          else Path(config.out) / REJECTED_DIR / artifact.name),
            backend=builder.target.backend, precision=str(artifact.manifest["precision"]),
            size_bytes=sum(p.stat().st_size for p in artifact.files.values()),
            passed=passed, accuracy=accuracy, checked_on=check.backend,
            notes=builder.notes.get(artifact.name, []), double_scale=double_scale,
            kept_instead=kept_instead))
        staged.append(artifact)
        columns[f"{artifact.name} ({check.backend})"] = run.detections
    return staged, reports, columns, controlled


def _conclusively_checked(directory: Path) -> bool:
    """Whether ``directory`` holds an artifact whose accuracy check passed conclusively."""
    try:
        accuracy = json.loads((directory / MANIFEST_NAME).read_text()).get("accuracy") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return bool(accuracy.get("passed")) and not accuracy.get("inconclusive")


def _controlled_int8(config: ConvertConfig, builder: Builder, check: AccuracyCheck
                     ) -> ControlOutcome:
    def evaluate(trial: Trial) -> TrialResult:
        artifact = builder.stage("int8", trial)
        accuracy, run = check.check(artifact)
        return TrialResult(trial, float(accuracy["delta_AP"]), float(accuracy["AP"]),
                           float(accuracy["latency_p50_ms"]), bool(accuracy["passed"]),
                           payload=(artifact, accuracy, run))

    control_config = ControlConfig(config.max_drop, config.max_float_layers, config.float_step)
    outcome = control(evaluate, control_config, builder.target.calibration_methods,
                      builder.rank, say=say,
                      scope_fallback=scope_fallback(config))
    if not outcome.ranking and config.sensitivity_report:  # passed without it: for the report
        outcome.ranking = builder.rank()
    return outcome


def scope_fallback(config: ConvertConfig) -> tuple[str, ...]:
    """The scope categories this run lets into INT8 that ``DEFAULT_KEEP_FLOAT`` keeps float
    (the openvino target's sampling reads): accuracy control's first way back."""
    return tuple(c for c in DEFAULT_KEEP_FLOAT if c not in config.resolved_keep_float())


def _with_second_scale(config: ConvertConfig, builder: Builder, check: AccuracyCheck,
                       artifact: Artifact, outcome: ControlOutcome | None
                       ) -> tuple[Artifact, dict[str, Any]]:
    """``artifact`` with its checked 2x model and ``double_scale`` section, and that
    section's accuracy.

    An fp32 2x model is built once. An INT8 one goes through accuracy control of its own,
    started from the trial chosen for the 1x model (``outcome``); the steps go into the
    section's ``accuracy_control``.
    """
    if outcome is None:
        staged = builder.add_second_scale(artifact)
        accuracy, _ = check.check(staged, double_scale=True)
        section = {**staged.manifest["double_scale"], "accuracy": accuracy}
        return Artifact(staged.directory, {**staged.manifest, "double_scale": section}), accuracy

    def evaluate(trial: Trial) -> TrialResult:
        staged = builder.add_second_scale(artifact, trial)
        accuracy, _ = check.check(staged, double_scale=True)
        return TrialResult(trial, float(accuracy["delta_AP"]), float(accuracy["AP"]),
                           float(accuracy["latency_p50_ms"]), bool(accuracy["passed"]),
                           payload=(staged, accuracy))

    ranking = outcome.ranking  # the 1x model's: both sizes have the same layers

    def rank() -> list:  # (ranked now if the 1x model was not: --no-sensitivity-report)
        if not ranking:
            ranking.extend(builder.rank())
        return ranking

    control_config = ControlConfig(config.max_drop, config.max_float_layers, config.float_step)
    second = control(evaluate, control_config, builder.target.calibration_methods,
                     rank, say=lambda message: say(f"2x model: {message}"),
                     start=outcome.chosen.trial, start_action="the 1x model's INT8 settings",
                     scope_fallback=scope_fallback(config))
    second.ranking = ranking
    staged, accuracy = second.chosen.payload
    section = {**staged.manifest["double_scale"], "accuracy": accuracy,
               "accuracy_control": second.manifest_section()}
    return Artifact(staged.directory, {**staged.manifest, "double_scale": section}), accuracy


def _with_control_section(artifact: Artifact, outcome: ControlOutcome) -> Artifact:
    """``artifact`` with the manifest's ``accuracy_control`` section (the float layers it
    keeps and why, the steps taken)."""
    manifest = {**artifact.manifest, "accuracy_control": outcome.manifest_section()}
    return Artifact(artifact.directory, manifest)


def say(message: str) -> None:
    """A step message (a handful per run, one line each: a log without progress bars still
    says what the run did)."""
    print(message, flush=True)
