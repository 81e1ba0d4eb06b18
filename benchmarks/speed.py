"""Every speed figure of the project, from one interleaved timing run.

    python benchmarks/speed.py [--threads 2] [--rounds 20] [--calls 3] [--warmup 3]
        [--skip-paper-width] [--zoo NAME ...] [--attend-channels 256] [--attend-size 40]
        [--json]

Everything is built or loaded first; then each round calls every timed thing ``--calls``
times in turn, so a change in the machine's load or clocks hits all of them alike (as in
``benchmarks/backends.py`` and ``benchmarks/pa_attend_conv.py``); a zoo model's
runtime-only and ``detect()`` calls take turns at going first after the switch from the
previous model, which pays for cold caches. Figures are medians (p50) over all rounds.
Ratios are always ``ms / reference ms``: below 1 is faster than the reference. Three
markdown tables:

1. Zoo models: each ``edgedet.zoo`` model (or artifact folder given to ``--zoo``) on each
   installed backend that reads its model file (an ONNX artifact runs on ``onnxruntime``
   and ``openvino``), loaded with ``Detector``.
   *runtime* is the model alone as ``detect()`` feeds it (``Detector.runtime_call``: the
   resized uint8 frame where the runtime normalises it, OpenVINO; else the normalised
   input), *detect*
   is ``Detector.detect`` on a 640x480 synthetic frame (preprocessing, model, decoding and
   NMS); *detect/runtime* is what the SDK adds around the model. *GFLOPs* of one forward at
   the model's input size (``edgedet.models.summary.count_gflops``: multiply-adds count 2,
   convolutions and matrix products only) of the model rebuilt from its source checkpoint,
   '-' where that checkpoint is missing or differs from the one the manifest names; *GOPS* =
   GFLOPs / runtime seconds, the arithmetic rate the runtime achieves. An fp32 model on
   OpenVINO is also timed at the CPU plugin's default precision (*openvino default*: bf16
   convolutions where the CPU has AVX-512 BF16; runtime only), and each INT8 zoo model is
   compared with the fp32 zoo model of the same source checkpoint on each runtime.
2. Paper-width PASSD-MobileNet (80 classes, 320x320, RANDOM weights: speed only), built
   here as the ``cpu`` and ``openvino`` targets build it (``rewrite_for_export`` with the
   target's sampler, ``export_onnx``, ``Target.build``: QDQ INT8 by ``quantize_onnx`` for
   ONNX Runtime, NNCF INT8 IR by ``quantize_openvino``, both with the default keep-float
   scope and 8 random calibration inputs; the IR a second time with its float ops in bf16
   except the sampling coordinates, ``--float-precision bf16``). OpenVINO runs as the SDK
   runs it (``INFERENCE_PRECISION_HINT`` f32, or bf16 for that second IR), plus once at the
   CPU plugin's default precision (bf16 on CPUs that have it). *computes* is the precision
   OpenVINO reports it computes float ops in; *vs fp32* compares with the same runtime's fp32
   model.
3. Attend stage: the export variants of PASSD's P&A attend conv (the classes of
   ``benchmarks/pa_attend_conv.py``) at the paper's largest level (256 channels, 3 anchors x
   81 outputs, 40x40 map), fp32, against a plain 3x3 conv of the same size.

ONNX Runtime sessions and OpenVINO compiled models use the SDK backends' settings
(``--threads`` intra-op threads, one inter-op thread; OpenVINO ``LATENCY`` hint).
``--json`` prints one JSON object instead of the tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from benchmarks import pa_attend_conv as pa
from edgedet import Detector
from edgedet.artifact import MANIFEST_NAME, main_model_files, sha256_file
from edgedet.backends import BackendError, available_backends, model_file_for
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.models.checkpoint import build_from_checkpoint
from edgedet.models.passd import passd_mobilenet
from edgedet.models.summary import count_gflops
from edgedet.zoo import list_models, zoo_model_dir
from quantize.export_onnx import export_onnx
from quantize.int8_scope import find_kept_out_nodes, flatten
from quantize.rewrites import rewrite_for_export
from quantize.targets import BuildRequest, target_named

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "onnx", "onnxruntime", "openvino", "nncf", "numpy")
FRAME_SIZE = (640, 480)
PAPER_SIZE, PAPER_CLASSES, CALIBRATION_INPUTS = 320, 80, 8
ATTEND_OUTPUTS, ATTEND_ANCHORS, ATTEND_STRIDE = 81, 3, 8


@dataclass
class Timed:
    """One timed thing on one runtime, and its timings."""

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

    @property
    def p50(self) -> float:
        return statistics.median(self.runtime_ms)


def time_interleaved(items: Sequence[Timed], rounds: int, calls: int, warmup: int) -> None:
    """Warm every item up, then ``rounds`` rounds, each calling every item ``calls`` times."""
    for item in items:
        for _ in range(warmup):
            item.run()
            if item.detect is not None:
                item.detect()
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


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@functools.cache
def _openvino_core() -> object:
    import openvino as ov

    return ov.Core()


def ort_runner(path: Path, feed: dict[str, np.ndarray], threads: int) -> Callable[[], object]:
    """A call of an ONNX Runtime CPU session with the SDK backend's thread settings."""
    import onnxruntime as ort

    from edgedet.backends.onnxruntime import session_options

    session = ort.InferenceSession(str(path), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    feed = {i.name: feed[i.name] for i in session.get_inputs()}  # a variant may skip one
    return lambda: session.run(None, feed)


def openvino_runner(path: Path, feed: dict[str, np.ndarray], threads: int,
                    hint: str | None) -> tuple[Callable[[], object], str]:
    """``(call, precision computed)`` of an OpenVINO CPU model compiled with the SDK backend's
    settings; ``hint`` None leaves ``INFERENCE_PRECISION_HINT`` at the plugin's default."""
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = _openvino_core().compile_model(str(path), "CPU", config)  # type: ignore[attr-defined]
    request = compiled.create_infer_request()
    names = {name for port in compiled.inputs for name in port.get_names()}
    feed = {name: value for name, value in feed.items() if name in names}
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return (lambda: request.infer(feed, share_outputs=False)), precision


def checkpoint_gflops(manifest: dict) -> float | None:
    """GFLOPs of the manifest's source checkpoint at its input size, None where the
    checkpoint is not in the repository or is not the one the artifact was built from."""
    source = manifest.get("source") or {}
    if not source.get("checkpoint"):
        return None
    path = REPO_ROOT / source["checkpoint"]
    expected = source.get("checkpoint_sha256")
    if not path.is_file() or (expected and sha256_file(path) != expected):
        return None
    model, _ = build_from_checkpoint(path)
    width, height = manifest["preprocess"]["input_size"]
    return count_gflops(model, (int(width), int(height)))


def zoo_items(names: Sequence[str], threads: int) -> tuple[list[Timed], list[str]]:
    """Each zoo model on each installed backend that reads it; notes on those that failed."""
    frame = SyntheticScenes(1, seed=0, config=SyntheticConfig(image_size=FRAME_SIZE))[0].image
    items: list[Timed] = []
    notes: list[str] = []
    gflops_by_checkpoint: dict[str, float | None] = {}
    for name in names:
        directory = Path(name) if Path(name).is_dir() else zoo_model_dir(name)
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
        checkpoint = str((manifest.get("source") or {}).get("checkpoint"))
        if checkpoint not in gflops_by_checkpoint:
            gflops_by_checkpoint[checkpoint] = checkpoint_gflops(manifest)
        for backend in available_backends():
            try:
                model_file_for(backend, main_model_files(manifest))
                detector = Detector(directory, backend=backend, threads=threads)
            except BackendError as error:
                if "reads" not in str(error):  # a file it cannot read is no failure
                    notes.append(f"{name} on {backend}: {error}")
                continue
            items.append(Timed(
                "zoo", name, backend, str(manifest["precision"]),
                run=detector.runtime_call(frame),
                detect=lambda d=detector: d.detect(frame),
                gflops=gflops_by_checkpoint[checkpoint], checkpoint=checkpoint))
            if backend == "openvino" and manifest["precision"] == "fp32":
                # What a user gets from OpenVINO with no settings: its CPU plugin's default
                # precision (bf16 convolutions on CPUs that have AVX-512 BF16); runtime only,
                # the yardstick the INT8 entries are measured against.
                model_file = directory / model_file_for(backend, main_model_files(manifest))
                images = detector.preprocess(frame)[0]
                run, computes = openvino_runner(model_file, {manifest["input"]["name"]: images},
                                                threads, None)
                items.append(Timed("zoo", name, "openvino default", computes, run,
                                   gflops=gflops_by_checkpoint[checkpoint],
                                   checkpoint=checkpoint))
    return items, notes


def build_for_targets(model: nn.Module, size: tuple[int, int], work_dir: Path,
                      calibration: Sequence[np.ndarray], label: str,
                      precisions: Sequence[str] = ("fp32", "int8"),
                      float_precisions: Sequence[str] = ("f32",),
                      targets: Sequence[str] = ("cpu", "openvino"),
                      keep_float: Sequence[str] | None = None,
                      ) -> dict[tuple[str, str], Path]:
    """``model`` built as the ``cpu`` and ``openvino`` targets (or ``targets``) build it
    (their sampler, their default keep-float scope or the ``keep_float`` categories,
    ``Target.build``) for each precision, in ``work_dir``: ``{(target, precision): model
    file}``. INT8 ranges come from ``calibration``. INT8 is built once per float precision of
    ``float_precisions`` the target offers, keyed ``int8`` (f32) and e.g. ``int8 bf16``."""
    built: dict[tuple[str, str], Path] = {}
    for target_name in targets:
        target = target_named(target_name)
        rewritten = rewrite_for_export(model, target.sampler)
        target_dir = work_dir / target_name
        onnx_fp32 = export_onnx(rewritten, target_dir / "fp32.onnx", size)
        scope = target.default_keep_float if keep_float is None else tuple(keep_float)
        keep_float_nodes = tuple(flatten(find_kept_out_nodes(onnx.load(str(onnx_fp32)), scope)))
        for precision in precisions:
            wanted = [f for f in float_precisions if f in target.float_precisions]
            for float_precision in wanted if precision == "int8" else ["f32"]:
                key = precision if float_precision == "f32" else f"{precision} {float_precision}"
                _progress(f"building {label}: {target_name} {key}")
                request = BuildRequest(precision, onnx_fp32, rewritten, size,
                                       target_dir / key.replace(" ", "_"),
                                       calibration if precision == "int8" else None,
                                       keep_float_nodes, float_precision=float_precision)
                files = target.build(request).files
                built[target_name, key] = next(path for name, path in files.items()
                                               if name.endswith((".onnx", ".xml")))
    return built


def random_inputs(size: tuple[int, int], count: int) -> list[np.ndarray]:
    """``count`` random-normal ``(1, 3, H, W)`` inputs (speed runs: values do not matter)."""
    rng = np.random.default_rng(0)
    width, height = size
    return [rng.standard_normal((1, 3, height, width), dtype=np.float32) for _ in range(count)]


def paper_width_items(work_dir: Path, threads: int) -> list[Timed]:
    """Build the paper-width PASSD-MobileNet's fp32 and INT8 models (ONNX Runtime, OpenVINO)
    in ``work_dir`` and return their timed calls."""
    torch.manual_seed(0)
    model = passd_mobilenet(num_classes=PAPER_CLASSES, img_size=PAPER_SIZE).eval()
    size = (PAPER_SIZE, PAPER_SIZE)
    gflops = count_gflops(model, size)
    calibration = random_inputs(size, CALIBRATION_INPUTS)
    built = build_for_targets(model, size, work_dir, calibration, "the paper-width model",
                              float_precisions=("f32", "bf16"))
    feed = {"images": calibration[0]}
    items = [Timed("paper", f"onnxruntime {precision}", "onnxruntime", precision,
                   ort_runner(built["cpu", precision], feed, threads), gflops=gflops)
             for precision in ("fp32", "int8")]
    for key, precision, hint in (("openvino fp32", "fp32", "f32"),
                                 ("openvino fp32, default precision", "fp32", None),
                                 ("openvino int8", "int8", "f32"),
                                 ("openvino int8, float ops bf16", "int8 bf16", "bf16")):
        run, computes = openvino_runner(built["openvino", precision], feed, threads, hint)
        items.append(Timed("paper", key, "openvino", computes, run, gflops=gflops))
    return items


def attend_items(work_dir: Path, threads: int, channels: int, size: int) -> list[Timed]:
    """Export each attend-conv variant to ONNX and time it on ONNX Runtime and OpenVINO."""
    variants = pa.attend_variants(
        pa.random_attend_conv(channels, ATTEND_OUTPUTS, ATTEND_ANCHORS), float(ATTEND_STRIDE))
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, channels, size, size, generator=generator)
    boxes = pa._random_boxes(size, ATTEND_STRIDE, ATTEND_ANCHORS, generator)
    feed = {"features": features.numpy(), "boxes": boxes.numpy()}
    items: list[Timed] = []
    for index, (name, module) in enumerate(variants.items()):
        path = pa.export_variant(module, features, boxes, work_dir / f"attend{index}.onnx")
        items.append(Timed("attend", name, "onnxruntime", "fp32",
                           ort_runner(path, feed, threads)))
        run, computes = openvino_runner(path, feed, threads, "f32")
        items.append(Timed("attend", name, "openvino", computes, run))
    return items


