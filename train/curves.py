"""A run's training curves as one picture: ``curves.png`` next to ``metrics.jsonl``.

    python train/curves.py runs/passd            # (re)draw runs/passd/curves.png
    python train/curves.py checkpoints/X --out /tmp/x.png

Left: the training loss and its terms against the iteration, each averaged over windows of
iterations (a step's loss is too noisy to read), skipped (non-finite) steps left out. Right:
validation AP, AP50 and APs (points, 0-100) after each evaluated epoch; the loss panel marks
the evaluated epochs' ends. The trainer redraws it after every evaluation and at the end; this
script draws it for any run directory or committed checkpoint folder that has a
``metrics.jsonl``. OpenCV only (no plotting library).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgedet._io import error_text, write_bytes_atomic
from train.metrics_log import METRICS_FILE, read_metrics

CURVES_FILE = "curves.png"
PANEL_SIZE = (640, 400)  # (width, height) of each of the two panels
# Line colours (BGR): the total loss first, then the loss terms in the order logged.
COLOURS = ((20, 20, 20), (200, 120, 40), (60, 160, 60), (40, 60, 210), (160, 60, 160),
           (40, 170, 200), (120, 120, 120))
_FONT = cv2.FONT_HERSHEY_SIMPLEX
Series = tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)


def window_means(iterations: Sequence[int], values: Sequence[float], windows: int = 100
                 ) -> tuple[list[float], list[float]]:
    """``values`` averaged over about ``windows`` equal runs of consecutive records, each
    placed at its mean iteration; non-finite values are left out (a window with none left is
    dropped)."""
    size = max(1, math.ceil(len(values) / windows))
    xs, ys = [], []
    for start in range(0, len(values), size):
        pairs = [(i, v) for i, v in zip(iterations[start:start + size],
                                         values[start:start + size], strict=True)
                 if math.isfinite(v)]
        if pairs:
            xs.append(sum(i for i, _ in pairs) / len(pairs))
            ys.append(sum(v for _, v in pairs) / len(pairs))
    return xs, ys


def _nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round tick values covering ``low..high`` (whole numbers only with
    ``integer``)."""
    span = max(high - low, 1e-12)
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    if integer:
        step = max(step, 1)
    first = math.ceil(low / step) * step
    return [first + k * step for k in range(int((high - first) / step + 1e-9) + 1)]


