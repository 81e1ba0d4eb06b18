"""Tiled inference: a frame also runs as a grid of overlapping crops, for small objects.

A 320x320 detector sees a 640x480 camera frame at half size, so an object 27 pixels wide
(the demo video's median) reaches the model 13 pixels wide: below the smallest anchors of every
zoo model (SSD's and PASSD's ``s_min`` of 0.1 x 320, RetinaNet's 4 x stride 8), where none of
them finds much. With ``DetectorOptions(tiles=n)`` each frame runs once whole and once per crop
of an ``n x n`` grid, each crop resized to the model input like a frame, so objects arrive
about ``n`` times larger; the whole-frame run keeps the objects that no crop holds entirely.
The cost is ``n * n + 1`` model runs per frame. (The technique is SAHI's "sliced inference";
this is a plain version of it, with nothing learned or model-specific.)

Merging, in frame pixels::

    whole frame ─┐
    crop (0, 0) ─┼─ drop crop detections touching an inner crop edge (cut objects) ─┐
    ...          │                                                                  ├─ NMS
    crop (n, n) ─┘                                                 whole-frame ones ─┘

A detection touching a crop edge inside the frame is a cut-off part of an object: the
neighbouring crop (where the object is smaller than the overlap) or the whole frame sees it
entire. The rest are pooled and a class-aware hard NMS at the detector's IoU threshold keeps
the best of each group of duplicates, then the ``max_detections`` best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgedet.boxes import batched_nms
from edgedet.detections import Detections

# How close (fraction of the crop side, at least 2 pixels) a box must come to an inner crop
# edge to count as cut by it: box regression stops a pixel or two short of an edge as often
# as it reaches it.
EDGE_MARGIN_FRACTION = 0.01
MIN_EDGE_MARGIN_PX = 2.0


@dataclass(frozen=True)
class Tile:
    """One crop of a frame, in frame pixels: ``frame[y:y + height, x:x + width]``."""

    x: int
    y: int
    width: int
    height: int

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """This crop of ``frame (H, W, ...)``, contiguous (as the pre-processing wants)."""
        return np.ascontiguousarray(frame[self.y:self.y + self.height,
                                          self.x:self.x + self.width])


def tile_grid(frame_size: tuple[int, int], tiles: int, overlap: float) -> list[Tile]:
    """The ``tiles x tiles`` crops of a ``(width, height)`` frame, row by row.

    Neighbours overlap by ``overlap`` of a crop's side; the crops span the frame exactly
    (the first starts at 0, the last ends at the frame's edge).

    Raises:
        ValueError: ``tiles < 1``, ``overlap`` outside ``[0, 1)`` or a frame too small for
            crops of at least 2 pixels.
    """
    width, height = frame_size
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    span = tiles - (tiles - 1) * overlap  # frame sides per crop side
    tile_w, tile_h = min(width, math.ceil(width / span)), min(height, math.ceil(height / span))
    if tile_w < 2 or tile_h < 2:
        raise ValueError(f"a {width}x{height} frame is too small for {tiles}x{tiles} tiles")
    xs = np.linspace(0, width - tile_w, tiles).round().astype(int)
    ys = np.linspace(0, height - tile_h, tiles).round().astype(int)
    return [Tile(int(x), int(y), tile_w, tile_h) for y in ys for x in xs]


def uncut(detections: Detections, tile: Tile, frame_size: tuple[int, int]) -> np.ndarray:
    """``(N,) bool``: the crop's detections (in crop pixels) that touch no crop edge lying
    inside the frame."""
    width, height = frame_size
    xyxy = detections.xyxy
    margin_x = max(MIN_EDGE_MARGIN_PX, EDGE_MARGIN_FRACTION * tile.width)
    margin_y = max(MIN_EDGE_MARGIN_PX, EDGE_MARGIN_FRACTION * tile.height)
    keep = np.ones(len(detections), dtype=bool)
    if tile.x > 0:
        keep &= xyxy[:, 0] > margin_x
    if tile.y > 0:
        keep &= xyxy[:, 1] > margin_y
    if tile.x + tile.width < width:
        keep &= xyxy[:, 2] < tile.width - margin_x
    if tile.y + tile.height < height:
        keep &= xyxy[:, 3] < tile.height - margin_y
    return keep


def merge_tiles(whole: Detections, parts: Sequence[tuple[Tile, Detections]],
                frame_size: tuple[int, int], iou_threshold: float,
                max_detections: int) -> Detections:
    """The whole frame's detections and each crop's (in crop pixels), merged in frame pixels
    (see the module docstring); best score first."""
    boxes, scores, class_ids = [whole.xyxy], [whole.scores], [whole.class_ids]
    for tile, found in parts:
        keep = uncut(found, tile, frame_size)
        offset = np.array([tile.x, tile.y, tile.x, tile.y], dtype=np.float32)
        boxes.append(found.xyxy[keep] + offset)
        scores.append(found.scores[keep])
        class_ids.append(found.class_ids[keep])
    all_boxes = np.concatenate(boxes).astype(np.float32)
    all_scores = np.concatenate(scores).astype(np.float32)
    all_classes = np.concatenate(class_ids).astype(np.int64)
    keep = batched_nms(all_boxes, all_scores, all_classes, iou_threshold)[:max_detections]
    return Detections(all_boxes[keep], all_scores[keep], all_classes[keep], whole.class_names)