def _gops(item: Timed) -> float | None:
    return None if item.gflops is None else item.gflops / (item.p50 / 1000.0)


def results(items: Sequence[Timed]) -> dict[str, list[dict]]:
    """The figures of every section as JSON-ready rows."""
    by_key = {(i.section, i.key, i.runtime): i for i in items}
    zoo = [{"model": i.key, "backend": i.runtime, "precision": i.precision,
            "runtime_p50_ms": i.p50,
            "detect_p50_ms": statistics.median(i.detect_ms) if i.detect_ms else None,
            "detect_over_runtime": statistics.median(i.detect_ms) / i.p50 if i.detect_ms
            else None,
            "gflops": i.gflops, "gops": _gops(i)} for i in items if i.section == "zoo"]
    paper = []
    for i in (i for i in items if i.section == "paper"):
        fp32 = by_key["paper", f"{i.runtime} fp32", i.runtime]
        paper.append({"model": i.key, "runtime": i.runtime, "computes": i.precision,
                      "p50_ms": i.p50, "vs_fp32": i.p50 / fp32.p50, "gflops": i.gflops,
                      "gops": _gops(i)})
    attend = []
    for i in (i for i in items if i.section == "attend" and i.runtime == "onnxruntime"):
        ov = by_key["attend", i.key, "openvino"]
        ort_plain = by_key["attend", pa.PLAIN_CONV, "onnxruntime"]
        ov_plain = by_key["attend", pa.PLAIN_CONV, "openvino"]
        attend.append({"variant": i.key, "onnxruntime_ms": i.p50, "openvino_ms": ov.p50,
                       "onnxruntime_vs_plain": i.p50 / ort_plain.p50,
                       "openvino_vs_plain": ov.p50 / ov_plain.p50})
    return {"zoo": zoo, "int8_vs_fp32": int8_vs_fp32(items), "paper_width": paper,
            "attend": attend}


