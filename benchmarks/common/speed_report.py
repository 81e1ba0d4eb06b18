"""``benchmarks/speed.py``'s figures from its timed items: JSON-ready rows per section, the
headline ratios that issue 15 sets targets for, and the markdown tables.

Every function takes ``where``: None for the medians over all calls, ``"near"`` or ``"far"``
for the calls made while the two CPUs were near or far apart (``benchmarks/common/timing.py``);
a figure is None where an item has too few calls in that placement.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks import pa_attend_conv as pa
from benchmarks.common.timing import Timed
from quantize.targets import target_named


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None else top / bottom


def _gops(item: Timed, where: str | None) -> float | None:
    ms = item.p50(where)
    return None if item.gflops is None or ms is None else item.gflops / (ms / 1000.0)


def results(items: Sequence[Timed], where: str | None = None) -> dict[str, list[dict]]:
    """The figures of every section as JSON-ready rows."""
    by_key = {(i.section, i.key, i.runtime): i for i in items}
    zoo = [{"model": i.key, "backend": i.runtime, "precision": i.precision,
            "timed_detect": i.detect is not None,
            "runtime_p50_ms": i.p50(where), "detect_p50_ms": i.detect_p50(where),
            "detect_over_runtime": _ratio(i.detect_p50(where), i.p50(where)),
            "gflops": i.gflops, "gops": _gops(i, where)} for i in items if i.section == "zoo"]
    paper = []
    for i in (i for i in items if i.section == "paper"):
        fp32 = by_key["paper", f"{i.runtime} fp32", i.runtime]
        paper.append({"model": i.key, "runtime": i.runtime, "computes": i.precision,
                      "p50_ms": i.p50(where), "vs_fp32": _ratio(i.p50(where), fp32.p50(where)),
                      "gflops": i.gflops, "gops": _gops(i, where)})
    attend = []
    for i in (i for i in items if i.section == "attend" and i.runtime == "onnxruntime"):
        ov = by_key["attend", i.key, "openvino"]
        ort_plain = by_key["attend", pa.PLAIN_CONV, "onnxruntime"]
        ov_plain = by_key["attend", pa.PLAIN_CONV, "openvino"]
        attend.append({"variant": i.key, "onnxruntime_ms": i.p50(where),
                       "openvino_ms": ov.p50(where),
                       "onnxruntime_vs_plain": _ratio(i.p50(where), ort_plain.p50(where)),
                       "openvino_vs_plain": _ratio(ov.p50(where), ov_plain.p50(where))})
    return {"zoo": zoo, "int8_vs_fp32": int8_vs_fp32(items, where), "paper_width": paper,
            "attend": attend}


def int8_vs_fp32(items: Sequence[Timed], where: str | None = None) -> list[dict]:
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
                rows.append({"int8": item.key, "runtime": item.runtime,
                             "int8_ms": item.p50(where), "fp32": reference.key,
                             "fp32_runtime": runtime, "fp32_computes": reference.precision,
                             "fp32_ms": reference.p50(where),
                             "speedup": _ratio(reference.p50(where), item.p50(where))})
    return rows


def headline(report: dict) -> list[tuple[str, float | None]]:
    """``(figure, value)`` for each of issue 15's targets found in ``results``' rows."""
    rows: list[tuple[str, float | None]] = []
    for r in report["int8_vs_fp32"]:
        rows.append((f"zoo {r['int8']} on {r['runtime']} vs fp32 on {r['fp32_runtime']} "
                     f"({r['fp32_computes']}), x", r["speedup"]))
    paper = {r["model"]: r for r in report["paper_width"]}
    if paper:
        default = paper["openvino fp32, default precision"]
        for key in ("onnxruntime int8", "openvino int8", "openvino int8, float ops bf16"):
            rows.append((f"paper-width {key} vs its fp32, x",
                         _ratio(1.0, paper[key]["vs_fp32"])))
        for key in ("openvino int8", "openvino int8, float ops bf16"):
            rows.append((f"paper-width {key} vs OpenVINO's default ({default['computes']}), x",
                         _ratio(default["p50_ms"], paper[key]["p50_ms"])))
            rows.append((f"paper-width {key} GOPS", paper[key]["gops"]))
    for runtime, target in (("onnxruntime", "cpu"), ("openvino", "openvino")):
        shipped = pa.shipped_variant(target_named(target))
        for r in report["attend"]:
            if r["variant"] == shipped:
                rows.append((f"attend stage / plain conv, {runtime} ({r['variant']}), x",
                             r[f"{runtime}_vs_plain"]))
    for backend in sorted({r["backend"] for r in report["zoo"] if r["timed_detect"]}):
        ratios = [r["detect_over_runtime"] for r in report["zoo"]
                  if r["backend"] == backend and r["timed_detect"]]
        rows.append((f"zoo detect() / runtime on {backend}, worst model",
                     None if None in ratios else max(ratios)))
    return rows


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[c]) for r in rows)]) for c, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            cell.ljust(width) if c == 0 else cell.rjust(width)
            for c, (cell, width) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(report: dict, frame_size: tuple[int, int], paper: tuple[int, int],
                 attend_shape: tuple[int, int]) -> None:
    """The report as markdown. ``paper``: (classes, size); ``attend_shape``: (anchors,
    outputs per anchor)."""
    settings = report["settings"]
    print(f"edgedet speed: {settings['rounds']} interleaved rounds x {settings['calls']} calls "
          f"(after {settings['warmup']} warm-up calls), {settings['threads']} threads, p50")
    print(report["machine"] + "; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    if report["zoo"]:
        print(f"\n## Zoo models ({frame_size[0]}x{frame_size[1]} synthetic frame)\n")
        print(_markdown(
            ["model", "backend", "precision", "runtime ms", "detect ms", "detect/runtime",
             "GFLOPs", "GOPS"],
            [[r["model"], r["backend"], r["precision"], _num(r["runtime_p50_ms"], 2),
              _num(r["detect_p50_ms"], 2), _num(r["detect_over_runtime"], 2),
              _num(r["gflops"], 2), _num(r["gops"])] for r in report["zoo"]]))
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
        print(f"\n## Paper-width PASSD-MobileNet, {paper[0]} classes, {paper[1]}x{paper[1]} "
              "(random weights: speed only, no accuracy)\n")
        print(_markdown(
            ["model", "computes", "ms", "vs fp32", "GFLOPs", "GOPS"],
            [[r["model"], r["computes"], _num(r["p50_ms"], 2), _num(r["vs_fp32"], 2),
              _num(r["gflops"], 2), _num(r["gops"])] for r in report["paper_width"]]))
    a = settings["attend"]
    print(f"\n## Attend stage: {a['channels']} ch -> {attend_shape[0]}x{attend_shape[1]}, "
          f"{a['size']}x{a['size']} map, fp32 (vs plain: ms / plain 3x3 conv ms)\n")
    print(_markdown(
        ["variant", "ORT ms", "ORT vs plain", "OV ms", "OV vs plain"],
        [[r["variant"], _num(r["onnxruntime_ms"], 2), _num(r["onnxruntime_vs_plain"], 2),
          _num(r["openvino_ms"], 2), _num(r["openvino_vs_plain"], 2)]
         for r in report["attend"]]))
    print_placements(report)


def print_placements(report: dict) -> None:
    """The headline figures over all calls and per CPU placement."""
    placements = report.get("placement")
    if not placements:  # no probe: one CPU, or --no-probe
        print("\n## Headline figures\n")
        print(_markdown(["figure", "all calls"],
                        [[name, _num(value, 2)] for name, value in report["headline"]]))
        return
    readings = placements["readings_ns"]
    far = sum(r >= placements["far_from_ns"] for r in readings)
    print(f"\n## Headline figures by CPU placement\n\nRound trip between the two CPUs "
          f"(benchmarks/core_latency.py), read {len(readings)} times between items: "
          f"{len(readings) - far} near (< {placements['far_from_ns']:.0f} ns), {far} far; "
          f"min {min(readings):.0f}, max {max(readings):.0f} ns. Calls whose two readings "
          f"disagree count in 'all' only.\n")
    share = placements["share_of_calls"]
    columns = ["all", "near", "far"]
    values = {c: dict((report if c == "all" else placements[c])["headline"])
              for c in columns}
    headers = ["figure", "all calls", *(f"{c} ({share[c]:.0%} of calls)" for c in columns[1:])]
    print(_markdown(headers, [[name, *(_num(values[c].get(name), 2) for c in columns)]
                              for name in values["all"]]))
