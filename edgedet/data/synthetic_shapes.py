"""Shapes for the synthetic scenes: the object classes, the distractors, and their textures.

Everything here draws into small patches (never the whole image) so a scene with dozens of
shapes stays cheap. A *mask* is a ``uint8 (h, w)`` alpha patch (255 inside, anti-aliased
edges) plus the integer image position of its top-left pixel; a *texture* is a
``float32 (h, w, 3)`` BGR patch in ``[0, 1]`` that fills it.

Coordinates are continuous image coordinates: pixel column ``k`` covers ``[k, k + 1)``, so its
centre is ``k + 0.5``. OpenCV's drawing functions put integer coordinate ``k`` at a pixel centre,
hence the ``- 0.5`` when handing points to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Sub-pixel precision for OpenCV drawing: points are passed as integers scaled by 2**_SHIFT.
_SHIFT = 4
_SHIFT_SCALE = float(1 << _SHIFT)


@dataclass(frozen=True)
class ShapeGeometry:
    """One class's outline in unit coordinates (its outer polygon's box is ``[-1, 1]²``).

    Attributes:
        outer: ``(P, 2) float64`` polygon, ``x, y`` with ``y`` pointing down.
        holes: polygons cut out of ``outer`` (the ring's hole).
        aspect: the natural width / height of the shape before normalisation to ``[-1, 1]²``.
    """

    outer: np.ndarray
    holes: tuple[np.ndarray, ...]
    aspect: float


def _arc(cx: float, cy: float, radius: float, start_deg: float, stop_deg: float, n: int):
    angles = np.deg2rad(np.linspace(start_deg, stop_deg, n))
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _regular_polygon(sides: int, start_deg: float = -90.0) -> np.ndarray:
    return _arc(0.0, 0.0, 1.0, start_deg, start_deg + 360.0, sides + 1)[:-1]


def _star(points: int, inner_radius: float) -> np.ndarray:
    angles = np.deg2rad(-90.0 + np.arange(2 * points) * 180.0 / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_radius)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _crescent() -> np.ndarray:
    # The part of the unit circle outside a circle of radius r centred at (d, 0): the outer arc
    # runs round the left side between the two circles' intersection points, the inner arc
    # comes back inside it.
    d, r = 0.5, 0.85
    ix = (1.0 - r * r + d * d) / (2.0 * d)
    iy = math.sqrt(1.0 - ix * ix)
    outer_deg = math.degrees(math.atan2(iy, ix))
    inner_deg = math.degrees(math.atan2(iy, ix - d))
    outer = _arc(0.0, 0.0, 1.0, outer_deg, 360.0 - outer_deg, 40)
    inner = _arc(d, 0.0, r, 360.0 - inner_deg, inner_deg, 32)
    return np.concatenate([outer, inner[1:-1]])


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _normalised(outer: np.ndarray, holes: tuple[np.ndarray, ...] = ()) -> ShapeGeometry:
    """Scale and shift ``outer`` (and ``holes`` with it) so that ``outer``'s box is [-1, 1]²."""
    lo, hi = outer.min(axis=0), outer.max(axis=0)
    centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    return ShapeGeometry(
        outer=(outer - centre) / half,
        holes=tuple((h - centre) / half for h in holes),
        aspect=float(half[0] / half[1]),
    )


_CROSS_ARM = 0.3
_SHAPES: dict[str, ShapeGeometry] = {
    "circle": _normalised(_regular_polygon(48)),
    "square": _normalised(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)),
    "triangle": _normalised(np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64) * [1, 0.87]),
    "star": _normalised(_star(5, 0.42)),
    "cross": _normalised(
        np.array(
            [
                [-_CROSS_ARM, -1],
                [_CROSS_ARM, -1],
                [_CROSS_ARM, -_CROSS_ARM],
                [1, -_CROSS_ARM],
                [1, _CROSS_ARM],
                [_CROSS_ARM, _CROSS_ARM],
                [_CROSS_ARM, 1],
                [-_CROSS_ARM, 1],
                [-_CROSS_ARM, _CROSS_ARM],
                [-1, _CROSS_ARM],
                [-1, -_CROSS_ARM],
                [-_CROSS_ARM, -_CROSS_ARM],
            ],
            dtype=np.float64,
        )
    ),
    "ring": _normalised(_regular_polygon(48), holes=(0.55 * _regular_polygon(40),)),
    "hexagon": _normalised(_regular_polygon(6)),
    "arrow": _normalised(
        np.array(
            [[-1, -0.22], [0.2, -0.22], [0.2, -0.65], [1, 0], [0.2, 0.65], [0.2, 0.22], [-1, 0.22]],
            dtype=np.float64,
        )
    ),
    "crescent": _normalised(_crescent()),
    "heart": _normalised(_heart()),
    "bolt": _normalised(
        np.array(
            [
                [0.1, -1],
                [0.75, -1],
                [0.3, -0.2],
                [0.75, -0.2],
                [-0.35, 1],
                [-0.05, 0.1],
                [-0.5, 0.1],
            ],
            dtype=np.float64,
        )
    ),
    "pacman": _normalised(np.concatenate([[[0.0, 0.0]], _arc(0, 0, 1, 35, 325, 40)])),
}

