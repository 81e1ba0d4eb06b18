"""What the openvino target gains by reading and summing the P&A samples in INT8.

    python benchmarks/openvino_sampling_reads.py [--threads 2] [--rounds 20] [--classes 80 12]
        [--work-dir DIR]

The attend stage's rewrite (``quantize.rewrites``, the ``gather`` sampler the openvino target
uses) projects each pyramid cell to a table of ``anchors x taps x outputs`` values,
``Gather`` s four corner rows per tap and sums them with their bilinear weights in a small
``MatMul``. The openvino target lets this "sampling_reads" scope (``quantize.int8_scope``)
into INT8 while the sampling coordinates stay float: NNCF then quantizes each table and the
bilinear weights, and the CPU plugin gathers int8 rows and runs the tap sum as an INT8
``MatMul``. This benchmark builds PASSD-MobileNet at the paper's width and 320x320 (random
weights: speed only) for each ``--classes`` (80: COCO, the rows 85 values wide; 12: the
zoo's classes) as the openvino target builds it, INT8 with bf16 float ops, twice: with the
target's scope and with the sampling reads kept in float (``--keep-float
sampling,sampling_reads,attention,masks``, the scope before 2026-12-04).

One interleaved run prints each model's median latency, its ratio to the fp32 model at
OpenVINO's default precision (bf16 here), and from OpenVINO's per-op profile the kernels
the ``Gather`` s and the tap-sum ``MatMul`` s ran (``..._i8`` / ``..._I8``: INT8) with their
share of the time. It needs ``edgedet[quantize]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from edgedet.vendor_telemetry import quiet_vendor_telemetry

quiet_vendor_telemetry()

import openvino as ov

from benchmarks.common.args import require_at_least
from benchmarks.speed import CALIBRATION_INPUTS, PAPER_SIZE, build_for_targets, random_inputs
from edgedet.models.passd import passd_mobilenet
from quantize.int8_scope import DEFAULT_KEEP_FLOAT

_LAYOUT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")


def tap_sums(model: ov.Model) -> list[str]:
    """Friendly names of the tap-sum ``MatMul`` s: those whose samples operand comes from a
    ``Gather`` through layout ops (and NNCF's FakeQuantize, where it put one there)."""
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        source = op.input_value(1).get_node()
        while source.get_type_name() in (*_LAYOUT, "FakeQuantize"):
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Gather":
            found.append(op.get_friendly_name())
    return found


def read_kernels(request: ov.InferRequest, tap_sum_names: list[str]
                 ) -> dict[str, tuple[set[str], float]]:
    """``{"Gather" | "tap sum": (kernels run, share of the profiled time)}`` of a compiled
    model's last inference (compiled with ``PERF_COUNT``). Every Gather counts, so the small
    shape Gathers show too; the sampling ones dominate the time."""
    kernels: dict[str, set[str]] = defaultdict(set)
    times: dict[str, float] = defaultdict(float)
    total = 0.0
    wanted = set(tap_sum_names)
    for info in request.profiling_info:
        seconds = info.real_time.total_seconds()
        total += seconds
        if info.node_type == "Gather":
            key = "Gather"
        elif info.node_type == "MatMul" and info.node_name in wanted:
            key = "tap sum"
        else:
            continue
        if seconds > 0:  # a kernel folded away reports 0 time and its planned type
            kernels[key].add(info.exec_type)
        times[key] += seconds
    return {key: (kernels[key], times[key] / max(total, 1e-12)) for key in ("Gather", "tap sum")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--classes", type=int, nargs="+", default=[80, 12],
                        help="class counts to build (default: 80 (COCO) and 12 (the zoo))")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the built models go (default: a temporary folder)")
    args = parser.parse_args(argv)
    require_at_least(parser, 1, threads=args.threads, rounds=args.rounds,
                     classes=min(args.classes))
    size = (PAPER_SIZE, PAPER_SIZE)
    calibration = random_inputs(size, CALIBRATION_INPUTS)
    core = ov.Core()
    requests: dict[str, ov.InferRequest] = {}
    taps: dict[str, list[str]] = {}
    float_reads = tuple(DEFAULT_KEEP_FLOAT)  # the common default: the reads in float
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or Path(tmp)
        for classes in args.classes:
            torch.manual_seed(0)
            model = passd_mobilenet(num_classes=classes, img_size=PAPER_SIZE).eval()
            for label, scope in (("reads INT8 (the target's scope)", None),
                                 ("reads float", float_reads)):
                built = build_for_targets(
                    model, size, work_dir / f"{classes}_{'float' if scope else 'int8'}",
                    calibration, f"{classes} classes, {label}",
                    precisions=("fp32", "int8") if scope is None else ("int8",),
                    float_precisions=("bf16",), targets=("openvino",), keep_float=scope)
                cases = [(f"{classes} classes: INT8, {label}", built["openvino", "int8 bf16"].path,
                          "bf16")]
                if scope is None:
                    cases.insert(0, (f"{classes} classes: fp32, OpenVINO default precision",
                                     built["openvino", "fp32"].path, None))
                for name, path, hint in cases:
                    ov_model = core.read_model(str(path))
                    config: dict[str, object] = {"INFERENCE_NUM_THREADS": args.threads,
                                                 "PERFORMANCE_HINT": "LATENCY",
                                                 "PERF_COUNT": True}
                    if hint is not None:
                        config["INFERENCE_PRECISION_HINT"] = hint
                    requests[name] = core.compile_model(ov_model, "CPU",
                                                        config).create_infer_request()
                    taps[name] = tap_sums(ov_model)
    images = calibration[0]
    times: dict[str, list[float]] = {name: [] for name in requests}
    for request in requests.values():
        for _ in range(3):
            request.infer({0: images})
    for _ in range(args.rounds):
        for name, request in requests.items():
            request.infer({0: images})  # the first call after a switch, untimed
            for _ in range(2):
                start = time.perf_counter()
                request.infer({0: images})
                times[name].append((time.perf_counter() - start) * 1000.0)
    print(f"PASSD-MobileNet, paper width, {PAPER_SIZE}x{PAPER_SIZE}, openvino {ov.__version__}, "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds x 2 calls")
    print("| model | ms | speed-up vs the fp32 model at the default (bf16) | Gather kernels "
          "(share) | tap-sum kernels (share) |")
    print("|---|---|---|---|---|")
    for name, request in requests.items():
        ms = statistics.median(times[name])
        default = statistics.median(times[f"{name.split(':')[0]}: fp32, OpenVINO default "
                                          "precision"])
        kernels = read_kernels(request, taps[name])
        cells = [f"{', '.join(sorted(k)) or '-'} ({100 * share:.0f}%)"
                 for k, share in kernels.values()]
        print(f"| {name} | {ms:.2f} | {default / ms:.2f}x | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
