"""Every speed figure of the project, from one interleaved timing run.

    python benchmarks/speed.py [--threads 2] [--rounds 20] [--calls 3] [--warmup 3]
        [--skip-paper-width] [--zoo NAME ...] [--attend-channels 256] [--attend-size 40]
        [--no-probe] [--json]

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
   target's sampler and attend tail, ``export_onnx``, ``Target.build``: QDQ INT8 by
   ``quantize_onnx`` for ONNX Runtime, timed with the attend tail after it, NNCF INT8 IR
   by ``quantize_openvino``, both with the default keep-float scope and 8 random
   calibration inputs; the IR a second time with its float ops in bf16 except the sampling
   coordinates, ``--float-precision bf16``). OpenVINO runs as the SDK
   runs it (``INFERENCE_PRECISION_HINT`` f32, or bf16 for that second IR), plus once at the
   CPU plugin's default precision (bf16 on CPUs that have it). *computes* is the precision
   OpenVINO reports it computes float ops in; *vs fp32* compares with the same runtime's fp32
   model.
3. Attend stage: the export variants of PASSD's P&A attend conv (the classes of
   ``benchmarks/pa_attend_conv.py``) at the paper's largest level (256 channels, 3 anchors x
   81 outputs, 40x40 map), fp32, against a plain 3x3 conv of the same size; each variant's
   outputs written into buffers reused across calls, and the one variant that ends outside
   the runtime (the cpu target's attend tail: the tap sum in the SDK) timed with that step.
   The headline takes the variant each target ships (``pa_attend_conv.shipped_variant``).

Last, the headline figures (issue 15's targets) over all calls and apart for the calls made
while the two CPUs were near each other and while they were far apart: the round trip
between them (``benchmarks/core_latency.py``) is read before the first item and after each
item of each round, and an item's calls count for a placement where the readings on both
sides of them agree. On the 2-core cloud machine the placement changes within minutes and
two-thread INT8 is much slower on distant CPUs, which is most of the spread between runs.

ONNX Runtime sessions and OpenVINO compiled models use the SDK backends' settings
(``--threads`` intra-op threads, one inter-op thread; OpenVINO ``LATENCY`` hint).
``--json`` prints one JSON object instead of the tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from benchmarks import pa_attend_conv as pa
from benchmarks.common.args import require_zoo_models
from benchmarks.common.speed_report import headline, print_tables, results
from benchmarks.common.timing import (
    Timed,
    machine_description,
    openvino_runner,
    ort_runner,
    time_interleaved,
)
from benchmarks.core_latency import FAR_NS, CoreLatencyProbe
from edgedet import Detector
from edgedet.artifact import MANIFEST_NAME, main_model_files, sha256_file
from edgedet.attend_tail import SECTION as ATTEND_TAIL
from edgedet.attend_tail import AttendTail, AttendTailSpec, attend_tail_for
from edgedet.backends import BackendError, available_backends, model_file_for
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.models.checkpoint import build_from_checkpoint
from edgedet.models.passd import passd_mobilenet
from edgedet.models.summary import count_gflops
from edgedet.zoo import list_models, resolve_model
from quantize.export_onnx import export_onnx
from quantize.int8_scope import find_kept_out_nodes, flatten
from quantize.rewrites import rewrite_for_export
from quantize.targets import BuildRequest, target_named

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "onnx", "onnxruntime", "openvino", "nncf", "numpy")
FRAME_SIZE = (640, 480)
PAPER_SIZE, PAPER_CLASSES, CALIBRATION_INPUTS = 320, 80, 8
ATTEND_OUTPUTS, ATTEND_ANCHORS, ATTEND_STRIDE = 81, 3, 8


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def _finished(run: Callable[[], Any], finish: Callable[[dict], dict]) -> Callable[[], dict]:
    """``run`` (an OpenVINO request's call, outputs by port) followed by ``finish`` of its
    outputs by name."""
    def call() -> dict:
        outputs = run()
        return finish({next(iter(port.get_names())): np.asarray(value)
                       for port, value in outputs.items()})
    return call


def zoo_items(names: Sequence[str], threads: int) -> tuple[list[Timed], list[str]]:
    """Each zoo model on each installed backend that reads it; notes on those that failed."""
    frame = SyntheticScenes(1, seed=0, config=SyntheticConfig(image_size=FRAME_SIZE))[0].image
    items: list[Timed] = []
    notes: list[str] = []
    gflops_by_checkpoint: dict[str, float | None] = {}
    for name in names:
        directory = resolve_model(name)
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
                                                threads, None, reuse_outputs=True)
                # The cpu target's PASSD hands over its attend tables: the tail runs after it,
                # as in every runtime-only timing.
                tail = attend_tail_for(manifest, detector.backend.output_names, threads)
                if tail is not None:
                    run = _finished(run, tail)
                items.append(Timed("zoo", name, "openvino default", computes, run,
                                   gflops=gflops_by_checkpoint[checkpoint],
                                   checkpoint=checkpoint))
    return items, notes


@dataclass(frozen=True)
class BuiltFile:
    """A model file ``build_for_targets`` made, and what the SDK runs on its outputs after
    the runtime (``finish``: the cpu target's PASSD attend tail, ``edgedet.attend_tail``;
    None for a self-contained model): a timed call of the model includes it, as
    ``Detector.runtime_call`` does."""

    path: Path
    finish: Callable[[dict], dict] | None = None


def build_for_targets(model: nn.Module, size: tuple[int, int], work_dir: Path,
                      calibration: Sequence[np.ndarray], label: str,
                      precisions: Sequence[str] = ("fp32", "int8"),
                      float_precisions: Sequence[str] = ("f32",),
                      targets: Sequence[str] = ("cpu", "openvino"),
                      keep_float: Sequence[str] | None = None,
                      threads: int | None = None,
                      ) -> dict[tuple[str, str], BuiltFile]:
    """``model`` built as the ``cpu`` and ``openvino`` targets (or ``targets``) build it
    (their sampler, each precision's export form (``Target.export_options``), their default
    keep-float scope or the ``keep_float`` categories, ``Target.build``) for each precision,
    in ``work_dir``: ``{(target,
    precision): BuiltFile}`` (an attend tail runs on ``threads``). INT8 ranges come from
    ``calibration``. INT8 is built once per float precision of ``float_precisions`` the
    target offers, keyed ``int8`` (f32) and e.g. ``int8 bf16``."""
    built: dict[tuple[str, str], BuiltFile] = {}
    for target_name in targets:
        target = target_named(target_name)
        target_dir = work_dir / target_name
        scope = target.default_keep_float if keep_float is None else tuple(keep_float)
        exports: dict[tuple, tuple[nn.Module, Path, tuple[str, ...]]] = {}
        for precision in precisions:
            # The export form the target builds this precision from (its INT8 form may
            # differ: Target.export_options), with the float scope found on that graph.
            options = target.export_options(precision, scope)
            key_options = tuple(sorted(options.items()))
            if key_options not in exports:
                rewritten = rewrite_for_export(model, target.sampler, **options)
                path = export_onnx(rewritten, target_dir / f"form{len(exports)}.onnx", size)
                exports[key_options] = (rewritten, path, tuple(flatten(
                    find_kept_out_nodes(onnx.load(str(path)), scope))))
            rewritten, onnx_fp32, keep_float_nodes = exports[key_options]
            wanted = [f for f in float_precisions if f in target.float_precisions]
            for float_precision in wanted if precision == "int8" else ["f32"]:
                key = precision if float_precision == "f32" else f"{precision} {float_precision}"
                _progress(f"building {label}: {target_name} {key}")
                request = BuildRequest(precision, onnx_fp32, rewritten, size,
                                       target_dir / key.replace(" ", "_"),
                                       calibration if precision == "int8" else None,
                                       keep_float_nodes, float_precision=float_precision)
                result = target.build(request)
                section = result.manifest_extra.get(ATTEND_TAIL)
                anchors = rewritten.anchor_spec(size)
                finish = None if section is None else AttendTail(AttendTailSpec.from_section(
                    section, anchors.feature_sizes), threads, anchors.generate())
                built[target_name, key] = BuiltFile(
                    next(path for name, path in result.files.items()
                         if name.endswith((".onnx", ".xml"))), finish)
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
                              float_precisions=("f32", "bf16"), threads=threads)
    feed = {"images": calibration[0]}
    items = [Timed("paper", f"onnxruntime {precision}", "onnxruntime", precision,
                   ort_runner(built["cpu", precision].path, feed, threads,
                              finish=built["cpu", precision].finish), gflops=gflops)
             for precision in ("fp32", "int8")]
    for key, precision, hint in (("openvino fp32", "fp32", "f32"),
                                 ("openvino fp32, default precision", "fp32", None),
                                 ("openvino int8", "int8", "f32"),
                                 ("openvino int8, float ops bf16", "int8 bf16", "bf16")):
        run, computes = openvino_runner(built["openvino", precision].path, feed, threads, hint)
        items.append(Timed("paper", key, "openvino", computes, run, gflops=gflops))
    return items


def attend_items(work_dir: Path, threads: int, channels: int, size: int) -> list[Timed]:
    """Export each attend-conv variant to ONNX and time it on ONNX Runtime and OpenVINO."""
    variants = pa.attend_variants(
        pa.random_attend_conv(channels, ATTEND_OUTPUTS, ATTEND_ANCHORS), float(ATTEND_STRIDE),
        threads)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, channels, size, size, generator=generator)
    boxes = pa._random_boxes(size, ATTEND_STRIDE, ATTEND_ANCHORS, generator)
    feed = {"features": features.numpy(), "boxes": boxes.numpy()}
    items: list[Timed] = []
    for index, (name, module) in enumerate(variants.items()):
        path = pa.export_variant(module, features, boxes, work_dir / f"attend{index}.onnx")
        # A variant that finishes outside the runtime (its tap sum in the SDK's kernel) is
        # timed with that step; every variant's outputs land in buffers reused across calls.
        ort_run = ort_runner(path, feed, threads, reuse_outputs=True)
        items.append(Timed("attend", name, "onnxruntime", "fp32",
                           lambda run=ort_run, m=module: pa.head_output(m, run())))
        run, computes = openvino_runner(pa.openvino_model_path(module, path), feed, threads,
                                        "f32", reuse_outputs=True)
        items.append(Timed("attend", name, "openvino", computes,
                           lambda run=run, m=module: pa.head_output(m, run())))
    return items


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
    parser.add_argument("--no-probe", action="store_true",
                        help="do not read the round trip between the CPUs between items "
                             "(benchmarks/core_latency.py; about 1 ms each)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if min(args.threads, args.rounds, args.calls, args.attend_channels, args.attend_size) < 1 \
            or args.warmup < 0:
        parser.error("--threads, --rounds, --calls and the attend sizes must be >= 1, "
                     "--warmup >= 0")
    names = require_zoo_models(parser, list_models() if args.zoo is None else args.zoo)

    with (contextlib.nullcontext() if args.no_probe else CoreLatencyProbe()) as probe, \
            tempfile.TemporaryDirectory(prefix="edgedet-speed-") as tmp, \
            contextlib.redirect_stdout(sys.stderr):  # the builders' progress bars
        work_dir = Path(tmp)
        _progress(f"loading {len(names)} zoo models")
        items, notes = zoo_items(names, args.threads)
        if not args.skip_paper_width:
            items += paper_width_items(work_dir / "paper", args.threads)
        _progress("exporting the attend-stage variants")
        items += attend_items(work_dir, args.threads, args.attend_channels, args.attend_size)
        _progress(f"timing {len(items)} items: {args.rounds} rounds x {args.calls} calls")
        readings = time_interleaved(items, args.rounds, args.calls, args.warmup,
                                    probe if probe is not None and probe.available else None)

    report: dict = {
        "settings": {"threads": args.threads, "rounds": args.rounds, "calls": args.calls,
                     "warmup": args.warmup, "frame_size": list(FRAME_SIZE),
                     "attend": {"channels": args.attend_channels, "size": args.attend_size}},
        "versions": library_versions(),
        "machine": machine_description(),
        **results(items),
        "notes": notes,
    }
    report["headline"] = headline(report)
    if readings:
        labels = [label for item in items for label in item.runtime_where]
        by_placement = {where: results(items, where) for where in ("near", "far")}
        for figures in by_placement.values():
            figures["headline"] = headline(figures)
        report["placement"] = {
            "readings_ns": readings, "far_from_ns": FAR_NS,
            "share_of_calls": {where: labels.count(where) / len(labels) for where in by_placement},
            **by_placement}
    if args.json:
        print(json.dumps(report))
    else:
        print_tables(report, FRAME_SIZE, (PAPER_CLASSES, PAPER_SIZE),
                     (ATTEND_ANCHORS, ATTEND_OUTPUTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
