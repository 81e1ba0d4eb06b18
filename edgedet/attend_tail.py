"""The attend tail: PASSD's attend-stage tap sum, run by the SDK after the model.

Some artifacts (the ``cpu`` target's PASSD) end their graph one step before the head outputs:
for each pyramid level the model returns the attend stage's projected table and its sampling
points, and this module sums the bilinear samples (``edgedet.kernels.tap_sum``) into the class
logits and box deltas the decoder reads. Why: ONNX Runtime's only fast sampler, ``GridSample``,
walks its sampling plan once per channel in scalar code; the compiled sum reads each corner's
outputs as one contiguous row, and an INT8 model hands over its uint8 table without
dequantizing it (``docs/architecture_export.md``, "The attend tail").

The manifest's ``attend_tail`` section says how (``AttendTailSpec``)::

    "attend_tail": {
      "anchors": 3, "taps": 9,
      "outputs": [["cls_logits", 13], ["box_deltas", 4]],   # the O values of a sample, split
                                                            # (one or two outputs)
      "bias": [[...O...], ...anchors],
      "points": {"from": "propose_deltas", "kernel_size": 3, "strides": [8, 16, 32, 64],
                 "box_coder_weights": [10, 10, 5, 5]},
      "levels": [{"table": "attend_table_0", "table_scale": null,
                  "table_zero_point": null}, ...]
    }

Level ``l`` has the map size of ``anchor_spec.feature_sizes[l]``; its table output is
``(N, H, W, A*T*O)`` (float32, or uint8 with the scale and zero point; artifacts built before
commit 90e8237 (2026-12-07) give the same values as ``(N, H*W, A*T*O)``, read alike). The
sampling points, ``(A, T, H*W, 2)`` per image in map coordinates, are computed here from the
model's ``propose_deltas`` output and the anchor spec's priors (``points``: the propose
stage's box decoding and ``box_sampling_points``, in the graph's float32 operations; the
``exp`` is numba's, within an ulp of a runtime's): in ONNX Runtime those 194 small nodes
cost the zoo's INT8 PASSD about 1 ms of its 10.5 kernel-ms. Artifacts built before
2026-12-07 (fourth session) have no ``points`` block; each of their levels names a points
output ``(N, A, T, H*W, 2)`` float32 instead (``"points": "attend_points_0"``), read as it
is. ``Detector`` runs the tail on every output of the model (``run_model``,
``runtime_call`` and ``detect`` alike), so it is part of every runtime-only timing and of
the accuracy check.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

SECTION = "attend_tail"
TABLE_PREFIX = "attend_table_"
POINTS_PREFIX = "attend_points_"  # (the points outputs of artifacts before the points block)
PROPOSE_DELTAS = "propose_deltas"  # PASSD's output the tail computes the points from


@dataclass(frozen=True)
class TailLevel:
    """One pyramid level: its output names, map size and, for a uint8 table, its scale."""

    table: str
    points: str | None  # a points output, or None: computed (AttendTailSpec.points_from)
    height: int
    width: int
    table_scale: float | None = None
    table_zero_point: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, **({} if self.points is None else {"points": self.points}),
                "table_scale": self.table_scale, "table_zero_point": self.table_zero_point}


@dataclass(frozen=True)
class PointsFromDeltas:
    """How the tail computes the sampling points: from the model output ``output`` (the
    propose stage's clipped deltas ``(N, sum_l H_l*W_l*A, 4)``, y -> x -> anchor order) and the
    priors, decoded with ``box_coder_weights`` and spread over a ``kernel_size`` x
    ``kernel_size`` grid at each level's ``strides[l]``."""

    output: str
    kernel_size: int
    strides: tuple[float, ...]
    box_coder_weights: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.output, "kernel_size": self.kernel_size,
                "strides": list(self.strides), "box_coder_weights": list(self.box_coder_weights)}

    @classmethod
    def from_dict(cls, block: object, levels: int, taps: int,
                  fail: Callable[[str], Exception]) -> PointsFromDeltas:
        if not (isinstance(block, dict) and isinstance(block.get("from"), str)):
            raise fail(f"{SECTION}.points must name the output the points come from")
        kernel, strides = block.get("kernel_size"), block.get("strides")
        weights = block.get("box_coder_weights")
        if not (isinstance(kernel, int) and not isinstance(kernel, bool) and kernel > 0
                and kernel * kernel == taps):
            raise fail(f"{SECTION}.points.kernel_size must be the square root of taps ({taps}), "
                       f"got {kernel!r}")
        if not (isinstance(strides, list) and len(strides) == levels
                and all(_is_number(v) and v > 0 for v in strides)):
            raise fail(f"{SECTION}.points.strides must be {levels} positive numbers, got "
                       f"{strides!r}")
        if not (isinstance(weights, list) and len(weights) == 4
                and all(_is_number(v) and v > 0 for v in weights)):
            raise fail(f"{SECTION}.points.box_coder_weights must be 4 positive numbers, got "
                       f"{weights!r}")
        return cls(block["from"], kernel, tuple(float(v) for v in strides),
                   tuple(float(v) for v in weights))  # type: ignore[arg-type]