SHAPE_NAMES: tuple[str, ...] = tuple(_SHAPES)


def shape_geometry(class_id: int) -> ShapeGeometry:
    """The unit-coordinate outline of class ``class_id`` (an index into ``SHAPE_NAMES``)."""
    return _SHAPES[SHAPE_NAMES[class_id]]


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def _to_cv_points(points_xy: np.ndarray, origin_xy: np.ndarray, zoom: int = 1) -> np.ndarray:
    """Continuous ``(P, 2)`` image points → OpenCV's fixed-point pixel-centre points in a patch
    at ``origin_xy`` drawn ``zoom`` times larger."""
    return np.round(((points_xy - origin_xy) * zoom - 0.5) * _SHIFT_SCALE).astype(np.int32)


def _patch_for(points_xy: np.ndarray, margin: int = 2) -> tuple[np.ndarray, int, int]:
    """Integer origin ``(x0, y0)`` and patch size ``(w, h)`` that hold ``points_xy``."""
    lo = np.floor(points_xy.min(axis=0)).astype(int) - margin
    hi = np.ceil(points_xy.max(axis=0)).astype(int) + margin
    return lo, int(hi[0] - lo[0]), int(hi[1] - lo[1])


def transform_points(
    points_unit: np.ndarray,
    centre_xy: tuple[float, float],
    size_wh: tuple[float, float],
    angle_deg: float,
    flip_x: bool,
) -> np.ndarray:
    """Unit-box points → image points: scale to ``size_wh``, mirror, rotate, move to centre."""
    scaled = points_unit * (np.asarray(size_wh, dtype=np.float64) / 2.0)
    if flip_x:
        scaled = scaled * [-1.0, 1.0]
    a = math.radians(angle_deg)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return scaled @ rotation.T + np.asarray(centre_xy, dtype=np.float64)


def shape_mask(
    class_id: int,
    centre_xy: tuple[float, float],
    size_wh: tuple[float, float],
    angle_deg: float,
    flip_x: bool,
) -> tuple[np.ndarray, int, int]:
    """Anti-aliased mask of one class object.

    Args:
        class_id: index into ``SHAPE_NAMES``.
        centre_xy: the shape's centre in continuous image coordinates.
        size_wh: width and height of the shape's box before rotation, in pixels.
        angle_deg: rotation, clockwise on screen.
        flip_x: mirror left-right before rotating.

    Returns:
        ``(mask, x0, y0)``: ``uint8 (h, w)`` alpha and the image position of its top-left pixel.
    """
    geometry = shape_geometry(class_id)
    outer = transform_points(geometry.outer, centre_xy, size_wh, angle_deg, flip_x)
    holes = [transform_points(h, centre_xy, size_wh, angle_deg, flip_x) for h in geometry.holes]
    origin, w, h = _patch_for(outer)
    # Supersample and average rather than use OpenCV's LINE_AA fill, which grows polygons by
    # up to a pixel, unevenly: alpha here is the true area covered, so the owned (>= 50 %)
    # pixels are the shape's own and its box is exact.
    factor = 4 if max(w, h) <= 128 else 2
    fine = np.zeros((h * factor, w * factor), dtype=np.uint8)
    cv2.fillPoly(fine, [_to_cv_points(outer, origin, factor)], 255, cv2.LINE_8, _SHIFT)
    for hole in holes:
        cv2.fillPoly(fine, [_to_cv_points(hole, origin, factor)], 0, cv2.LINE_8, _SHIFT)
    mask = cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)
    return mask, int(origin[0]), int(origin[1])


# Characters whose glyphs look like none of the classes (no O/Q/C/D/0 rings and crescents,
# no A/V triangles, no + / x / T crosses).
_TEXT_CHARS = "EFGHKLMNPRSWZ#&2345679abdefghkmnprswz"
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
)
DISTRACTOR_KINDS: tuple[str, ...] = ("blob", "stroke", "text", "bars", "leaf")


