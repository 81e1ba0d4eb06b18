"""How an INT8 convolution's speed on OpenVINO depends on its width: why pruning pays less on AMX.

    python benchmarks/int8_conv_widths.py [--widths 64,96,128,160,192,256] [--size 40]
        [--convs 4] [--threads 2] [--rounds 30]

For each width C, one IR of ``--convs`` 3x3 convolutions C -> C at ``--size`` x ``--size``,
each fake-quantized on its input (u8) and weights (i8), so that OpenVINO's CPU plugin runs
them as INT8 convolutions (as an NNCF IR); ReLU between them. Timed interleaved (rounds over
all widths, p50), printed with the kernel OpenVINO chose and the achieved GOPS. Pruning
shrinks the widths: where GOPS fall with the width, latency shrinks less than the FLOPs. Run
it once as is and once with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` in the environment to
compare a CPU's AMX tiles with its AVX-512 VNNI kernels (OpenVINO reads the cap at start;
the machine line says whether it was set). Random weights: speed only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from benchmarks.common.args import require_at_least
from benchmarks.common.timing import machine_description


def conv_stack(channels: int, size: int, convs: int) -> Any:
    """An ``openvino.Model`` of ``convs`` fake-quantized 3x3 convolutions ``channels ->
    channels`` with ReLU, input ``x (1, channels, size, size)`` in [0, 4]."""
    import openvino as ov
    import openvino.opset8 as ops

    def fake_quantize(node: Any, low: float, high: float, levels: int) -> Any:
        low_c, high_c = ops.constant(np.float32(low)), ops.constant(np.float32(high))
        return ops.fake_quantize(node, low_c, high_c, low_c, high_c, levels)

    image = ops.parameter([1, channels, size, size], np.float32, name="x")
    node = fake_quantize(image, 0.0, 4.0, 256)
    rng = np.random.default_rng(0)
    for _ in range(convs):
        weights = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
        node = ops.convolution(node, fake_quantize(ops.constant(weights), -0.2, 0.2, 255),
                               [1, 1], [1, 1], [1, 1], [1, 1])
        node = fake_quantize(ops.relu(node), 0.0, 4.0, 256)
    return ov.Model([node], [image])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="64,96,128,160,192,256",
                        help="comma-separated channel counts (default: 64,96,128,160,192,256)")
    parser.add_argument("--size", type=int, default=40, help="feature map side (default 40)")
    parser.add_argument("--convs", type=int, default=4, help="convolutions per IR (default 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        parser.error(f"--widths takes comma-separated integers, got {args.widths!r}")
    require_at_least(parser, 1, size=args.size, convs=args.convs, threads=args.threads,
                     rounds=args.rounds, **{"widths": min(widths)})

    import openvino as ov

    core = ov.Core()
    calls: dict[int, Callable[[], object]] = {}
    kernels: dict[int, str] = {}
    config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}
    for width in widths:
        model = conv_stack(width, args.size, args.convs)
        feed = {"x": np.random.default_rng(width).random(
            (1, width, args.size, args.size), dtype=np.float32) * 4}
        # The kernels from a compile with the profiler on; the timing from one without it.
        profiled = core.compile_model(model, "CPU", {**config, "PERF_COUNT": True})
        probe = profiled.create_infer_request()
        probe.infer(feed)
        kernels[width] = ", ".join(sorted({info.exec_type for info in probe.profiling_info
                                           if info.node_type == "Convolution"}))
        request = core.compile_model(model, "CPU", config).create_infer_request()
        calls[width] = lambda request=request, feed=feed: request.infer(
            feed, share_inputs=True, share_outputs=True)
    times: dict[int, list[float]] = {width: [] for width in widths}
    for call in calls.values():
        call()
    for _ in range(args.rounds):
        for width, call in calls.items():
            call()  # untimed: the switch from the previous width
            start = time.perf_counter()
            call()
            call()
            times[width].append((time.perf_counter() - start) / 2)
    print(f"{args.convs} INT8 3x3 convs C -> C at {args.size}x{args.size}, OpenVINO "
          f"{ov.__version__}, {args.threads} threads, p50 of {args.rounds} interleaved rounds; "
          f"{machine_description()}")
    print("| channels | ms | GOPS | kernel |")
    print("|---|---|---|---|")
    for width in widths:
        ms = statistics.median(times[width]) * 1000
        gops = 2 * args.convs * width * width * 9 * args.size**2 / (ms / 1000) / 1e9
        print(f"| {width} | {ms:.3f} | {gops:.0f} | {kernels[width]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