@dataclass(frozen=True)
class AttendTailSpec:
    """The manifest's ``attend_tail`` section, checked (see the module docstring)."""

    anchors: int
    taps: int
    outputs: tuple[tuple[str, int], ...]  # one or two (name, size): the O values, split
    bias: np.ndarray  # (anchors, O) float32
    levels: tuple[TailLevel, ...]
    points_from: PointsFromDeltas | None = None  # None: each level names its points output

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model outputs the tail consumes (and drops)."""
        return tuple(n for level in self.levels for n in (level.table, level.points)
                     if n is not None)

    @property
    def required_names(self) -> tuple[str, ...]:
        """The model outputs the tail reads: ``input_names`` and the output the points come
        from, which stays for the decoder."""
        extra = () if self.points_from is None else (self.points_from.output,)
        return (*self.input_names, *extra)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        points = {} if self.points_from is None else {"points": self.points_from.to_dict()}
        return {"anchors": self.anchors, "taps": self.taps,
                "outputs": [[name, size] for name, size in self.outputs],
                "bias": self.bias.tolist(), **points,
                "levels": [lv.to_dict() for lv in self.levels]}

    @classmethod
    def from_section(cls, section: object, feature_sizes: Sequence[Sequence[int]],
                     fail: Callable[[str], Exception] = ValueError) -> AttendTailSpec:
        """Parse ``section`` for a model whose levels have ``feature_sizes`` ``(H, W)``;
        ``fail(problem)`` is the error raised for a bad one."""
        if not isinstance(section, dict):
            raise fail(f"{SECTION} must be an object")
        missing = [k for k in ("anchors", "taps", "outputs", "bias", "levels")
                   if k not in section]
        if missing:
            raise fail(f"{SECTION} lacks {missing}")
        anchors, taps = section["anchors"], section["taps"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                   for v in (anchors, taps)):
            raise fail(f"{SECTION}.anchors and .taps must be positive whole numbers")
        outputs = section["outputs"]
        if not (isinstance(outputs, list) and len(outputs) in (1, 2) and all(
                isinstance(o, list) and len(o) == 2 and isinstance(o[0], str)
                and isinstance(o[1], int) and not isinstance(o[1], bool) and o[1] > 0
                for o in outputs)):
            raise fail(f"{SECTION}.outputs must be one or two [name, size] pairs, got "
                       f"{outputs!r}")
        if len({name for name, _ in outputs}) != len(outputs):
            raise fail(f"{SECTION}.outputs names an output twice: {outputs!r}")
        width = sum(size for _, size in outputs)
        rows = section["bias"]
        if not (isinstance(rows, list) and all(
                isinstance(row, list) and all(_is_number(v) for v in row) for row in rows)):
            raise fail(f"{SECTION}.bias must be a list of rows of numbers")
        bias = np.asarray(rows, dtype=np.float32)
        if bias.shape != (anchors, width) or not np.isfinite(bias).all():
            raise fail(f"{SECTION}.bias must be {anchors} rows of {width} finite numbers, got "
                       f"shape {bias.shape}")
        levels = section["levels"]
        if not isinstance(levels, list) or len(levels) != len(feature_sizes):
            given = len(levels) if isinstance(levels, list) else type(levels).__name__
            raise fail(f"{SECTION}.levels must list one level per anchor_spec feature size "
                       f"({len(feature_sizes)}), got {given}")
        points_from = None if "points" not in section else PointsFromDeltas.from_dict(
            section["points"], len(feature_sizes), taps, fail)
        parsed = []
        for index, (level, (height, map_width)) in enumerate(
                zip(levels, feature_sizes, strict=True)):
            # Either the section computes the points or each level names its points output.
            points_named = isinstance(level, dict) and isinstance(level.get("points"), str)
            if not (isinstance(level, dict) and isinstance(level.get("table"), str)
                    and points_named == (points_from is None)):
                what = ("its table output (the section's points block computes the points)"
                        if points_from is not None else "its table and points outputs")
                raise fail(f"{SECTION}.levels[{index}] must name {what}, got {level!r}")
            scale, zero = level.get("table_scale"), level.get("table_zero_point")
            if (scale is None) != (zero is None) or (scale is not None and not (
                    _is_number(scale) and scale > 0 and _is_number(zero)
                    and float(zero).is_integer() and 0 <= zero <= 255)):
                raise fail(f"{SECTION}: level {level['table']!r} needs both or neither of "
                           "table_scale (> 0) and table_zero_point (a whole number 0..255)")
            parsed.append(TailLevel(level["table"], level.get("points"), int(height),
                                    int(map_width), scale, zero))
        names = [n for lv in parsed for n in (lv.table, lv.points) if n is not None]
        if points_from is not None:
            names.append(points_from.output)
        if len(set(names)) != len(names):
            raise fail(f"{SECTION}.levels name a model output twice: {names}")
        return cls(anchors, taps, tuple((name, size) for name, size in outputs), bias,
                   tuple(parsed), points_from)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and bool(
        np.isfinite(value))


class AttendTail:
    """Runs an ``AttendTailSpec`` on model outputs, the positions split over ``threads``.

    ``tail(raw)`` takes the model's outputs by name and returns them with each level's table
    (and an older artifact's points outputs) replaced by the summed outputs
    ``(N, sum_l H_l*W_l*A, size)`` float32, in the head outputs' y -> x -> anchor order. A
    spec with a points block needs ``priors_cxcywh``, the anchor spec's ``generate()``. Safe
    to call from several threads at once, and in a forked child (which gets worker threads of
    its own). ``threads`` None: the CPUs this process may use.
    """

    def __init__(self, spec: AttendTailSpec, threads: int | None = None,
                 priors_cxcywh: np.ndarray | None = None) -> None:
        self.spec = spec
        self.threads = max(1, threads if threads is not None else _cpu_count())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._pool_pid = os.getpid()
        self._total = sum(lv.height * lv.width for lv in spec.levels) * spec.anchors
        self._priors: np.ndarray | None = None
        if spec.points_from is not None:
            # (the anchor spec's ``generate()``: ``(sum_l H_l*W_l*A, 4)``, the head's order)
            if priors_cxcywh is None or np.shape(priors_cxcywh) != (self._total, 4):
                raise ValueError(f"{SECTION} computes its sampling points from the priors: "
                                 f"give priors_cxcywh ({self._total}, 4), got "
                                 f"{None if priors_cxcywh is None else np.shape(priors_cxcywh)}")
            self._priors = np.ascontiguousarray(priors_cxcywh, dtype=np.float32)
            kernel = spec.points_from.kernel_size
            half = (kernel - 1) / 2
            steps = [i - half for i in range(kernel)]
            # Each tap's offset in box sizes, row-major like a conv kernel (training's table).
            self._offsets = np.array([[x for _ in steps for x in steps],
                                      [y for y in steps for _ in steps]], np.float32)
            self._weights = np.asarray(spec.points_from.box_coder_weights, np.float32)

    def outputs_after(self, model_outputs: Sequence[str]) -> set[str]:
        """The output names a model with ``model_outputs`` gives once the tail has run."""
        return set(model_outputs) - set(self.spec.input_names) | set(self.spec.output_names)

    def __call__(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgedet.kernels import tail_points, tap_sum_rows

        spec = self.spec
        levels = [self._level_inputs(raw, level) for level in spec.levels]
        batch = levels[0][0].shape[0]
        deltas = None if spec.points_from is None else self._deltas(raw, batch)
        (name_a, size_a), (name_b, size_b) = (*spec.outputs, ("", 0))[:2]
        out_a = np.empty((batch, self._total, size_a), np.float32)
        out_b = np.empty((batch, self._total, size_b), np.float32)
        # Each thread: a slice of every level's positions, its points first where the tail
        # computes them (a thread's tap sums read the points of its own positions only).
        jobs: list[list[tuple[Callable[..., None], tuple]]] = [[] for _ in range(self.threads)]
        first_row = 0
        for index, (level, (tables, points)) in enumerate(zip(spec.levels, levels,
                                                               strict=True)):
            positions = level.height * level.width
            bounds = np.linspace(0, positions, self.threads + 1).astype(int)
            scale = np.float32(1 if level.table_scale is None else level.table_scale)
            zero = np.float32(0 if level.table_zero_point is None else level.table_zero_point)
            if points is None:
                points = np.empty((batch, spec.anchors, spec.taps, positions, 2), np.float32)
            for n in range(batch):
                for k in range(self.threads):
                    start, stop = int(bounds[k]), int(bounds[k + 1])
                    if start == stop:
                        continue
                    if deltas is not None:
                        jobs[k].append((tail_points, self._points_args(
                            deltas[n], index, first_row, start, stop, points[n])))
                    jobs[k].append((tap_sum_rows, (
                        tables[n], points[n], level.height, level.width, scale, zero,
                        spec.bias, size_a, first_row, start, stop, out_a[n], out_b[n])))
            first_row += positions * spec.anchors
        self._run(jobs)
        finished = {k: v for k, v in raw.items() if k not in spec.input_names}
        finished[name_a] = out_a
        if name_b:
            finished[name_b] = out_b
        return finished

    def _deltas(self, raw: Mapping[str, np.ndarray], batch: int) -> np.ndarray:
        """The points block's output, ``(N, rows, 4)`` float32 C-contiguous, checked."""
        source = self.spec.points_from
        assert source is not None and self._priors is not None
        deltas = raw[source.output]
        if deltas.dtype != np.float32 or deltas.shape != (batch, self._total, 4):
            raise ValueError(f"model output {source.output!r} is {deltas.dtype} "
                             f"{deltas.shape}; the manifest's {SECTION} computes the sampling "
                             f"points from ({batch}, {self._total}, 4) float32")
        return np.ascontiguousarray(deltas)

    def sampling_points(self, raw: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Each level's sampling points ``(N, A, T, H*W, 2)`` as a call computes them from
        the points block's output (a call does it a thread's positions at a time)."""
        from edgedet.kernels import tail_points

        spec = self.spec
        batch = raw[spec.levels[0].table].shape[0]
        deltas = self._deltas(raw, batch)
        levels, first_row = [], 0
        for index, level in enumerate(spec.levels):
            positions = level.height * level.width
            points = np.empty((batch, spec.anchors, spec.taps, positions, 2), np.float32)
            for n in range(batch):
                tail_points(*self._points_args(deltas[n], index, first_row, 0, positions,
                                               points[n]))
            levels.append(points)
            first_row += positions * spec.anchors
        return levels

    def _points_args(self, deltas: np.ndarray, level: int, first_row: int, start: int,
                     stop: int, points: np.ndarray) -> tuple:
        """``kernels.tail_points``' arguments for one image's positions ``start:stop`` of
        ``level`` into its ``points`` ``(A, T, H*W, 2)``."""
        source = self.spec.points_from
        assert source is not None
        stride = source.strides[level]
        return (deltas, self._priors, self._weights, np.float32(stride),
                np.float32(stride * source.kernel_size), self._offsets, first_row, start, stop,
                points)

    def _level_inputs(self, raw: Mapping[str, np.ndarray], level: TailLevel
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """The level's table ``(N, H*W, A, T, O)`` and points ``(N, A, T, H*W, 2)`` (None
        where the tail computes them), checked."""
        spec = self.spec
        width = spec.bias.shape[1]
        positions = level.height * level.width
        table = raw[level.table]
        want_dtype = np.float32 if level.table_scale is None else np.uint8
        columns = spec.anchors * spec.taps * width
        if table.dtype != want_dtype or table.shape[1:] not in (
                (level.height, level.width, columns), (positions, columns)):
            raise ValueError(
                f"model output {level.table!r} is {table.dtype} {table.shape}; the manifest's "
                f"{SECTION} reads (N, {level.height}, {level.width}, {columns}) (or "
                f"(N, {positions}, {columns})) {np.dtype(want_dtype).name}")
        table = np.ascontiguousarray(table).reshape(
            table.shape[0], positions, spec.anchors, spec.taps, width)
        if level.points is None:
            return table, None
        points = raw[level.points]
        if points.dtype != np.float32 or points.shape != (
                table.shape[0], spec.anchors, spec.taps, positions, 2):
            raise ValueError(f"model output {level.points!r} is {points.dtype} {points.shape}; "
                             f"the manifest's {SECTION} reads (N, {spec.anchors}, {spec.taps}, "
                             f"{positions}, 2) float32")
        return table, np.ascontiguousarray(points)

    def _run(self, jobs: list[list[tuple[Callable[..., None], tuple]]]) -> None:
        def work(chunk: list[tuple[Callable[..., None], tuple]]) -> None:
            for kernel, args in chunk:
                kernel(*args)

        if self.threads == 1:
            work(jobs[0])
            return
        if self._pool_pid != os.getpid():
            # A forked child inherits the pool object but not its threads: a submit there
            # would wait forever. (The lock, too, may have been held by a parent thread.)
            self._pool_lock, self._pool, self._pool_pid = threading.Lock(), None, os.getpid()
        with self._pool_lock:  # (close() cannot shut the pool down between these)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1,
                                                thread_name_prefix="edgedet-attend-tail")
            futures = [self._pool.submit(work, chunk) for chunk in jobs[1:]]
        work(jobs[0])  # the calling thread takes a share too
        for future in futures:
            future.result()

    def warm_up(self) -> None:
        """Compile (or load from the disk cache) the kernels for this spec's table dtypes now,
        so that the first frame does not wait for them."""
        from edgedet.kernels import tail_points, tap_sum_rows

        if self.spec.points_from is not None:
            boxes = np.zeros((1, 4), np.float32)
            tail_points(boxes, boxes, np.ones(4, np.float32), np.float32(1), np.float32(1),
                        np.zeros((2, 1), np.float32), 0, 0, 1,
                        np.zeros((1, 1, 1, 2), np.float32))

        one = np.zeros((1, 1), np.float32)
        for quantized in {lv.table_scale is not None for lv in self.spec.levels}:
            table = np.zeros((1, 1, 1, 2), np.uint8 if quantized else np.float32)
            tap_sum_rows(table, np.zeros((1, 1, 1, 2), np.float32), 1, 1, np.float32(1),
                         np.float32(0), np.zeros((1, 2), np.float32), 1, 0, 0, 1, one, one)

    def close(self) -> None:
        """Stop the worker threads (a later call starts them again)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
            if pool is not None and self._pool_pid == os.getpid():
                pool.shutdown()  # after the work already submitted


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def attend_tail_for(manifest: Mapping[str, Any], model_outputs: Sequence[str],
                    threads: int | None = None,
                    output_dtypes: Mapping[str, str] | None = None,
                    priors_cxcywh: np.ndarray | None = None) -> AttendTail | None:
    """The tail ``Detector`` runs on a model with ``model_outputs`` (compiled now), or None:
    the manifest has none, or the model computes the head outputs itself (the accuracy
    check's reference runs the PyTorch checkpoint on the artifact's manifest).

    ``priors_cxcywh``: the manifest's anchor spec's ``generate()`` where the caller has it
    already (``Detector``: its decoder's, PASSD's about 0.4 ms to generate), for a section that
    computes its sampling points; generated here otherwise.

    Raises:
        ValueError: ``output_dtypes`` (the backend's element types, where it reports them)
            shows a table of another type than the section reads (a float table where it
            gives a uint8 scale, or the reverse): at load time rather than at the first frame.
    """
    from edgedet.anchors import anchor_spec_from_dict

    section = manifest.get(SECTION)
    if section is None:
        return None
    anchors = anchor_spec_from_dict(manifest["anchor_spec"])
    spec = AttendTailSpec.from_section(section, anchors.feature_sizes)
    if not set(spec.required_names) <= set(model_outputs):
        return None
    for level in spec.levels:
        want = "float32" if level.table_scale is None else "uint8"
        got = (output_dtypes or {}).get(level.table, want)
        if got != want:
            raise ValueError(f"model output {level.table!r} is {got}, but the manifest's "
                             f"{SECTION} reads it as {want} (table_scale "
                             f"{level.table_scale}): the manifest is not this model's")
    if spec.points_from is None:
        priors_cxcywh = None
    elif priors_cxcywh is None:
        priors_cxcywh = anchors.generate()
    tail = AttendTail(spec, threads, priors_cxcywh)
    tail.warm_up()
    return tail
