"""Accuracy-controlled INT8: ``--max-drop`` as a target, not only a gate.

One algorithm for every target; the target only builds (``Target.build``) and the shared
check measures (the artifact through ``edgedet.Detector`` on the eval images)::

    1. plain PTQ: the target's default calibration and float scope     -> within max_drop? done
    1b. the float scope back to the common default: the categories the target lets into
       INT8 beyond ``int8_scope.DEFAULT_KEEP_FLOAT`` (OpenVINO: the sampling reads) in
       float again                                                      -> within? done
    2. better calibration: each other range estimator of the target     -> keep the best ΔAP
       (ONNX Runtime: min/max, percentile; NNCF: mean min/max, min/max,
       mean quantile, histogram)                                         -> within? done
    3. fallback: rank the layers still in INT8 by harm (``quantize.sensitivity``), return the
       most harmful ``step`` layers to float, rebuild, check; repeat    -> within? done
       until ``max_float_layers`` are in float

The first artifact within ``max_drop`` wins, so no more layers stay in float than the check
needs; when none passes, the one with the best ΔAP is reported (and rejected). Every step's
ΔAP, AP and latency go into the report.

The 2x model of double-scale testing (``--double-scale``) is a second model file checked on
its own (double-scale testing against the reference's), so it gets the same loop, started
from the trial chosen for its 1x model rather than from plain PTQ: the same calibration and
float layers first, which is all most 2x models need.

Why not NNCF's ``quantize_with_accuracy_control``: it quantizes and validates with NNCF's own
quantizer and model, so it would cover OpenVINO (and NNCF's ONNX flavour, not ONNX Runtime's
QDQ that the cpu and jetson targets ship, nor LiteRT); one loop over ``Target.build`` keeps
one algorithm, one report and the real deployed artifact in every check. Its ranking (the
INT8 model with one layer restored, scored on the validation metric) is what the check does
here for the layers the cheaper SQNR ranking puts first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from quantize.sensitivity import LayerSensitivity

# Weight layers returned to float per fallback step, and the default budget.
DEFAULT_STEP = 2
DEFAULT_MAX_FLOAT_LAYERS = 10


@dataclass(frozen=True)
class ControlConfig:
    """How far accuracy control may go.

    Attributes:
        max_drop: the target, in AP points below the reference.
        max_float_layers: most weight layers returned to float (0: plain PTQ only, the
            check is a gate as before).
        step: weight layers returned to float per step.
    """

    max_drop: float
    max_float_layers: int = DEFAULT_MAX_FLOAT_LAYERS
    step: int = DEFAULT_STEP

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_drop):  # nan would fail (or inf pass) every artifact
            raise ValueError(f"max_drop (--max-drop) must be a finite number of AP points, got "
                             f"{self.max_drop}")
        if self.max_float_layers < 0:
            raise ValueError(f"max_float_layers (--max-float-layers) must be >= 0, got "
                             f"{self.max_float_layers}")
        if self.step < 1:
            raise ValueError(f"step (--float-step) must be >= 1, got {self.step}")


@dataclass(frozen=True)
class Trial:
    """One INT8 build: the calibration method (None: the target's default), the weight
    layers (ONNX node names) returned to float on top of the target's float scope, and the
    scope categories (``quantize.int8_scope.CATEGORIES``) added to that scope."""

    calibration: str | None = None
    float_layers: tuple[str, ...] = ()
    float_categories: tuple[str, ...] = ()


@dataclass
class TrialResult:
    """A built and checked trial: ``delta_AP``, ``AP``, ``latency_p50_ms`` and ``passed`` of
    the accuracy check, plus whatever the caller needs to publish it (``payload``)."""

    trial: Trial
    delta_ap: float
    ap: float
    latency_p50_ms: float
    passed: bool
    payload: Any = None


@dataclass
class ControlOutcome:
    """The chosen trial, every step taken, and the sensitivity ranking (empty when the
    fallback was not needed)."""

    chosen: TrialResult
    steps: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[LayerSensitivity] = field(default_factory=list)

    @property
    def float_layers(self) -> list[dict[str, Any]]:
        """The layers the chosen artifact keeps in float, with their rank and figures."""
        rank = {r.node: (i + 1, r) for i, r in enumerate(self.ranking)}
        return [{"node": name, "rank": rank[name][0], "sqnr_db": rank[name][1].sqnr_db,
                 "cosine": rank[name][1].cosine, "unit": list(rank[name][1].unit),
                 "reason": f"returned to float by accuracy control: sensitivity rank "
                           f"{rank[name][0]} (output SQNR {rank[name][1].sqnr_db:.1f} dB with "
                           "only this layer in INT8)"}
                for name in self.chosen.trial.float_layers]

    def manifest_section(self) -> dict[str, Any]:
        """The INT8 manifest's ``accuracy_control`` section."""
        return {"calibration": self.chosen.trial.calibration,
                "float_categories": list(self.chosen.trial.float_categories),
                "float_layers": self.float_layers,
                "steps": self.steps}


def control(evaluate: Callable[[Trial], TrialResult], config: ControlConfig,
            calibration_methods: Sequence[str], rank: Callable[[], list[LayerSensitivity]],
            say: Callable[[str], None] = lambda message: None,
            start: Trial = Trial(), start_action: str = "plain PTQ",
            scope_fallback: Sequence[str] = ()) -> ControlOutcome:
    """Run the loop of the module docstring.

    Args:
        evaluate: builds the INT8 artifact of a trial and checks it.
        config: the target ΔAP and the float budget (``max_float_layers`` counts ``start``'s
            float layers too).
        calibration_methods: the target's range estimators, its default first.
        rank: the sensitivity ranking of the layers the target puts in INT8, called once,
            only when the fallback is needed.
        say: progress messages.
        start: the first trial (default: plain PTQ). The 2x model of double-scale testing
            starts from its 1x model's chosen trial: the other calibrations then keep that
            trial's float layers, and the fallback adds layers on top of them.
        start_action: how the steps list names the first trial.
        scope_fallback: scope categories the target's default lets into INT8 and the common
            default keeps in float (step 1b); a missed check tries them in float first.
    """
    steps: list[dict[str, Any]] = []

    def run(trial: Trial, action: str) -> TrialResult:
        result = evaluate(trial)
        steps.append({"step": len(steps), "action": action,
                      "calibration": trial.calibration or (calibration_methods or [None])[0],
                      "float_categories": list(trial.float_categories),
                      "float_layers": len(trial.float_layers),
                      "delta_AP": result.delta_ap, "AP": result.ap,
                      "latency_p50_ms": result.latency_p50_ms, "passed": result.passed})
        say(f"accuracy control, step {len(steps) - 1} ({action}): ΔAP "
            f"{result.delta_ap:+.2f} -> {'pass' if result.passed else 'miss'}")
        return result

    best = run(start, start_action)
    if best.passed or config.max_float_layers == 0:
        return ControlOutcome(best, steps)
    restorable = tuple(c for c in scope_fallback if c not in start.float_categories)
    if restorable:
        result = run(replace(start, float_categories=(*start.float_categories, *restorable)),
                     f"{', '.join(restorable)} back in float")
        if result.delta_ap > best.delta_ap or result.passed:
            best = result
        if best.passed:
            return ControlOutcome(best, steps)
    categories = best.trial.float_categories  # every later trial keeps the better scope
    started_with = start.calibration or (calibration_methods or [None])[0]
    for method in calibration_methods:
        if method != started_with:
            result = run(Trial(method, start.float_layers, categories), f"calibration {method}")
            if result.delta_ap > best.delta_ap:
                best = result
    if best.passed:
        return ControlOutcome(best, steps)
    ranking = rank()
    calibration = best.trial.calibration
    candidates = [r.node for r in ranking if r.node not in start.float_layers]
    chosen = list(start.float_layers)
    taken = 0
    while taken < len(candidates) and len(chosen) < config.max_float_layers:
        room = min(config.step, config.max_float_layers - len(chosen))
        added = candidates[taken:taken + room]
        taken += len(added)
        chosen += added
        result = run(Trial(calibration, tuple(chosen), categories),
                     f"+{len(added)} float: {', '.join(added)}")
        if result.delta_ap > best.delta_ap or result.passed:
            best = result
        if result.passed:
            break
    return ControlOutcome(best, steps, ranking)
