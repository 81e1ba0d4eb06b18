"""Speed of the export variants of PASSD's P&A attend conv in ONNX Runtime and OpenVINO.

    python benchmarks/pa_attend_conv.py [--channels 256] [--outputs 81] [--anchors 3]
        [--size 40] [--stride 8] [--threads 2] [--runs 30]

Every variant computes the attend-stage class conv of one pyramid level from the feature map
``(1, C, S, S)`` and the adjusted boxes ``(1, S, S, A, 4)`` (the sampling points are computed
in the graph, as in the exported detector), in fp32, and is compared with the training module
(``BoxOffsetConv2d`` fed by ``box_sampling_points``). A plain 3x3 conv with the same weights
is the speed floor. Prints one table: variant, ORT ms, OpenVINO ms (f32), OpenVINO bf16 ms
(bf16 inference with the sampling coordinates kept f32, as ``--float-precision bf16`` builds
an IR), max |diff| vs the training module (ONNX Runtime's output); then each variant's ratio
to the plain conv per runtime. Each runtime is timed in its own phase (see ``main``). The
rewrite (``quantize.rewrites.pa_head``) has two samplers, "project, then Gather" and
"project, then GridSample"; each target picks one. One variant ends outside the runtime:
"project in the runtime, tap sum in the SDK (attend tail)": the ``cpu`` target's form, in which
the SDK sums the samples after the runtime (``edgedet.attend_tail``, timed with that step).
One is OpenVINO's only: the openvino target's fp32 form, the Gather form's file in which an
OpenVINO graph pass makes each read and its tap sum one ``EmbeddingBagPackedSum``
(``quantize.openvino_embedding_bag``; ONNX Runtime runs the Gather form for it).
Every variant's outputs land in buffers reused across calls (ONNX Runtime's ``IOBinding``,
OpenVINO's own output tensors), as a loop over frames can run a model.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from benchmarks.common.args import require_at_least
from benchmarks.common.timing import bound_ort_call
from benchmarks.pa_attend_rejected import PlanarProjectionThenGridSample, TallMapGridSample
from edgedet.attend_tail import AttendTail, AttendTailSpec, TailLevel
from edgedet.models.pa_head import (
    BoxOffsetConv2d,
    box_sampling_points,
    flatten_head_output,
    sample_box_taps,
)
from quantize.attend_tail import tables_as_matmul
from quantize.export_openvino import export_openvino
from quantize.openvino_embedding_bag import tap_sums_as_embedding_bags
from quantize.openvino_precision import coordinate_ops, mark_precise
from quantize.rewrites.pa_head import (
    PackedBoxOffsetConv,
    planar_sampling_points,
    xy_sampling_points,
)
from quantize.rewrites.sampling import bilinear_tap_sum
from quantize.targets import Target


class TrainingModule(nn.Module):
    """Reference: grid_sample over all input channels, then the matrix product (einsum)."""

    def __init__(self, conv: BoxOffsetConv2d, stride: float) -> None:
        super().__init__()
        self.conv = conv
        self.stride = stride

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> Tensor:
        return self.conv(features, box_sampling_points(boxes_cxcywh, self.stride))


class SampleThenMatmul(nn.Module):
    """grid_sample over all input channels, then one batched MatMul per anchor (no einsum)."""

    def __init__(self, conv: BoxOffsetConv2d, stride: float) -> None:
        super().__init__()
        a, o = conv.num_anchors, conv.out_channels_per_anchor
        self.weight = nn.Parameter(conv.weight.detach().reshape(a, o, -1).clone())  # (A, O, C*T)
        self.bias = nn.Parameter(conv.bias.detach().reshape(1, a, o, 1).clone())
        self.stride = stride

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> Tensor:
        n, _, h, w = features.shape
        taps = sample_box_taps(features, box_sampling_points(boxes_cxcywh, self.stride))
        out = torch.matmul(self.weight, taps) + self.bias  # (N, A, O, H*W)
        return out.reshape(n, -1, h, w)


class GatherThenMatmul(nn.Module):
    """Gather-based sampling of the C-channel input (channels-last), then the matrix product."""

    def __init__(self, conv: BoxOffsetConv2d, stride: float) -> None:
        super().__init__()
        a, o, c = conv.num_anchors, conv.out_channels_per_anchor, conv.in_channels
        t = conv.kernel_size**2
        # Samples come out as (.., A, C) per tap; weight rows ordered (tap, channel).
        weight = conv.weight.detach().reshape(a, o, c, t).permute(0, 3, 2, 1).reshape(a, t * c, o)
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(conv.bias.detach().reshape(a, o).clone())
        self.stride = stride
        self.num_taps = t

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> Tensor:
        n, c, h, w = features.shape
        a, t = self.weight.shape[0], self.num_taps
        points = box_sampling_points(boxes_cxcywh, self.stride)  # (N, A, T, H, W, 2)
        points = points.permute(0, 3, 4, 1, 2, 5).reshape(n, h * w * a * t, 1, 1, 2)
        table = features.reshape(n, c, h * w).transpose(1, 2).reshape(n, h * w, 1, 1, c)
        samples = bilinear_tap_sum(table, points, h, w)  # (N, H*W*A*T, 1, C)
        samples = samples.reshape(n, h * w, a, t * c).transpose(1, 2)  # (N, A, H*W, T*C)
        out = torch.matmul(samples, self.weight) + self.bias[:, None, :]  # (N, A, H*W, O)
        return out.permute(0, 1, 3, 2).reshape(n, -1, h, w)


class ProjectThenGridSample(nn.Module):
    """The ``grid_sample`` sampler of the rewrite: 1x1 conv to A*T*O channels, one GridSample
    of each tap's O-channel map, sum over taps, with the sampling points computed on planes
    (``planar_sampling_points``), as the cpu target exports it. Output ``(N, H*W*A, O)``."""

    def __init__(self, conv: BoxOffsetConv2d, stride: float) -> None:
        super().__init__()
        self.packed = PackedBoxOffsetConv([conv], sampler="grid_sample")
        self.stride = stride

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> Tensor:
        return self.packed(features, planar_sampling_points(boxes_cxcywh, self.stride))[0]


class ProjectThenGather(nn.Module):
    """The ``gather`` sampler of the rewrite: projection (MatMul, channels-last), then Gather of
    4 corners/tap, the points as x / y planes (``xy_sampling_points``), as the openvino
    target exports its fp32 IR, the rows in float32 (its INT8 form with INT8 reads also sums
    a position's anchors in one product).

    Output ``(N, H*W*A, O)`` (the head's flattened layout, which this variant produces
    directly); compared with the reference after the same flattening.
    """

    def __init__(self, conv: BoxOffsetConv2d, stride: float) -> None:
        super().__init__()
        self.packed = PackedBoxOffsetConv([conv], rows_in_float=True)
        self.stride = stride

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> Tensor:
        return self.packed(features, xy_sampling_points(boxes_cxcywh, self.stride))[0]


class ProjectThenEmbeddingBag(ProjectThenGather):
    """The openvino target's fp32 IR: the Gather form's ONNX file, in which OpenVINO's graph
    pass makes the read and its tap sum one ``EmbeddingBagPackedSum``
    (``openvino_as_built``, ``quantize.openvino_embedding_bag``: no gathered rows written in
    between). ONNX Runtime has no such op: its column times the Gather form again."""

    openvino_as_built = staticmethod(tap_sums_as_embedding_bags)


class ProjectThenKernel(nn.Module):
    """The attend tail (the ``cpu`` target's fp32 form): the projection (a ``MatMul`` of the
    channels-last features, ``as_built``) and the planar sampling points in the runtime, the
    tap sum in the SDK's ``AttendTail`` on ``threads`` threads. The runtime's outputs: the
    table ``(N, H, W, A*T*O)``, the points ``(N, A, T, H*W, 2)``; ``finish`` makes the head
    output ``(N, H*W*A, O)``."""

    output_names = ("table", "points")

    def __init__(self, conv: BoxOffsetConv2d, stride: float, threads: int | None = None
                 ) -> None:
        super().__init__()
        self.packed = PackedBoxOffsetConv([conv], tail=True)
        self.stride = stride
        self.threads = threads
        self.tail: AttendTail | None = None  # for the map size of the last forward (static)

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> tuple[Tensor, Tensor]:
        n, _, h, w = features.shape
        a, t = self.packed.num_anchors, self.packed.num_taps
        level = self.tail.spec.levels[0] if self.tail is not None else None
        if level is None or (level.height, level.width) != (int(h), int(w)):
            spec = AttendTailSpec(a, t, (("out", self.packed.split_sizes[0]),),
                                  self.packed.bias.detach().numpy().astype(np.float32),
                                  (TailLevel("table", "points", int(h), int(w)),))
            self.tail = AttendTail(spec, self.threads)
        points = planar_sampling_points(boxes_cxcywh, self.stride).reshape(n, a, t, h * w, 2)
        return self.packed.table(features), points

    @staticmethod
    def as_built(model: onnx.ModelProto) -> None:
        if tables_as_matmul(model, ["table"]) != 1:
            raise RuntimeError("the tail variant's table is not a 1x1 conv's transpose")

    def finish(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """The runtime's ``(table, points)`` -> ``(N, H*W*A, O)``."""
        assert self.tail is not None, "run forward (or export) first"
        table, points = (np.asarray(o) for o in outputs)
        return self.tail({"table": table, "points": points})["out"]


class PlainConv(nn.Module):
    """A 3x3 conv with the same weights at fixed taps: the speed floor, not equivalent.

    Its output is flattened to the head's ``(N, H*W*A, O)`` layout, as a plain conv at the
    same place in the head would be (``flatten_head_output``), and as the shipped forms
    already return it (0.1-0.15 ms on ONNX Runtime; before 2026-12-05 the floor stopped at
    the conv's ``(N, A*O, H, W)``)."""

    def __init__(self, conv: BoxOffsetConv2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.weight.shape[0], conv.kernel_size,
                              padding=conv.kernel_size // 2)
        self.conv.weight.data = conv.weight.detach().clone()
        self.conv.bias.data = conv.bias.detach().clone()
        self.outputs_per_anchor = conv.out_channels_per_anchor

    def forward(self, features: Tensor, boxes_cxcywh: Tensor) -> Tensor:
        return flatten_head_output(self.conv(features), self.outputs_per_anchor)


def _random_boxes(size: int, stride: int, anchors: int, generator: torch.Generator) -> Tensor:
    """Adjusted boxes ``(1, S, S, A, 4)`` cxcywh: centres within half a cell of each cell
    centre (eq. 2), sizes spread around PASSD's 4*stride default boxes."""
    centre = (torch.arange(size, dtype=torch.float32) + 0.5) * stride
    cx = centre.view(1, 1, size, 1).expand(1, size, size, anchors)
    cy = centre.view(1, size, 1, 1).expand(1, size, size, anchors)
    shift = (torch.rand(2, 1, size, size, anchors, generator=generator) - 0.5) * stride
    wh = 4 * stride * torch.exp(torch.randn(2, 1, size, size, anchors, generator=generator) * 0.5)
    return torch.stack([cx + shift[0], cy + shift[1], wh[0], wh[1]], dim=-1)


PLAIN_CONV = "plain 3x3 conv (floor, not equal)"
# Calls per variant per round; the first of them is not timed (see main).
CALLS_PER_TURN = 3


def random_attend_conv(channels: int, outputs: int, anchors: int) -> BoxOffsetConv2d:
    """An attend conv with seeded random weights (speed and equivalence, not accuracy)."""
    torch.manual_seed(0)
    conv = BoxOffsetConv2d(channels, outputs, anchors)
    nn.init.normal_(conv.weight, std=0.05)
    nn.init.normal_(conv.bias, std=0.1)
    return conv


ATTEND_TAIL = "project in the runtime, tap sum in the SDK (attend tail)"
EMBEDDING_BAG = "project, then Gather; OpenVINO: one EmbeddingBagPackedSum (openvino fp32)"


def shipped_variant(target: Target) -> str:
    """The name of the variant ``target``'s fp32 artifacts run (``attend_variants``' keys;
    the stage is timed in fp32)."""
    if target.attend_tail:
        return ATTEND_TAIL
    if target.float_reads_as_embedding_bags and target.sampler == "gather":
        return EMBEDDING_BAG
    return {"grid_sample": "project, then GridSample (sampler grid_sample)",
            "gather": "project, then Gather (sampler gather)"}[target.sampler]


def attend_variants(conv: BoxOffsetConv2d, stride: float, threads: int | None = None
                    ) -> dict[str, nn.Module]:
    """Every export variant of ``conv`` by name, the plain-conv floor (``PLAIN_CONV``) last;
    ``threads``: those of the one variant that computes outside the runtime."""
    return {
        "training module (grid_sample C ch, einsum)": TrainingModule(conv, stride),
        "grid_sample C ch, then MatMul": SampleThenMatmul(conv, stride),
        "Gather C ch, then MatMul": GatherThenMatmul(conv, stride),
        "project, then GridSample (sampler grid_sample)": ProjectThenGridSample(conv, stride),
        "project, then Gather (sampler gather)": ProjectThenGather(conv, stride),
        EMBEDDING_BAG: ProjectThenEmbeddingBag(conv, stride),
        "W @ F, one GridSample, sum (not adopted)": PlanarProjectionThenGridSample(conv, stride),
        "tall stacked map, one GridSample (not adopted)": TallMapGridSample(conv, stride),
        ATTEND_TAIL: ProjectThenKernel(conv, stride, threads),
        PLAIN_CONV: PlainConv(conv),
    }


def head_output(module: nn.Module, outputs: Any) -> np.ndarray:
    """A variant's result from its runtime's outputs (ONNX Runtime's list, OpenVINO's dict,
    in the graph's output order): the one output (``(N, A*O, H, W)`` or ``(N, H*W*A, O)``),
    or what the variant's ``finish`` makes of them outside the runtime."""
    values = list(outputs.values()) if hasattr(outputs, "values") else list(outputs)
    finish = getattr(module, "finish", None)
    return finish(values) if finish is not None else values[0]


def _head_runner(run: Callable[[dict], Any], module: nn.Module
                 ) -> Callable[[dict], np.ndarray]:
    """``run`` (a runtime's call on a feed) followed by ``head_output``."""
    return lambda feed: head_output(module, run(feed))


def export_variant(module: nn.Module, features: Tensor, boxes: Tensor, path: Path) -> Path:
    """``module`` as an fp32 ONNX file with inputs ``features`` and ``boxes`` (a variant that
    ignores the boxes has no ``boxes`` input) and output ``out`` (or the module's
    ``output_names``: a variant that ``finish``-es outside the runtime), rewritten as its
    target builds it where the variant says how (``as_built``)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's shape warnings: shapes are static
        torch.onnx.export(module.eval(), (features, boxes), str(path), dynamo=False,
                          opset_version=17, input_names=["features", "boxes"],
                          output_names=list(getattr(module, "output_names", ("out",))))
    if hasattr(module, "as_built"):
        model = onnx.load(str(path))
        module.as_built(model)
        onnx.save(model, str(path))
    return path


def openvino_model_path(module: nn.Module, onnx_path: Path) -> Path:
    """What OpenVINO runs of ``module``'s exported ``onnx_path``: the file itself, or for a
    variant with an ``openvino_as_built`` pass the IR it makes (beside the file)."""
    as_built = getattr(module, "openvino_as_built", None)
    if as_built is None:
        return onnx_path
    return export_openvino(onnx_path, onnx_path.with_name(onnx_path.stem + "_openvino"),
                           transform=as_built)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--outputs", type=int, default=81, help="outputs per anchor (K+1)")
    parser.add_argument("--anchors", type=int, default=3)
    parser.add_argument("--size", type=int, default=40, help="feature map side")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="rounds")
    args = parser.parse_args(argv)
    require_at_least(parser, 1, channels=args.channels, outputs=args.outputs,
                     anchors=args.anchors, size=args.size, stride=args.stride,
                     threads=args.threads, runs=args.runs)

    import onnxruntime as ort
    import openvino as ov

    conv = random_attend_conv(args.channels, args.outputs, args.anchors)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, args.channels, args.size, args.size, generator=generator)
    boxes = _random_boxes(args.size, args.stride, args.anchors, generator)
    stride = float(args.stride)
    variants = attend_variants(conv, stride, args.threads)
    with torch.no_grad():  # float64: the reference's own rounding stays far below fp32's
        reference = TrainingModule(copy.deepcopy(conv).double(), stride)(features.double(),
                                                                        boxes.double())
    reference_flat = reference.permute(0, 2, 3, 1).reshape(1, -1, args.outputs)

    core = ov.Core()
    inputs = {"features": features.numpy(), "boxes": boxes.numpy()}
    diffs: dict[str, float] = {}
    medians: dict[str, list[float]] = {name: [] for name in variants}
    # One phase per runtime, each runtime's sessions made just before its phase and dropped
    # after it. Within a phase, rounds over all variants, so a change in machine load hits
    # every variant alike. Each turn calls the variant ``CALLS_PER_TURN`` times and times all
    # but the first (the warm latency of a running detector). ONNX Runtime sessions stop
    # their threads' spin at the end of each run, as the SDK's do
    # (``edgedet.backends.onnxruntime.SESSION_CONFIG``): before, a session's spinning threads
    # slowed the next variant's calls up to 2.4x, which flattered every ratio to the conv.
    phases: list[tuple[str, Callable[[Path], Callable[[dict], object]]]] = [
        ("onnxruntime", lambda path: _ort_runner(ort, path, args.threads)),
        ("openvino f32", lambda path: _openvino_runner(core, path, "f32", args.threads)),
        ("openvino bf16", lambda path: _openvino_runner(core, path, "bf16", args.threads)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: export_variant(module, features, boxes, Path(tmp) / f"variant{i}.onnx")
                 for i, (name, module) in enumerate(variants.items())}
        # A variant that ignores the boxes (the plain conv) has no "boxes" input.
        feeds = {name: {i.name: inputs[i.name] for i in onnx.load(str(path)).graph.input}
                 for name, path in paths.items()}
        for runtime, make in phases:
            runners = {name: _head_runner(make(path if runtime == "onnxruntime" else
                                               openvino_model_path(variants[name], path)),
                                          variants[name])
                       for name, path in paths.items()}
            if runtime == "onnxruntime":
                for name, run in runners.items():
                    out = torch.from_numpy(np.asarray(run(feeds[name]))).double()
                    if out.dim() == 4:
                        out = out.permute(0, 2, 3, 1).reshape(1, -1, args.outputs)
                    diffs[name] = float((out - reference_flat).abs().max())
            times: dict[str, list[float]] = {name: [] for name in runners}
            for name, run in runners.items():
                for _ in range(3):
                    run(feeds[name])
            for _ in range(args.runs):
                for name, run in runners.items():
                    run(feeds[name])  # the switch-first call, untimed
                    for _ in range(CALLS_PER_TURN - 1):
                        start = time.perf_counter()
                        run(feeds[name])
                        times[name].append(time.perf_counter() - start)
            for name in runners:
                medians[name].append(statistics.median(times[name]) * 1000)
            del runners
            gc.collect()
    print(f"P&A attend conv: {args.channels} -> {args.anchors}x{args.outputs} channels, "
          f"{args.size}x{args.size} map, fp32, {args.threads} threads, median of {args.runs} "
          f"interleaved rounds per runtime; onnxruntime {ort.__version__}, "
          f"openvino {ov.__version__}; "
          f"diff vs the training module in float64 (ORT); OV bf16: bf16 inference with the "
          f"sampling coordinates kept f32, as --float-precision bf16 builds the OpenVINO IR")
    width = max(len(name) for name in variants)
    print(f"| {'variant':<{width}} | {'ORT ms':>7} | {'OV ms':>7} | {'OV bf16 ms':>10} | "
          f"{'max abs diff':>12} |")
    print(f"|{'-' * (width + 2)}|{'-' * 9}|{'-' * 9}|{'-' * 12}|{'-' * 14}|")
    for name in variants:
        ort_ms, ov_ms, bf16_ms = medians[name]
        print(f"| {name:<{width}} | {ort_ms:7.2f} | {ov_ms:7.2f} | {bf16_ms:10.2f} | "
              f"{diffs[name]:12.2e} |")
    floor = medians[PLAIN_CONV]
    print("attend / plain conv (ORT, OV, OV bf16):")
    for name in variants:
        if name != PLAIN_CONV:
            ratios = ", ".join(f"{m / f:.2f}x" for m, f in zip(medians[name], floor, strict=True))
            print(f"  {name}: {ratios}")
    return 0


def _ort_runner(ort: Any, path: Path, threads: int) -> Callable[[dict], object]:
    """An ONNX Runtime session of ``path`` with the SDK backend's options, as a call on a
    feed, its outputs written into arrays allocated at the feed's first call (as
    ``speed.py`` times the variants)."""
    from edgedet.backends.onnxruntime import session_options

    session = ort.InferenceSession(str(path), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    calls: dict[int, Callable[[], object]] = {}  # outputs bound once per feed (IOBinding)

    def run(feed: dict) -> object:
        if id(feed) not in calls:
            calls[id(feed)] = bound_ort_call(session, feed)
        return calls[id(feed)]()
    return run


def _openvino_runner(core: Any, path: Path, precision: str,
                     threads: int) -> Callable[[dict], object]:
    """``path`` compiled by OpenVINO at ``precision``: ``f32``, or ``bf16`` with the sampling
    coordinates marked ``precise`` (f32), as the openvino target's ``--float-precision bf16``
    builds an IR (``quantize.openvino_precision``); the call returns the request's own output
    tensors (no copy)."""
    import openvino as ov

    source = str(path)
    if precision == "bf16":
        xml = path.with_name(path.stem + "_bf16.xml")  # (path may be an IR itself)
        ov.save_model(ov.convert_model(source), str(xml), compress_to_fp16=False)
        precise = coordinate_ops(core.read_model(str(xml)))
        if precise:
            mark_precise(xml, precise)
        source = str(xml)
    request = core.compile_model(source, "CPU", {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    }).create_infer_request()
    return lambda feed: request.infer(feed, share_outputs=True)


if __name__ == "__main__":
    raise SystemExit(main())