def distractor_mask(
    rng: np.random.Generator, kind: str, centre_xy: tuple[float, float], size: float
) -> tuple[np.ndarray, int, int]:
    """Anti-aliased mask of an unannotated clutter shape that is none of the classes.

    Kinds: ``blob`` (jagged irregular polygon), ``stroke`` (a thick smooth curve), ``text``
    (a short word), ``bars`` (a few parallel lines), ``leaf`` (a pointed lens on a stalk).

    Returns:
        ``(mask, x0, y0)`` as :func:`shape_mask`.
    """
    cx, cy = centre_xy
    half = size / 2.0
    if kind == "blob":
        # A lumpy, jagged rock: a few random low harmonics of the radius plus per-vertex jitter.
        # (Independent random radii would make spiky outlines that read as stars.)
        n = int(rng.integers(16, 30))
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
        radii = np.ones(n)
        for harmonic in (2, 3, 4):
            radii += rng.uniform(0.05, 0.25) * np.cos(harmonic * angles + rng.uniform(0, 6.3))
        radii += rng.uniform(-0.12, 0.12, n)
        radii *= half / radii.max()
        stretch = rng.uniform(0.5, 1.0)
        points = np.stack([cx + radii * np.cos(angles), cy + stretch * radii * np.sin(angles)], 1)
        origin, w, h = _patch_for(points)
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(mask, [_to_cv_points(points, origin)], 255, cv2.LINE_AA, _SHIFT)
        return mask, int(origin[0]), int(origin[1])
    if kind == "stroke":
        # A random walk with smoothly turning heading reads as a scribble or a twig.
        n = 24
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.35, n))
        steps = np.stack([np.cos(heading), np.sin(heading)], 1) * (2.0 * half / n)
        points = np.cumsum(steps, axis=0)
        points += np.array([cx, cy]) - points.mean(axis=0)
        thickness = max(1, round(size * rng.uniform(0.03, 0.1)))
        origin, w, h = _patch_for(points, margin=thickness + 2)
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.polylines(
            mask, [_to_cv_points(points, origin)], False, 255, thickness, cv2.LINE_AA, _SHIFT
        )
        return mask, int(origin[0]), int(origin[1])
    if kind == "text":
        word = "".join(rng.choice(list(_TEXT_CHARS), int(rng.integers(2, 6))))
        font = _FONTS[int(rng.integers(len(_FONTS)))]
        scale = max(size / 40.0, 0.3)
        thickness = max(1, round(scale * rng.uniform(1.0, 2.5)))
        (tw, th), baseline = cv2.getTextSize(word, font, scale, thickness)
        w, h = tw + 2 * thickness + 4, th + baseline + 2 * thickness + 4
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.putText(
            mask,
            word,
            (thickness + 2, th + thickness + 2),
            font,
            scale,
            255,
            thickness,
            cv2.LINE_AA,
        )
        return mask, round(cx - w / 2), round(cy - h / 2)
    if kind == "bars":
        # Thin, well-spaced lines of uneven length: a filled, evenly striped block would pass
        # for a striped square.
        n = int(rng.integers(3, 7))
        angle = rng.uniform(0, np.pi)
        along = np.array([np.cos(angle), np.sin(angle)])
        across = np.array([-along[1], along[0]])
        spacing = 2.0 * half / (n - 1)
        thickness = max(1, round(min(spacing * rng.uniform(0.12, 0.3), size * 0.04)))
        centre = np.array([cx, cy])
        lines = [
            np.stack(
                [
                    centre + o * across - rng.uniform(0.3, 1.0) * half * along,
                    centre + o * across + rng.uniform(0.3, 1.0) * half * along,
                ]
            )
            for o in np.linspace(-half, half, n)
        ]
        origin, w, h = _patch_for(np.concatenate(lines), margin=thickness + 2)
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.polylines(
            mask,
            [_to_cv_points(line, origin) for line in lines],
            False,
            255,
            thickness,
            cv2.LINE_AA,
            _SHIFT,
        )
        return mask, int(origin[0]), int(origin[1])
    if kind == "leaf":
        # A pointed lens (two parabolic arcs) on a short stalk, at any angle.
        x = np.linspace(-1.0, 1.0, 24)
        width_ratio = rng.uniform(0.25, 0.5)
        top = np.stack([x, -width_ratio * (1.0 - x * x)], axis=1)
        bottom = np.stack([x[::-1], width_ratio * (1.0 - x[::-1] ** 2)], axis=1)[1:-1]
        stalk = np.array([[1.0, 0.0], [1.0 + rng.uniform(0.2, 0.5), rng.uniform(-0.15, 0.15)]])
        a = rng.uniform(0.0, 2.0 * np.pi)
        rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        blade = np.concatenate([top, bottom]) @ rotation.T * half + [cx, cy]
        stalk = stalk @ rotation.T * half + [cx, cy]
        thickness = max(1, round(size * 0.04))
        origin, w, h = _patch_for(np.concatenate([blade, stalk]), margin=thickness + 2)
        mask = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(mask, [_to_cv_points(blade, origin)], 255, cv2.LINE_AA, _SHIFT)
        cv2.polylines(
            mask, [_to_cv_points(stalk, origin)], False, 255, thickness, cv2.LINE_AA, _SHIFT
        )
        return mask, int(origin[0]), int(origin[1])
    raise ValueError(f"unknown distractor kind {kind!r}; expected one of {DISTRACTOR_KINDS}")


