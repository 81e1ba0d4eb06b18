"""Layout of a synthetic scene (masks only): placing objects and distractors on an owner map.

The first pass of ``edgedet.data.synthetic.render_scene`` (see that module's docstring): shapes
are placed one by one while a per-pixel owner map records which layer shows at each pixel, and
each object's box is the tight box of the pixels it owns. The demo video
(``edgedet.data.synthetic_video``) reuses these helpers for its moving objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgedet.data.synthetic_shapes import (
    DISTRACTOR_KINDS,
    SHAPE_NAMES,
    distractor_mask,
    shape_geometry,
    shape_mask,
)

if TYPE_CHECKING:  # only a type here; synthetic.py imports this module
    from edgedet.data.synthetic import SyntheticConfig

# Alpha at or above which a pixel belongs to a layer in the owner map (half coverage).
_OWNED_ALPHA = 128


@dataclass
class _Layer:
    """One placed shape: its alpha mask, position, and what it is.

    ``class_id`` is -1 for a distractor. ``full_area`` counts owned-alpha pixels of the whole
    mask, including any part outside the image.
    """

    mask: np.ndarray  # uint8 (h, w)
    x0: int
    y0: int
    class_id: int
    size: float
    full_area: int = field(init=False)

    def __post_init__(self) -> None:
        self.full_area = int(np.count_nonzero(self.mask >= _OWNED_ALPHA))


_Slices = tuple[slice, slice]


def _overlap(
    x0: int, y0: int, h: int, w: int, width: int, height: int
) -> tuple[_Slices, _Slices] | None:
    """Slices of the image and of a ``(h, w)`` patch at ``(x0, y0)`` that overlap, or None."""
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + w, width), min(y0 + h, height)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    image_slices = (slice(iy0, iy1), slice(ix0, ix1))
    patch_slices = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    return image_slices, patch_slices


def _random_object_pose(
    rng: np.random.Generator, config: SyntheticConfig, class_id: int, size: float
) -> tuple[tuple[float, float], float, bool]:
    """Box size ``(w, h)`` in px, rotation in degrees and mirroring of a class object.

    ``size`` is ``sqrt(w * h)``; the class's natural aspect ratio is stretched at random.
    """
    aspect = shape_geometry(class_id).aspect * math.exp(
        rng.uniform(-1.0, 1.0) * math.log(config.max_aspect_change)
    )
    width, height = config.image_size
    w = min(size * math.sqrt(aspect), 0.98 * width)
    h = min(size / math.sqrt(aspect), 0.98 * height)
    angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
    return (w, h), angle, bool(rng.random() < 0.5)


def _layout(rng: np.random.Generator, config: SyntheticConfig) -> tuple[list[_Layer], np.ndarray]:
    """Place objects and occluding distractors; drop objects left too hidden.

    Returns:
        ``(layers, owner)``: the layers bottom to top, and ``owner int16 (H, W)`` holding the
        index of the layer that shows at each pixel (-1 where the background shows).
    """
    width, height = config.image_size
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    log_lo, log_hi = math.log(config.min_object_size), math.log(config.max_object_px)
    sizes = np.sort(np.exp(rng.uniform(log_lo, log_hi, n_objects)))[::-1]
    items: list[tuple[int, float]] = [
        (int(rng.integers(len(SHAPE_NAMES))), float(s)) for s in sizes
    ]
    n_distractors = int(rng.integers(config.min_distractors, config.max_distractors + 1))
    n_on_top = int(rng.binomial(n_distractors, 1.0 - config.clutter_fraction))
    for _ in range(n_on_top):
        size = math.exp(rng.uniform(log_lo, math.log(max(config.max_object_px * 0.5, 9.0))))
        items.insert(int(rng.integers(len(items) + 1)), (-1, size))

    keep_fraction = 1.0 - config.max_occlusion
    owner = np.full((height, width), -1, dtype=np.int16)
    layers: list[_Layer] = []
    visible: list[int] = []  # owned pixels per layer, kept up to date as layers are added
    for class_id, size in items:
        if class_id >= 0:
            size_wh, angle, flip = _random_object_pose(rng, config, class_id, size)
            # A random sub-pixel centre so edges are not always aligned to the pixel grid.
            centre = (rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0))
            mask, mx, my = shape_mask(class_id, centre, size_wh, angle, flip)
        else:
            kind = DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]
            mask, mx, my = distractor_mask(rng, kind, (0.5, 0.5), size)
        layer = _Layer(mask, mx, my, class_id, size)
        if layer.full_area == 0:
            continue
        owned_patch = mask >= _OWNED_ALPHA
        index = len(layers)
        for _ in range(config.placement_attempts):
            # The mask was drawn around (0, 0); move it so its centre lands anywhere in the image.
            dx, dy = int(rng.integers(0, width)), int(rng.integers(0, height))
            x0, y0 = mx + dx, my + dy
            overlap = _overlap(x0, y0, *mask.shape, width, height)
            if overlap is None:
                continue
            image_slices, patch_slices = overlap
            owned = owned_patch[patch_slices]
            in_image = int(np.count_nonzero(owned))
            if class_id >= 0 and in_image < keep_fraction * layer.full_area:
                continue  # too much of it outside the image
            covered = np.bincount(owner[image_slices][owned] + 1, minlength=index + 1)[1:]
            if any(
                covered[j]
                and layers[j].class_id >= 0
                and visible[j] - covered[j] < keep_fraction * layers[j].full_area
                for j in range(index)
            ):
                continue  # would hide too much of an object already placed
            owner[image_slices][owned] = index
            for j in np.flatnonzero(covered):
                visible[j] -= int(covered[j])
            layer.x0, layer.y0 = x0, y0
            layers.append(layer)
            visible.append(in_image)
            break

    boxes, counts = _visible_boxes(layers, owner)
    too_hidden = [
        j
        for j, layer in enumerate(layers)
        if layer.class_id >= 0 and not _is_visible_enough(boxes[j], counts[j], layer, config)
    ]
    if too_hidden:
        # Removing layers only uncovers the others, so one rebuild settles it.
        layers = [layer for j, layer in enumerate(layers) if j not in set(too_hidden)]
        owner = _owner_map(layers, width, height)
    return layers, owner


def _owner_map(layers: list[_Layer], width: int, height: int) -> np.ndarray:
    """``int16 (H, W)`` index of the top layer with owned alpha at each pixel, else -1."""
    owner = np.full((height, width), -1, dtype=np.int16)
    for index, layer in enumerate(layers):
        overlap = _overlap(layer.x0, layer.y0, *layer.mask.shape, width, height)
        if overlap is not None:
            image_slices, patch_slices = overlap
            owner[image_slices][layer.mask[patch_slices] >= _OWNED_ALPHA] = index
    return owner


def _visible_boxes(layers: list[_Layer], owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight continuous xyxy box ``(L, 4) float32`` and pixel count ``(L,)`` each layer owns.

    Layers owning no pixel get a zero box and count 0.
    """
    height, width = owner.shape
    boxes = np.zeros((len(layers), 4), dtype=np.float32)
    counts = np.zeros(len(layers), dtype=np.int64)
    for index, layer in enumerate(layers):
        overlap = _overlap(layer.x0, layer.y0, *layer.mask.shape, width, height)
        if overlap is None:
            continue
        (rows, cols), _ = overlap
        mine = owner[rows, cols] == index
        counts[index] = np.count_nonzero(mine)
        if counts[index]:
            ys = np.flatnonzero(mine.any(axis=1))
            xs = np.flatnonzero(mine.any(axis=0))
            boxes[index] = (
                cols.start + xs[0],
                rows.start + ys[0],
                cols.start + xs[-1] + 1,
                rows.start + ys[-1] + 1,
            )
    return boxes, counts


def _is_visible_enough(
    box_xyxy: np.ndarray, count: int, layer: _Layer, config: SyntheticConfig
) -> bool:
    return (
        count >= config.min_visible_fraction * layer.full_area
        and box_xyxy[2] - box_xyxy[0] >= config.min_visible_side
        and box_xyxy[3] - box_xyxy[1] >= config.min_visible_side
    )


