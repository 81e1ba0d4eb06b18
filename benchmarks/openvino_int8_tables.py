"""Would INT8 sampling tables speed up OpenVINO's INT8 PASSD? A measured "no" (about 1-4%).

    python benchmarks/openvino_int8_tables.py [--threads 2] [--rounds 20] [--work-dir DIR]

The attend stage's rewrite (``quantize.rewrites.pa_head``, the ``gather`` sampler that the
openvino target uses) projects each pyramid cell to a table of ``anchors x taps x outputs``
values, then ``Gather`` s four corner rows per tap. The openvino target keeps the table in
float (the ``sampling`` scope of ``quantize.int8_scope``). This benchmark builds the
paper-width PASSD-MobileNet (80 classes, 320x320, random weights: speed only) as the openvino
target builds it, INT8 with float ops in f32 and in bf16 (``--float-precision bf16``), then
adds a per-tensor u8 ``FakeQuantize`` on every table (between the projection ``MatMul`` and
the reshapes before its ``Gather``; range = min/max over the calibration inputs, as PTQ would
set it), so that the projection writes INT8 and the ``Gather`` moves a quarter of the bytes.

One interleaved run prints each model's median latency, its ratio to the fp32 model at
OpenVINO's default precision (bf16 here) and at f32, and, from OpenVINO's per-op profile of
the INT8 models, the share of the ``Gather`` kernels. It needs ``edgedet[quantize]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from edgedet.vendor_telemetry import quiet_vendor_telemetry

quiet_vendor_telemetry()

import openvino as ov
from openvino import opset13 as ops

from benchmarks.speed import (
    CALIBRATION_INPUTS,
    PAPER_CLASSES,
    PAPER_SIZE,
    build_for_targets,
    random_inputs,
)
from edgedet.models.passd import passd_mobilenet

_LAYOUT = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")


def table_projections(model: ov.Model) -> list[ov.Node]:
    """The ``MatMul`` s whose output reaches a ``Gather``'s data input through layout ops
    only: the projections that write the sampling tables."""
    found: dict[str, ov.Node] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Gather":
            continue
        source = op.input_value(0).get_node()
        while source.get_type_name() in _LAYOUT:
            source = source.input_value(0).get_node()
        if source.get_type_name() == "MatMul":
            found[source.get_friendly_name()] = source
    return list(found.values())


def quantize_tables(core: ov.Core, model: ov.Model,
                    calibration: list[np.ndarray] | list[dict[str, np.ndarray]]) -> int:
    """Put a u8 ``FakeQuantize`` after every table projection of ``model`` (in place), its
    range the min/max over ``calibration`` (the images of a one-input model, or feeds by
    input name); returns how many tables."""
    outputs = [node.output(0) for node in table_projections(model)]
    probe = ov.Model([ops.result(o) for o in outputs], model.get_parameters())
    request = core.compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
                                 ).create_infer_request()
    low, high = [np.inf] * len(outputs), [-np.inf] * len(outputs)
    for images in calibration:
        results = request.infer(images if isinstance(images, dict) else {0: images})
        for index in range(len(outputs)):
            values = np.asarray(results[index])
            low[index] = min(low[index], float(values.min()))
            high[index] = max(high[index], float(values.max()))
    for index, output in enumerate(outputs):
        lo, hi = low[index], high[index]
        if hi - lo < 1e-3:  # random weights can leave a table near 0; any range times alike
            lo, hi = -1.0, 1.0
        consumers = list(output.get_target_inputs())
        bounds = [ops.constant(np.float32(v)) for v in (lo, hi, lo, hi)]
        fake_quantize = ops.fake_quantize(output, *bounds, 256)
        for consumer in consumers:
            consumer.replace_source_output(fake_quantize.output(0))
    return len(outputs)


def gather_share(compiled: ov.CompiledModel, images: np.ndarray, calls: int = 10) -> float:
    """The fraction of the profiled time spent in ``Gather`` kernels (needs ``PERF_COUNT``)."""
    request = compiled.create_infer_request()
    by_type: dict[str, float] = defaultdict(float)
    for _ in range(calls):
        request.infer({0: images})
        for info in request.profiling_info:
            by_type[info.node_type] += info.real_time.total_seconds()
    return by_type["Gather"] / max(sum(by_type.values()), 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the built models go (default: a temporary folder)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = passd_mobilenet(num_classes=PAPER_CLASSES, img_size=PAPER_SIZE).eval()
    size = (PAPER_SIZE, PAPER_SIZE)
    calibration = random_inputs(size, CALIBRATION_INPUTS)
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or Path(tmp)
        built = build_for_targets(model, size, work_dir, calibration, "the paper-width model",
                                  float_precisions=("f32", "bf16"))
        core = ov.Core()
        cases: list[tuple[str, Path, str | None, bool]] = [
            ("fp32, OpenVINO default precision", built["openvino", "fp32"], None, False),
            ("fp32, f32", built["openvino", "fp32"], "f32", False),
            ("INT8, float ops f32", built["openvino", "int8"], "f32", False),
            ("INT8, float ops f32, INT8 tables", built["openvino", "int8"], "f32", True),
            ("INT8, float ops bf16", built["openvino", "int8 bf16"], "bf16", False),
            ("INT8, float ops bf16, INT8 tables", built["openvino", "int8 bf16"], "bf16", True),
        ]
        requests, shares = {}, {}
        for name, path, hint, int8_tables in cases:
            ov_model = core.read_model(str(path))
            if int8_tables:
                quantize_tables(core, ov_model, calibration)
            config: dict[str, object] = {"INFERENCE_NUM_THREADS": args.threads,
                                         "PERFORMANCE_HINT": "LATENCY"}
            if hint is not None:
                config["INFERENCE_PRECISION_HINT"] = hint
            requests[name] = core.compile_model(ov_model, "CPU", config).create_infer_request()
            if name.startswith("INT8"):
                shares[name] = gather_share(core.compile_model(
                    ov_model, "CPU", {**config, "PERF_COUNT": True}), calibration[0])
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
    medians = {name: statistics.median(values) for name, values in times.items()}
    default = medians["fp32, OpenVINO default precision"]
    f32 = medians["fp32, f32"]
    print(f"paper-width PASSD-MobileNet, openvino {ov.__version__}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds x 2 calls")
    print("| model | ms | speed-up vs default (bf16) | vs f32 | Gather share (profile) |")
    print("|---|---|---|---|---|")
    for name, ms in medians.items():
        share = f"{100 * shares[name]:.0f}%" if name in shares else "-"
        print(f"| {name} | {ms:.2f} | {default / ms:.2f}x | {f32 / ms:.2f}x | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
