"""Drawing detections on frames (apps, reports, `edgedet detect --save`)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from edgedet.detections import Detections
from edgedet.preprocess import require_bgr_frame


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-separated BGR colour per class (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(
    frame: np.ndarray,
    detections: Detections,
    thickness: int | None = None,
    show_labels: bool = True,
    show_scores: bool = True,
    color: tuple[int, int, int] | None = None,
    track_ids: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """Return a copy of the BGR ``uint8 (H, W, 3)`` frame with boxes and labels drawn.

    Args:
        detections: boxes ``xyxy`` in this frame's pixels.
        thickness: line thickness; default scales with the frame size.
        color: one BGR colour for all boxes (default: a colour per class, or per track).
        track_ids: ``(N,)`` ids, one per detection (e.g. ``TrackedDetections.track_ids``):
            each label starts with ``#id`` and, unless ``color`` is given, each track keeps a
            colour of its own, so that an id switch shows.
    """
    require_bgr_frame(frame, "the frame draw_detections draws on")
    if thickness is not None and (not isinstance(thickness, int) or thickness < 1):
        raise ValueError(f"thickness must be a whole number >= 1, got {thickness!r}")
    if color is not None and len(color) != 3:
        raise ValueError(f"color must be (B, G, R), got {color!r}")
    if track_ids is not None:
        track_ids = np.asarray(track_ids).reshape(-1)
        whole = np.issubdtype(track_ids.dtype, np.integer) or (
            np.issubdtype(track_ids.dtype, np.floating)
            and bool(np.all(np.isfinite(track_ids) & (np.mod(track_ids, 1) == 0))))
        if track_ids.size and not whole:  # int("a") would fail mid-frame, int(1.5) truncate
            raise ValueError(f"track_ids must be whole numbers, got {track_ids[:3].tolist()} "
                             f"({track_ids.dtype})")
        if track_ids.shape[0] != len(detections):
            raise ValueError(f"{track_ids.shape[0]} track ids for {len(detections)} detections")
    canvas = frame.copy()
    h, w = canvas.shape[:2]
    thickness = thickness or max(1, round(min(h, w) / 320))
    font_scale = max(0.35, min(h, w) / 1000)
    labels = detections.labels
    for i, (box, score, class_id) in enumerate(detections):
        track = None if track_ids is None else int(track_ids[i])
        box_color = color or class_color(class_id if track is None else track)
        x1, y1, x2, y2 = (round(v) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), box_color, thickness, cv2.LINE_AA)
        text = " ".join(
            part for part in ("" if track is None else f"#{track}",
                              labels[i] if show_labels else "",
                              f"{score:.2f}" if show_scores else "") if part
        )
        if not text:
            continue
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - baseline - 2 >= 0 else y1 + th + baseline + 2
        cv2.rectangle(canvas, (x1, ty - th - baseline), (x1 + tw + 2, ty + baseline // 2),
                      box_color, -1)
        cv2.putText(canvas, text, (x1 + 1, ty - baseline // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale, _text_color(box_color), 1, cv2.LINE_AA)
    return canvas


def draw_text_panel(frame: np.ndarray, lines: list[str]) -> np.ndarray:
    """Draw a small translucent text panel (e.g. FPS, model name) in the top-left corner."""
    canvas = frame.copy()
    font_scale = max(0.4, min(canvas.shape[:2]) / 900)
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)[0] for t in lines]
    if not sizes:
        return canvas
    line_h = max(s[1] for s in sizes) + 8
    panel_w = max(s[0] for s in sizes) + 12
    panel_h = line_h * len(lines) + 6
    region = canvas[:panel_h, :panel_w]
    region[:] = (region * 0.4).astype(np.uint8)
    for k, text in enumerate(lines):
        cv2.putText(canvas, text, (6, line_h * (k + 1)), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _text_color(background_bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = background_bgr
    luminance = 0.114 * b + 0.587 * g + 0.299 * r
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)