def int8_vs_fp32(items: Sequence[Timed]) -> list[dict]:
    """Each INT8 zoo model's runtime against the fp32 zoo model built from the same source
    checkpoint, on the same runtime (and on OpenVINO also against its default precision)."""
    zoo = [i for i in items if i.section == "zoo" and i.checkpoint is not None]
    fp32 = {(i.checkpoint, i.runtime): i for i in zoo if i.precision != "int8"}
    rows = []
    for item in (i for i in zoo if i.precision == "int8"):
        for runtime in (item.runtime, "openvino default") if item.runtime == "openvino" \
                else (item.runtime,):
            reference = fp32.get((item.checkpoint, runtime))
            if reference is not None:
                rows.append({"int8": item.key, "runtime": item.runtime, "int8_ms": item.p50,
                             "fp32": reference.key, "fp32_runtime": runtime,
                             "fp32_computes": reference.precision, "fp32_ms": reference.p50,
                             "speedup": reference.p50 / item.p50})
    return rows


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            cell.ljust(width) if c == 0 else cell.rjust(width)
            for c, (cell, width) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(report: dict) -> None:
    settings = report["settings"]
    print(f"edgedet speed: {settings['rounds']} interleaved rounds x {settings['calls']} calls "
          f"(after {settings['warmup']} warm-up calls), {settings['threads']} threads, p50")
    print(", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(f"\n## Zoo models ({FRAME_SIZE[0]}x{FRAME_SIZE[1]} synthetic frame)\n")
    print(_markdown(
        ["model", "backend", "precision", "runtime ms", "detect ms", "detect/runtime",
         "GFLOPs", "GOPS"],
        [[r["model"], r["backend"], r["precision"], _num(r["runtime_p50_ms"], 2),
          _num(r["detect_p50_ms"], 2), _num(r["detect_over_runtime"], 2), _num(r["gflops"], 2),
          _num(r["gops"])] for r in report["zoo"]]))
    for note in report["notes"]:
        print(f"\nnot timed: {note}")
    if report["int8_vs_fp32"]:
        print("\nINT8 zoo models against the fp32 zoo model of the same checkpoint (runtime "
              "only; speed-up = fp32 ms / INT8 ms):\n")
        print(_markdown(
            ["INT8 model", "runtime", "INT8 ms", "fp32 on", "fp32 computes", "fp32 ms",
             "speed-up"],
            [[r["int8"], r["runtime"], _num(r["int8_ms"], 2), r["fp32_runtime"],
              r["fp32_computes"], _num(r["fp32_ms"], 2), _num(r["speedup"], 2)]
             for r in report["int8_vs_fp32"]]))
    if report["paper_width"]:
        print(f"\n## Paper-width PASSD-MobileNet, {PAPER_CLASSES} classes, {PAPER_SIZE}x"
              f"{PAPER_SIZE} (random weights: speed only, no accuracy)\n")
        print(_markdown(
            ["model", "computes", "ms", "vs fp32", "GFLOPs", "GOPS"],
            [[r["model"], r["computes"], _num(r["p50_ms"], 2), _num(r["vs_fp32"], 2),
              _num(r["gflops"], 2), _num(r["gops"])] for r in report["paper_width"]]))
        print(f"\nopenvino int8 vs openvino fp32 at the default precision (ms / ms): float "
              f"ops f32 {report['openvino_int8_vs_default']:.2f}, float ops bf16 "
              f"{report['openvino_int8_bf16_vs_default']:.2f}")
    a = report["settings"]["attend"]
    print(f"\n## Attend stage: {a['channels']} ch -> {ATTEND_ANCHORS}x{ATTEND_OUTPUTS}, "
          f"{a['size']}x{a['size']} map, fp32 (vs plain: ms / plain 3x3 conv ms)\n")
    print(_markdown(
        ["variant", "ORT ms", "ORT vs plain", "OV ms", "OV vs plain"],
        [[r["variant"], _num(r["onnxruntime_ms"], 2), _num(r["onnxruntime_vs_plain"], 2),
          _num(r["openvino_ms"], 2), _num(r["openvino_vs_plain"], 2)]
         for r in report["attend"]]))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per item per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per item first")
    parser.add_argument("--skip-paper-width", action="store_true",
                        help="leave out section 2 (its INT8 builds take minutes)")
    parser.add_argument("--zoo", nargs="*", metavar="NAME",
                        help="zoo models (or artifact folders, e.g. a quantize/run.py "
                             "output) to time (default: every zoo model; none with an empty "
                             "list)")
    parser.add_argument("--attend-channels", type=int, default=256,
                        help="attend stage input channels (default: the paper's 256)")
    parser.add_argument("--attend-size", type=int, default=40,
                        help="attend stage map side (default: 40, PASSD's P3 at 320)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if min(args.threads, args.rounds, args.calls, args.attend_channels, args.attend_size) < 1 \
            or args.warmup < 0:
        parser.error("--threads, --rounds, --calls and the attend sizes must be >= 1, "
                     "--warmup >= 0")
    names = list_models() if args.zoo is None else args.zoo

    with tempfile.TemporaryDirectory(prefix="edgedet-speed-") as tmp, \
            contextlib.redirect_stdout(sys.stderr):  # the builders' progress bars
        work_dir = Path(tmp)
        _progress(f"loading {len(names)} zoo models")
        items, notes = zoo_items(names, args.threads)
        if not args.skip_paper_width:
            items += paper_width_items(work_dir / "paper", args.threads)
        _progress("exporting the attend-stage variants")
        items += attend_items(work_dir, args.threads, args.attend_channels, args.attend_size)
        _progress(f"timing {len(items)} items: {args.rounds} rounds x {args.calls} calls")
        time_interleaved(items, args.rounds, args.calls, args.warmup)

    report: dict = {
        "settings": {"threads": args.threads, "rounds": args.rounds, "calls": args.calls,
                     "warmup": args.warmup, "frame_size": list(FRAME_SIZE),
                     "attend": {"channels": args.attend_channels, "size": args.attend_size}},
        "versions": library_versions(),
        **results(items),
        "notes": notes,
    }
    if report["paper_width"]:
        ov = {r["model"]: r["p50_ms"] for r in report["paper_width"]}
        default = ov["openvino fp32, default precision"]
        report["openvino_int8_vs_default"] = ov["openvino int8"] / default
        report["openvino_int8_bf16_vs_default"] = ov["openvino int8, float ops bf16"] / default
    if args.json:
        print(json.dumps(report))
    else:
        print_tables(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
