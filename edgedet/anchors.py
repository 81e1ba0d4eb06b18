"""Anchor (default box / prior) generation in numpy, shared by training and the runtime.

Anchors are generated once per input size from a small serialisable spec, so the artifact
manifest can carry the spec and the torch-free runtime decodes with exactly the anchors the
model was trained with.

Ordering contract (matches how heads flatten their outputs): level-major, then row ``y``,
then column ``x``, then the anchors of one cell. A head output of shape ``(N, A*k, H, W)``
is flattened as ``permute(0, 2, 3, 1).reshape(N, H*W*A, k)`` and concatenated over levels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class GridAnchorSpec:
    """Anchors centred on every cell of each pyramid level (PASSD, RetinaNet family).

    At level ``l`` a cell ``(y, x)`` has centre ``((x + 0.5) * stride, (y + 0.5) * stride)``
    and, for each scale ``s`` and aspect ratio ``r = w / h`` (scales outer, ratios inner),
    a box of width ``base_size * s * sqrt(r)`` and height ``base_size * s / sqrt(r)``.

    Attributes:
        image_size: model input ``(width, height)`` in pixels.
        feature_sizes: ``(height, width)`` of each level's feature map.
        strides: pixels per cell at each level.
        base_sizes: anchor side at scale 1 for each level (PASSD: 4 x stride).
        scales: multipliers of the base size shared by all levels.
        aspect_ratios: width / height ratios shared by all levels.
    """

    image_size: tuple[int, int]
    feature_sizes: tuple[tuple[int, int], ...]
    strides: tuple[int, ...]
    base_sizes: tuple[float, ...]
    scales: tuple[float, ...] = (1.0,)
    aspect_ratios: tuple[float, ...] = (1.0,)
    kind: str = field(default="grid", init=False)

    def __post_init__(self) -> None:
        n = len(self.feature_sizes)
        if not (len(self.strides) == len(self.base_sizes) == n):
            raise ValueError(
                "feature_sizes, strides and base_sizes need one entry per level, got "
                f"{n}, {len(self.strides)}, {len(self.base_sizes)}"
            )
        _check_sizes(self.image_size, self.feature_sizes)
        for name in ("strides", "base_sizes", "scales", "aspect_ratios"):
            _check_positive(name, getattr(self, name))

    @property
    def anchors_per_cell(self) -> int:
        return len(self.scales) * len(self.aspect_ratios)

    @property
    def num_anchors(self) -> int:
        return sum(h * w for h, w in self.feature_sizes) * self.anchors_per_cell

    def generate(self) -> np.ndarray:
        """Return ``priors_cxcywh (num_anchors, 4) float32`` in input pixels."""
        shapes = []
        for scale in self.scales:
            for ratio in self.aspect_ratios:
                shapes.append((scale * math.sqrt(ratio), scale / math.sqrt(ratio)))
        unit_wh = np.asarray(shapes, dtype=np.float64)  # (A, 2), multiples of base size
        levels = []
        for (fh, fw), stride, base in zip(
            self.feature_sizes, self.strides, self.base_sizes, strict=True
        ):
            levels.append(_grid_level(fh, fw, float(stride), float(stride), unit_wh * base))
        return np.concatenate(levels, axis=0).astype(np.float32)

    def to_dict(self) -> dict:
        return _to_jsonable(asdict(self))


@dataclass(frozen=True)
class SsdPriorSpec:
    """SSD priors (Liu et al. 2016, as in the ssd.pytorch reference) used by DAIPNet.

    Per level ``k`` and cell: a square of side ``min_sizes[k]``, a square of side
    ``sqrt(min_sizes[k] * max_sizes[k])``, then for each ratio ``r`` in ``aspect_ratios[k]``
    the boxes ``(min*sqrt(r), min/sqrt(r))`` and ``(min/sqrt(r), min*sqrt(r))``.
    Centres are ``(x + 0.5) * steps[k]``.
    """

    image_size: tuple[int, int]
    feature_sizes: tuple[tuple[int, int], ...]
    steps: tuple[float, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    clip: bool = True
    kind: str = field(default="ssd", init=False)

    def __post_init__(self) -> None:
        n = len(self.feature_sizes)
        lengths = {len(self.steps), len(self.min_sizes), len(self.max_sizes),
                   len(self.aspect_ratios)}
        if lengths != {n}:
            raise ValueError("every SsdPriorSpec field needs one entry per level")
        _check_sizes(self.image_size, self.feature_sizes)
        for name in ("steps", "min_sizes", "max_sizes"):
            _check_positive(name, getattr(self, name))
        for ratios in self.aspect_ratios:
            _check_positive("aspect_ratios", ratios)

    def anchors_per_cell(self, level: int) -> int:
        return 2 + 2 * len(self.aspect_ratios[level])

    @property
    def num_anchors(self) -> int:
        return sum(
            h * w * self.anchors_per_cell(k) for k, (h, w) in enumerate(self.feature_sizes)
        )

    def generate(self) -> np.ndarray:
        """Return ``priors_cxcywh (num_anchors, 4) float32`` in input pixels."""
        levels = []
        for k, (fh, fw) in enumerate(self.feature_sizes):
            s_min, s_max = float(self.min_sizes[k]), float(self.max_sizes[k])
            shapes = [(s_min, s_min), (math.sqrt(s_min * s_max),) * 2]
            for r in self.aspect_ratios[k]:
                shapes.append((s_min * math.sqrt(r), s_min / math.sqrt(r)))
                shapes.append((s_min / math.sqrt(r), s_min * math.sqrt(r)))
            step = float(self.steps[k])
            levels.append(_grid_level(fh, fw, step, step, np.asarray(shapes)))
        priors = np.concatenate(levels, axis=0)
        if self.clip:
            # ssd.pytorch clips the prior's centre form to [0, 1] in normalised units.
            scale = np.array([*self.image_size, *self.image_size], dtype=np.float64)
            priors = np.clip(priors / scale, 0.0, 1.0) * scale
        return priors.astype(np.float32)

    def to_dict(self) -> dict:
        return _to_jsonable(asdict(self))


AnchorSpec = GridAnchorSpec | SsdPriorSpec


def anchor_spec_from_dict(data: dict) -> AnchorSpec:
    """Inverse of ``spec.to_dict()`` (manifest / checkpoint config round trip)."""
    data = dict(data)
    kind = data.pop("kind", None)
    tuples2 = lambda v: tuple(tuple(x) for x in v)  # noqa: E731
    if kind == "grid":
        return GridAnchorSpec(
            image_size=tuple(data["image_size"]),
            feature_sizes=_grid_sizes(data["feature_sizes"]),
            strides=tuple(data["strides"]),
            base_sizes=tuple(data["base_sizes"]),
            scales=tuple(data["scales"]),
            aspect_ratios=tuple(data["aspect_ratios"]),
        )
    if kind == "ssd":
        return SsdPriorSpec(
            image_size=tuple(data["image_size"]),
            feature_sizes=_grid_sizes(data["feature_sizes"]),
            steps=tuple(data["steps"]),
            min_sizes=tuple(data["min_sizes"]),
            max_sizes=tuple(data["max_sizes"]),
            aspect_ratios=tuples2(data["aspect_ratios"]),
            clip=bool(data["clip"]),
        )
    raise ValueError(f"unknown anchor spec kind {kind!r} (expected 'grid' or 'ssd')")


def _grid_sizes(sizes: list) -> tuple[tuple[int, int], ...]:
    """Feature sizes read from JSON; a whole number written as ``8.0`` (another tool) is 8."""
    return tuple(tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in size)
                 for size in sizes)


def _is_positive(value: object) -> bool:
    return (isinstance(value, int | float | np.integer | np.floating)
            and not isinstance(value, bool | np.bool_) and math.isfinite(value) and value > 0)


def _check_positive(name: str, values: tuple) -> None:
    """A NaN, zero or negative size gives NaN or empty anchors, and then no detections at all
    rather than an error, so the spec refuses it."""
    bad = [v for v in values if not _is_positive(v)]
    if bad:
        raise ValueError(f"anchor {name} must be positive finite numbers, got {list(values)}")


def _check_sizes(image_size: tuple, feature_sizes: tuple) -> None:
    if len(image_size) != 2 or not all(_is_positive(v) for v in image_size):
        raise ValueError(f"anchor image_size must be (width, height) > 0, got {image_size}")
    for size in feature_sizes:
        if len(size) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(
                v, bool | np.bool_) and v > 0 for v in size):
            raise ValueError(f"anchor feature_sizes must be (height, width) whole numbers "
                             f"> 0, got {size}")


def _grid_level(fh: int, fw: int, step_x: float, step_y: float, wh: np.ndarray) -> np.ndarray:
    """Anchors of one level: ``(fh*fw*len(wh), 4)`` cxcywh, cell-major, shapes innermost."""
    cx = (np.arange(fw, dtype=np.float64) + 0.5) * step_x
    cy = (np.arange(fh, dtype=np.float64) + 0.5) * step_y
    cyy, cxx = np.meshgrid(cy, cx, indexing="ij")
    centres = np.stack([cxx, cyy], axis=-1).reshape(-1, 1, 2)
    centres = np.broadcast_to(centres, (fh * fw, len(wh), 2))
    sizes = np.broadcast_to(wh[None], (fh * fw, len(wh), 2))
    return np.concatenate([centres, sizes], axis=-1).reshape(-1, 4)


def _to_jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    return obj
