"""The accuracy report: ``report.json``, a readable ``report.md`` and a comparison picture.

Each artifact's own accuracy summary goes into its manifest when the artifact is written
(``quantize.convert``); the report holds all of them side by side.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgedet._io import write_bytes_atomic, write_json_atomic
from edgedet.data.sample import Sample
from edgedet.detections import Detections
from edgedet.draw import draw_detections, draw_text_panel

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PICTURE = "comparison.png"
SENSITIVITY_PICTURE = "sensitivity.png"
# Layers of the sensitivity ranking shown in report.md and drawn in the plot (all are in
# report.json).
TOP_LAYERS_SHOWN = 12
PLOT_LAYERS = 24
# Detections drawn in the picture: the ones a user of the default threshold would look at.
PICTURE_SCORE_THRESHOLD = 0.3
PICTURE_TILE_WIDTH = 320


def comparison_picture(samples: Sequence[Sample], columns: Mapping[str, Sequence[Detections]],
                       score_threshold: float = PICTURE_SCORE_THRESHOLD) -> np.ndarray:
    """A grid of BGR tiles: one row per sample, one column per detector (title in each tile).

    Args:
        samples: the images (2-4 of them).
        columns: ``{detector label: detections of each sample}``, e.g. the reference first.
        score_threshold: only detections scoring above it are drawn.

    Returns:
        ``uint8 (rows * h, columns * PICTURE_TILE_WIDTH, 3)``.
    """
    rows = []
    for index, sample in enumerate(samples):
        height, width = sample.image.shape[:2]
        tile_height = max(1, round(height * PICTURE_TILE_WIDTH / width))
        tiles = []
        for label, detections in columns.items():
            found = detections[index]
            shown = found[found.scores > score_threshold]
            tile = draw_detections(sample.image, shown)
            tile = cv2.resize(tile, (PICTURE_TILE_WIDTH, tile_height),
                              interpolation=cv2.INTER_AREA)
            tiles.append(draw_text_panel(tile, [label, f"{len(shown)} boxes"]))
        row = np.concatenate(tiles, axis=1)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def write_picture(path: str | os.PathLike[str], picture: np.ndarray) -> Path:
    """Write a BGR picture as PNG (atomically)."""
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError(f"could not encode the comparison picture for {path}")
    write_bytes_atomic(path, encoded.tobytes())
    return Path(path)


def sensitivity_picture(ranking: Sequence[Mapping[str, Any]], float_layers: Sequence[str],
                        title: str) -> np.ndarray:
    """A bar chart (BGR) of the most harmful layers: output SQNR in dB with only that layer
    in INT8, lowest (most harmful) first; layers accuracy control returned to float in red.

    Returns:
        ``uint8 (h, 960, 3)``.
    """
    shown = list(ranking[:PLOT_LAYERS])
    row, top, label_width, width = 22, 44, 470, 960
    picture = np.full((top + row * max(1, len(shown)) + 10, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(picture, title, (10, 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(picture, "output SQNR (dB) with only this layer in INT8; red: returned to float",
                (10, 36), font, 0.42, (80, 80, 80), 1, cv2.LINE_AA)
    scale = (width - label_width - 70) / max([1.0, *(max(r["sqnr_db"], 0.0) for r in shown)])
    floated = set(float_layers)
    for i, entry in enumerate(shown):
        y = top + i * row
        name = entry["node"] if len(entry["node"]) <= 58 else "..." + entry["node"][-55:]
        cv2.putText(picture, f"{i + 1:2d} {name}", (8, y + 15), font, 0.38, (0, 0, 0), 1,
                    cv2.LINE_AA)
        length = int(max(entry["sqnr_db"], 0.0) * scale)
        colour = (40, 40, 220) if entry["node"] in floated else (190, 140, 60)
        cv2.rectangle(picture, (label_width, y + 4), (label_width + length, y + row - 4),
                      colour, -1)
        cv2.putText(picture, f"{entry['sqnr_db']:.1f}", (label_width + length + 6, y + 15),
                    font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return picture


def _control_lines(controlled: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``report.md``'s accuracy-control section."""
    if not controlled:
        return []
    lines = ["", "## Accuracy control", "",
             "INT8 artifacts that miss `--max-drop` with plain PTQ first get back in float "
             "what their target lets into INT8 beyond the common scope (OpenVINO: the "
             "sampling reads), then the target's other "
             "calibration methods, then their most harmful weight layers (sensitivity "
             "ranking: SQNR of the decoded outputs, weighted per anchor by its score, with "
             "only that layer in INT8, `quantize/sensitivity.py`) back in float a few at a "
             "time, each step rebuilt and checked on the eval images "
             "(`quantize/accuracy_control.py`). The first step within `--max-drop` is "
             "shipped. p50 ms: one `detect()` during that step's check, so it carries the "
             "machine's load at the time; compare artifacts with `benchmarks/backends.py`."]
    for name, entry in controlled.items():
        lines += ["", f"### {name}", "",
                  "| step | action | calibration | layers in float | ΔAP | AP | p50 ms | check |",
                  "|---|---|---|---|---|---|---|---|"]
        for step in entry["steps"]:
            lines.append(f"| {step['step']} | {step['action']} | {step['calibration'] or '-'} | "
                         f"{step['float_layers']} | {step['delta_AP']:+.2f} | "
                         f"{_number(step['AP'])} | {_number(step['latency_p50_ms'])} | "
                         f"{'pass' if step['passed'] else 'miss'} |")
        floated = entry.get("float_layers") or []
        categories = entry.get("float_categories") or []
        passed = any(step["passed"] for step in entry["steps"])
        chosen = "Shipped" if passed else "Best step (outside `--max-drop`: rejected)"
        # The method by name, as the step rows give it (the entry's None means the default).
        step = next((s for s in entry["steps"] if s["passed"]),
                    max(entry["steps"], key=lambda s: s["delta_AP"], default={}))
        calibration = entry.get("calibration") or step.get("calibration") or "default"
        lines += ["", f"{chosen}: calibration `{calibration}`, "
                      + (f"{', '.join(f'`{c}`' for c in categories)} back in float "
                         "(beyond the target's own scope; \"Kept out of INT8\" lists "
                         "them too), "
                         if categories else "")
                      + f"{len(floated)} weight layer(s) returned to float"
                      + (": " + ", ".join(f"`{f['node']}` (rank {f['rank']}, "
                                          f"{f['sqnr_db']:.1f} dB)" for f in floated)
                         if floated else "") + "."]
        ranking = entry.get("ranking") or []
        if ranking:
            lines += ["", f"Most harmful INT8 layers ({len(ranking)} ranked; all in "
                          "`report.json`):", "",
                      "| rank | layer | op | SQNR dB | cosine | worst output |",
                      "|---|---|---|---|---|---|"]
            for i, r in enumerate(ranking[:TOP_LAYERS_SHOWN]):
                lines.append(f"| {i + 1} | `{r['node']}` | {r['op_type']} | "
                             f"{r['sqnr_db']:.1f} | {r['cosine']:.4f} | {r['worst_output']} |")
            lines += ["", f"![sensitivity]({SENSITIVITY_PICTURE})"]
    return lines


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value == -1.0:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _verdict(passed: bool, accuracy: Mapping[str, Any]) -> str:
    """The check column: pass / FAIL, marked where the check proved nothing."""
    return ("pass" if passed else "FAIL") + (" (inconclusive)" if accuracy.get("inconclusive")
                                             else "")