# ---------------------------------------------------------------------------------------------
# Textures
# ---------------------------------------------------------------------------------------------


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random BGR colour ``float32 (3,)`` in ``[0, 1]``, from dull greys to saturated."""
    hsv = np.array(
        [[[rng.uniform(0.0, 360.0), rng.uniform(0.0, 1.0) ** 0.7, rng.uniform(0.12, 1.0)]]],
        dtype=np.float32,
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]


def _unit_ramp(h: int, w: int, angle: float) -> np.ndarray:
    """``float32 (h, w)`` ramp from -1 to 1 across the patch along direction ``angle``."""
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    return (xs * math.cos(angle) + ys * math.sin(angle)) / max(
        abs(math.cos(angle)) + abs(math.sin(angle)), 1e-6
    )


# Textures are smooth or blurred, so large patches are textured on a grid at most this size
# and upsampled (the cost of a big object then stays that of a small one).
_TEXTURE_MAX_SIDE = 96


def object_texture(rng: np.random.Generator, h: int, w: int, light_angle: float) -> np.ndarray:
    """Fill for one object or distractor patch: ``float32 (h, w, 3)`` BGR in ``[0, 1]``.

    A base colour with one of: flat, a gradient to a second colour, stripes, or blotchy noise;
    then shading that brightens the side facing the scene's light (``light_angle``, radians,
    the direction from the scene towards the light, ``y`` pointing down).
    """
    scale = max(1.0, max(h, w) / _TEXTURE_MAX_SIDE)
    th, tw = max(1, round(h / scale)), max(1, round(w / scale))
    colour_a = random_colour(rng)
    style = rng.choice(4, p=[0.3, 0.3, 0.2, 0.2])
    # Shading: a linear falloff away from the light, so objects look lit like the scene.
    shade = 1.0 + rng.uniform(0.0, 0.45) * _unit_ramp(th, tw, light_angle)
    if style == 0:
        mix = None
    elif style == 1:
        mix = _unit_ramp(th, tw, rng.uniform(0, 2 * np.pi)) * 0.5 + 0.5
    elif style == 2:
        period = rng.uniform(3.0, max(4.0, 0.5 * max(th, tw)))
        ramp = _unit_ramp(th, tw, rng.uniform(0, np.pi)) * (max(th, tw) / period) * np.pi
        mix = cv2.GaussianBlur((np.sin(ramp) > 0).astype(np.float32), (3, 3), 0.6)
    else:
        cells = rng.standard_normal((max(2, th // 6 + 1), max(2, tw // 6 + 1)))
        mix = cv2.resize(cells.astype(np.float32), (tw, th), interpolation=cv2.INTER_CUBIC)
        mix = np.clip(mix * 0.5 + 0.5, 0.0, 1.0)
    if mix is None:
        channels = [shade * np.float32(c) for c in colour_a]
    else:
        colour_b = random_colour(rng)
        if max(h, w) < 32:
            # Bold patterns on a tiny object would break up its outline, not just colour it.
            colour_b = colour_a + 0.4 * (colour_b - colour_a)
        channels = [
            shade * (np.float32(a) + mix * np.float32(b - a))
            for a, b in zip(colour_a, colour_b, strict=True)
        ]
    texture = cv2.merge([c.astype(np.float32, copy=False) for c in channels])
    if (th, tw) != (h, w):
        texture = cv2.resize(texture, (w, h), interpolation=cv2.INTER_LINEAR)
    return texture