def draw_panel(title: str, x_label: str, series: Sequence[Series],
               y_range: tuple[float, float] | None = None, markers: bool = False,
               vertical_lines: Sequence[float] = (), integer_x: bool = False) -> np.ndarray:
    """One line chart (BGR ``uint8 (H, W, 3)``, ``PANEL_SIZE``) of ``series``, with a legend."""
    width, height = PANEL_SIZE
    left, right, top, bottom = 62, 14, 34, 46
    panel = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(panel, title, (left, 22), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    xs_all = [x for _, xs, _ in series for x in xs]
    ys_all = [y for _, _, ys in series for y in ys]
    if not xs_all:
        cv2.putText(panel, "nothing logged yet", (left, height // 2), _FONT, 0.5,
                    (120, 120, 120), 1, cv2.LINE_AA)
        return panel
    x_low, x_high = min(xs_all), max(xs_all)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = y_range if y_range else (min(ys_all), max(ys_all))
    if y_high == y_low:
        y_low, y_high = y_low - 1, y_high + 1
    pad = 0.05 * (y_high - y_low)
    y_low, y_high = (y_low, y_high) if y_range else (y_low - pad, y_high + pad)

    def to_pixel(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x_low) / (x_high - x_low) * (width - left - right)
        py = height - bottom - (y - y_low) / (y_high - y_low) * (height - top - bottom)
        return round(px), round(py)

    for value in _nice_ticks(y_low, y_high):
        _, py = to_pixel(x_low, value)
        cv2.line(panel, (left, py), (width - right, py), (230, 230, 230), 1)
        cv2.putText(panel, f"{value:g}", (4, py + 4), _FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    for value in _nice_ticks(x_low, x_high, integer=integer_x):
        px, _ = to_pixel(value, y_low)
        cv2.putText(panel, f"{value:g}", (px - 12, height - bottom + 16), _FONT, 0.38,
                    (60, 60, 60), 1, cv2.LINE_AA)
    for x in vertical_lines:
        if x_low <= x <= x_high:
            px, _ = to_pixel(x, y_low)
            cv2.line(panel, (px, top), (px, height - bottom), (215, 215, 240), 1)
    cv2.rectangle(panel, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    cv2.putText(panel, x_label, (width // 2 - 30, height - 10), _FONT, 0.42, (0, 0, 0), 1,
                cv2.LINE_AA)
    for index, (label, xs, ys) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        points = np.array([to_pixel(x, y) for x, y in zip(xs, ys, strict=True)], np.int32)
        if len(points) > 1:
            cv2.polylines(panel, [points], False, colour, 2 if index == 0 else 1, cv2.LINE_AA)
        if markers:
            for point in points:
                cv2.circle(panel, tuple(int(v) for v in point), 3, colour, -1, cv2.LINE_AA)
        last = f" {ys[-1]:.2f}" if len(ys) else ""
        cv2.putText(panel, f"{label}{last}", (left + 8 + 150 * (index % 4),
                                              top + 16 + 16 * (index // 4)),
                    _FONT, 0.4, colour, 1, cv2.LINE_AA)
    return panel


def curves_picture(train_records: Sequence[dict[str, Any]],
                   eval_records: Sequence[dict[str, Any]], title: str = "") -> np.ndarray:
    """The two panels side by side, under ``title`` (BGR ``uint8 (H, 1280, 3)``)."""
    iterations = [int(r["iteration"]) for r in train_records]
    terms = [k for k in train_records[0] if k not in (
        "type", "epoch", "iteration", "lr", "images_per_s")] if train_records else []
    loss_series = [(name, *window_means(iterations, [float(r.get(name, math.nan))
                                                     for r in train_records]))
                   for name in terms]
    epoch_ends = [int(r["iteration"]) for r in eval_records]
    epochs = [int(r["epoch"]) + 1 for r in eval_records]
    ap_series = [(name, epochs, [100.0 * float(r[name]) for r in eval_records])
                 for name in ("AP", "AP50", "APs") if all(name in r for r in eval_records)]
    loss_panel = draw_panel("training loss (window means)", "iteration", loss_series,
                            vertical_lines=epoch_ends)
    ap_panel = draw_panel("validation (points)", "epoch", ap_series, markers=True, integer_x=True,
                          y_range=(0.0, max([10.0, *(max(s[2]) for s in ap_series if s[2])])
                                   * 1.1) if ap_series else None)
    header = np.full((28, 2 * PANEL_SIZE[0], 3), 255, np.uint8)
    cv2.putText(header, title, (8, 20), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, np.concatenate([loss_panel, ap_panel], axis=1)], axis=0)


def write_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``run_dir``'s ``metrics.jsonl`` into ``out`` (default ``run_dir/curves.png``),
    written atomically.

    Raises:
        FileNotFoundError: no ``metrics.jsonl`` in ``run_dir``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {METRICS_FILE}")
    picture = curves_picture(read_metrics(run_dir, "train"), read_metrics(run_dir, "eval"),
                             title=str(run_dir))
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the curves of {run_dir}")
    path = Path(out) if out is not None else run_dir / CURVES_FILE
    write_bytes_atomic(path, encoded.tobytes())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory or checkpoint folder with "
                        f"{METRICS_FILE}")
    parser.add_argument("--out", default=None, help=f"PNG to write (default RUN_DIR/"
                        f"{CURVES_FILE})")
    args = parser.parse_args(argv)
    try:
        print(write_curves(args.run_dir, args.out))
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
