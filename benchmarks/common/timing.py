"""Interleaved timing shared by the benchmarks: ``Timed`` things, the rounds that call them in
turn, and runners with the SDK backends' settings.

Each round calls every item ``calls`` times in turn, so a change in the machine's load or
clocks hits all of them alike. With a ``CoreLatencyProbe`` (``benchmarks/core_latency.py``)
the round trip between the two CPUs is read between items, and each item's calls of a round
are labelled ``near`` or ``far`` where the readings on both sides agree, so that the medians
of each CPU placement can be reported apart (``Timed.p50(where)``).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.core_latency import CoreLatencyProbe, placement
from edgedet import cpu_features


def machine_description() -> str:
    """The CPU model, how many CPUs this process may use and the extensions that change INT8
    and bf16 speed, e.g. ``AMD EPYC, 2 CPUs, AVX2, no VNNI, no BF16`` or ``Intel(R) Xeon(R)
    Processor, 2 CPUs, AVX-512, VNNI, BF16, AMX``: the cloud machine behind "the 2-core CPU"
    has changed between sessions (to one with the same model name and no AVX-512, to one with
    AMX), and ratios measured on one do not carry over to another."""
    cpus = cpu_features.usable_cores()
    kind = cpu_features.describe_for_speed(cpu_features.x86_cpu_flags())
    return f"{cpu_features.cpu_model_name()}, {cpus} CPUs, {kind}"


# A median of one placement needs this many calls of the item in it, else it is None.
MIN_CALLS_PER_PLACEMENT = 6


@dataclass(eq=False)
class Timed:
    """One timed thing on one runtime, and its timings (ms) with each call's CPU placement
    (``near``, ``far`` or None: not probed, or the placement changed during the calls)."""

    section: str
    key: str
    runtime: str
    precision: str
    run: Callable[[], object]
    detect: Callable[[], object] | None = None
    gflops: float | None = None
    checkpoint: str | None = None  # zoo models: the source checkpoint (pairs INT8 with fp32)
    runtime_ms: list[float] = field(default_factory=list)
    detect_ms: list[float] = field(default_factory=list)
    runtime_where: list[str | None] = field(default_factory=list)
    detect_where: list[str | None] = field(default_factory=list)

    def p50(self, where: str | None = None) -> float | None:
        """Median runtime-only ms over all calls, or over the calls of placement ``where``
        (None where fewer than ``MIN_CALLS_PER_PLACEMENT``)."""
        return _median(self.runtime_ms, self.runtime_where, where)

    def detect_p50(self, where: str | None = None) -> float | None:
        return _median(self.detect_ms, self.detect_where, where)


def _median(values: list[float], labels: list[str | None], where: str | None) -> float | None:
    if where is None:
        return statistics.median(values) if values else None
    chosen = [v for v, label in zip(values, labels, strict=True) if label == where]
    return statistics.median(chosen) if len(chosen) >= MIN_CALLS_PER_PLACEMENT else None


def time_interleaved(items: Sequence[Timed], rounds: int, calls: int, warmup: int,
                     probe: CoreLatencyProbe | None = None) -> list[float]:
    """Warm every item up, then ``rounds`` rounds, each calling every item ``calls`` times.
    Returns the probe's readings (ns; empty without a probe)."""
    for item in items:
        for _ in range(warmup):
            item.run()
            if item.detect is not None:
                item.detect()
    reading = probe.measure() if probe is not None else None
    readings = [] if reading is None else [reading]
    for round_index in range(rounds):
        for item in items:
            # The first call after switching items pays for cold caches: runtime-only and
            # detect() take turns at being first.
            steps = [(item.run, item.runtime_ms)]
            if item.detect is not None:
                steps.insert(round_index % 2, (item.detect, item.detect_ms))
            for _ in range(calls):
                for call, times in steps:
                    start = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - start) * 1000.0)
            before, reading = reading, probe.measure() if probe is not None else None
            if reading is not None:
                readings.append(reading)
            where = placement(before, reading)
            item.runtime_where += [where] * calls
            if item.detect is not None:
                item.detect_where += [where] * calls
    return readings


def ort_runner(path: Path, feed: dict[str, np.ndarray], threads: int,
               reuse_outputs: bool = False,
               finish: Callable[[dict], dict] | None = None) -> Callable[[], object]:
    """A call of an ONNX Runtime CPU session with the SDK backend's thread settings, then
    ``finish`` of its outputs by name where given (the SDK's step after the runtime, e.g. the
    attend tail: ``Detector.runtime_call`` times it too).

    ``reuse_outputs``: the outputs are written into arrays allocated once (``IOBinding``), as a
    loop over frames can run a model, instead of fresh ones each call (0.2 ms for a 14 MB
    output; OpenVINO's copy of it, which ``openvino_runner``'s ``reuse_outputs`` also skips,
    1.6 ms); the call returns those arrays."""
    import onnxruntime as ort

    from edgedet.backends.onnxruntime import session_options

    session = ort.InferenceSession(str(path), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    feed = {i.name: feed[i.name] for i in session.get_inputs()}  # a variant may skip one
    call = bound_ort_call(session, feed) if reuse_outputs else (
        lambda: session.run(None, feed))
    if finish is None:
        return call
    names = [o.name for o in session.get_outputs()]
    return lambda: finish(dict(zip(names, call(), strict=True)))


def bound_ort_call(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], list[np.ndarray]]:
    """``session`` run on ``feed`` with its outputs written into arrays allocated once (the
    shapes of a first run); the call returns them."""
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, value)
    outputs = [np.empty_like(array) for array in session.run(None, feed)]
    for meta, array in zip(session.get_outputs(), outputs, strict=True):
        binding.bind_output(meta.name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)

    def call() -> list[np.ndarray]:
        session.run_with_iobinding(binding)
        return outputs
    return call


@functools.cache
def _openvino_core() -> Any:
    import openvino as ov

    return ov.Core()


def openvino_runner(path: Path, feed: dict[str, np.ndarray], threads: int,
                    hint: str | None, reuse_outputs: bool = False
                    ) -> tuple[Callable[[], object], str]:
    """``(call, precision computed)`` of an OpenVINO CPU model compiled with the SDK backend's
    settings; ``hint`` None leaves ``INFERENCE_PRECISION_HINT`` at the plugin's default.
    ``reuse_outputs``: the call returns the request's own output tensors (no copy)."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = _openvino_core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    names = {name for port in compiled.inputs for name in port.get_names()}
    feed = {name: value for name, value in feed.items() if name in names}
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return (lambda: request.infer(feed, share_outputs=reuse_outputs)), precision