def _mib(size_bytes: int) -> str:
    return f"{size_bytes / 2**20:.2f}"


def _calibration_lines(calibration: Mapping[str, Any] | None) -> list[str]:
    """The calibration images' statistics and warnings (``quantize.calibration``)."""
    stats = (calibration or {}).get("stats")
    if not stats:
        return []
    lines = ["", f"Calibration images: {stats['distinct_images']} distinct, "
             f"{stats['constant_images']} constant, sizes {stats['width_range'][0]}-"
             f"{stats['width_range'][1]} x {stats['height_range'][0]}-"
             f"{stats['height_range'][1]} px, pixel mean (BGR) {stats['pixel_mean_bgr']}, "
             f"std {stats['pixel_std_bgr']}."]
    lines += [f"- **Warning:** {w}." for w in stats.get("warnings", [])]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` text from the ``report.json`` structure (``ConversionReport.to_dict``)."""
    ref = report["reference"]
    lines = [
        f"# Conversion report: {report['name']} ({report['target']})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Checkpoint: `{report['checkpoint']}` (sha256 `{report['checkpoint_sha256'][:16]}...`)",
        "",
        "## Data",
        "",
        "| split | data | seed | images | sha256 of the images |",
        "|---|---|---|---|---|",
    ]
    for split in ("evaluation", "calibration"):
        data = report.get(split)
        if data:
            lines.append(f"| {split} | `{data['data']}` | {_number(data['seed'])} | "
                         f"{data['num_images']} | `{data['sha256'][:16]}...` |")
    lines += [
        "",
        f"Synthetic seeds: training {report['seeds']['train']}, evaluation "
        f"{report['seeds']['eval']} (training's validation split), calibration "
        f"{report['seeds']['calibration']}; calibration and evaluation images were checked "
        "to be disjoint by image hash.",
        *_calibration_lines(report.get("calibration")),
        "",
        "## Accuracy",
        "",
        f"AP in points (0-100, COCO AP@[.50:.95]); ΔAP = artifact AP - reference AP; the "
        f"check fails when an artifact drops more than {report['max_drop']} AP points. "
        f"Agreement: share of reference detections scoring > {report['agreement_score']} "
        f"matched by a same-class artifact detection at IoU > {report['agreement_iou']}. "
        "Latency: p50 of one `detect` call (pre-processing, model, decoding, NMS) over the "
        "eval images.",
        "",
        "| model | backend | precision | AP | AP50 | AP75 | APs | APm | APl | ΔAP | agreement |"
        " mean IoU | p50 ms | size MiB | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| reference | PyTorch ({ref['device']}) | fp32 | {_number(ref['AP'])} | "
        f"{_number(ref['AP50'])} | {_number(ref['AP75'])} | {_number(ref['APs'])} | "
        f"{_number(ref['APm'])} | {_number(ref['APl'])} | - | - | - | "
        f"{_number(ref['latency_p50_ms'])} | - | |",
    ]
    for art in report["artifacts"]:
        acc = art["accuracy"]
        lines.append(
            f"| {art['name']} | {art['backend']} | {art['precision']} | {_number(acc['AP'])} | "
            f"{_number(acc['AP50'])} | {_number(acc['AP75'])} | {_number(acc['APs'])} | "
            f"{_number(acc['APm'])} | {_number(acc['APl'])} | {acc['delta_AP']:+.2f} | "
            f"{acc['agreement']:.3f} | {acc['mean_iou']:.3f} | "
            f"{_number(acc['latency_p50_ms'])} | {_mib(art['size_bytes'])} | "
            f"{_verdict(art['passed'], acc)} |")
        two = art.get("double_scale")
        if two:  # HAR-Net's double-scale testing, against the reference's own
            lines.append(
                f"| {art['name']}, double-scale (ref. AP {_number(two['reference_AP'])}) | "
                f"{art['backend']} | {art['precision']} | {_number(two['AP'])} | "
                f"{_number(two['AP50'])} | {_number(two['AP75'])} | {_number(two['APs'])} | "
                f"{_number(two['APm'])} | {_number(two['APl'])} | {two['delta_AP']:+.2f} | "
                f"{two['agreement']:.3f} | {two['mean_iou']:.3f} | "
                f"{_number(two['latency_p50_ms'])} | (both models) | "
                f"{_verdict(two['passed'], two)} |")
    inconclusive = [f"- **{art['name']}**: {art['accuracy']['inconclusive']}"
                    + (f"; not put in place: `{art['kept_instead']}` holds a conclusively "
                       "checked artifact, which stays" if art.get("kept_instead") else "")
                    for art in report["artifacts"] if art["accuracy"].get("inconclusive")]
    if inconclusive:  # --allow-weak-reference
        lines += ["", "**Inconclusive checks** (`--allow-weak-reference`): the reference is "
                  "too weak for the check to tell a broken artifact from a good one.", "",
                  *inconclusive]
    notes = [(art["name"], art.get("checked_on"), art.get("notes") or [])
             for art in report["artifacts"]]
    if any(n or (c and c != a["backend"]) for (_, c, n), a in zip(notes, report["artifacts"],
                                                                  strict=True)):
        lines += ["", "## How each artifact was checked", ""]
        for (name, checked_on, texts), art in zip(notes, report["artifacts"], strict=True):
            runs_on = (f"deployed on {art['backend']}, checked on {checked_on}"
                       if checked_on and checked_on != art["backend"] else
                       f"checked on {art['backend']}")
            lines.append(f"- **{name}** ({runs_on}): " + "; ".join(texts) + ".")
    lines += ["", "## Kept out of INT8", ""]
    kept = report.get("kept_out_of_int8")
    if not any(art["precision"] == "int8" for art in report["artifacts"]):
        lines.append("No INT8 artifact was produced.")
    elif not kept:
        lines.append("No op category was kept in float (`--keep-float none`); the notes above "
                     "name anything a target keeps in float on its own graph.")
    else:
        lines.append("These ops run in float inside the INT8 models (found on the graph by "
                     "structure, `quantize/int8_scope.py`):")
        lines.append("")
        for category, entry in kept.items():
            lines.append(f"- **{category}** ({len(entry['nodes'])} nodes): {entry['reason']}.")
        lines.append("")
        lines.append("The node names are in each INT8 manifest's `kept_out_of_int8`.")
    lines += _control_lines(report.get("accuracy_control") or {})
    lines += [
        "",
        "## Reference vs deployed detections",
        "",
        f"Detections scoring > {PICTURE_SCORE_THRESHOLD} on the first eval images; one column "
        "per model.",
        "",
        f"![comparison]({PICTURE})",
        "",
    ]
    return "\n".join(lines)


def write_report(out_dir: str | os.PathLike[str], report: Mapping[str, Any],
                 picture: np.ndarray) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``comparison.png`` (and ``sensitivity.png``
    when accuracy control ranked layers, else remove an earlier one) into ``out_dir``;
    returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / REPORT_JSON, dict(report), indent=2)
    write_bytes_atomic(out_dir / REPORT_MD, render_markdown(report).encode("utf-8"))
    write_picture(out_dir / PICTURE, picture)
    written = [out_dir / REPORT_JSON, out_dir / REPORT_MD, out_dir / PICTURE]
    ranked = {name: entry for name, entry in (report.get("accuracy_control") or {}).items()
              if entry.get("ranking")}
    if ranked:  # one plot: a run has at most one INT8 artifact
        name, entry = next(iter(ranked.items()))
        plot = sensitivity_picture(entry["ranking"], [f["node"] for f in entry["float_layers"]],
                                   f"{name}: most harmful INT8 layers")
        written.append(write_picture(out_dir / SENSITIVITY_PICTURE, plot))
    else:  # an earlier run's plot would sit beside a report that does not mention it
        (out_dir / SENSITIVITY_PICTURE).unlink(missing_ok=True)
    return written
