"""Backgrounds, lighting and camera effects for the synthetic scenes.

Images here are ``float32 (H, W, 3)`` BGR with values around ``[0, 1]`` until the final
conversion to ``uint8``. Every random choice comes from the ``np.random.Generator`` passed in, so
a scene is a pure function of its seed.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from edgedet.data.synthetic_shapes import random_colour


@functools.lru_cache(maxsize=8)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates scaled so the short side spans ``[-1, 1]``.

    Returns ``xs (1, W)`` and ``ys (H, 1)`` float32 (read-only; broadcast them, never write).
    """
    half = min(width, height) / 2.0
    xs = ((np.arange(width, dtype=np.float32) + 0.5 - width / 2.0) / half)[None, :]
    ys = ((np.arange(height, dtype=np.float32) + 0.5 - height / 2.0) / half)[:, None]
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def directional_ramp(width: int, height: int, angle: float) -> np.ndarray:
    """``float32 (H, W)``: position along direction ``angle`` (radians, y down), about ±1."""
    xs, ys = _grid(width, height)
    return xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))


def fractal_noise(
    rng: np.random.Generator,
    width: int,
    height: int,
    cells: float,
    octaves: int,
    persistence: float = 0.55,
) -> np.ndarray:
    """Multi-octave value noise, ``float32 (H, W)`` with zero mean and roughly unit std.

    The coarsest octave has ``cells`` random values along the short side; each further octave
    doubles the resolution and scales the amplitude by ``persistence``. Octaves are summed at
    their own resolution and only the result is upsampled to full size, so the cost is about
    one full-size resize whatever the octave count.
    """
    short = min(width, height)
    gh = max(2, round(cells * height / short))
    gw = max(2, round(cells * width / short))
    acc = rng.standard_normal((gh, gw)).astype(np.float32)
    total_power, amplitude = 1.0, 1.0
    for _ in range(octaves - 1):
        if gh * 2 > height or gw * 2 > width:
            break
        gh, gw = gh * 2, gw * 2
        amplitude *= persistence
        total_power += amplitude * amplitude
        acc = cv2.resize(acc, (gw, gh), interpolation=cv2.INTER_CUBIC)
        acc += np.float32(amplitude) * rng.standard_normal((gh, gw), dtype=np.float32)
    out = cv2.resize(acc, (width, height), interpolation=cv2.INTER_CUBIC)
    out *= np.float32(1.0 / math.sqrt(total_power))
    return out


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """Background colours lean towards the greys and browns of real scenes."""
    colour = random_colour(rng)
    grey = np.float32(colour.mean())
    colour = colour + rng.uniform(0.2, 0.7) * (grey - colour)
    # Keep most backgrounds out of the deep shadows: brightness in [0.2, 0.9] of full scale.
    target = rng.uniform(0.2, 0.9)
    return np.clip(colour * (target / max(float(colour.max()), 1e-3)), 0.0, 1.0).astype(np.float32)


def _lerp(colour_a: np.ndarray, colour_b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``colour_a + t (colour_b - colour_a)`` for ``t (H, W)`` → ``float32 (H, W, 3)``."""
    channels = zip(colour_a, colour_b, strict=True)
    return cv2.merge([np.float32(a) + t * np.float32(b - a) for a, b in channels])


def _soft_discs(
    rng: np.random.Generator, width: int, height: int, count: int, max_radius_frac: float
) -> np.ndarray:
    """Blurred coloured discs (bokeh, dappled light): ``float32 (H, W, 3)`` to add or multiply.

    Drawn at a quarter of the resolution and upsampled: they are blurry anyway.
    """
    lw, lh = max(8, width // 4), max(8, height // 4)
    canvas = np.zeros((lh, lw, 3), dtype=np.float32)
    max_radius = max(2.0, max_radius_frac * min(lw, lh))
    for _ in range(count):
        centre = (int(rng.integers(0, lw)), int(rng.integers(0, lh)))
        radius = int(rng.uniform(1.0, max_radius))
        colour = tuple(float(c) * rng.uniform(0.3, 1.0) for c in random_colour(rng))
        cv2.circle(canvas, centre, radius, colour, -1, cv2.LINE_AA)
    canvas = cv2.GaussianBlur(canvas, (0, 0), max(1.0, 0.25 * max_radius))
    return cv2.resize(canvas, (width, height), interpolation=cv2.INTER_LINEAR)


BACKGROUND_STYLES: tuple[str, ...] = ("noise", "gradient", "horizon", "tiles", "grain")


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured, photographic-looking background, ``float32 (H, W, 3)`` BGR in ``[0, 1]``.

    One base style (coloured multi-octave noise, a gradient, a sky/ground horizon, floor tiles
    or wood-like grain), optionally bokeh or dappled light on top, always a fine texture.
    Rendered at half resolution and upsampled: four times cheaper, and the slight softness reads
    as a background a little out of focus behind sharp objects.
    """
    half = _render_background(rng, max(8, (width + 1) // 2), max(8, (height + 1) // 2))
    return cv2.resize(half, (width, height), interpolation=cv2.INTER_LINEAR)


def _render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    style = BACKGROUND_STYLES[int(rng.integers(len(BACKGROUND_STYLES)))]
    colour_a, colour_b, colour_c = (_muted_colour(rng) for _ in range(3))
    if style == "noise":
        t = fractal_noise(rng, width, height, rng.uniform(1.5, 6.0), 6, rng.uniform(0.4, 0.7))
        image = _lerp(colour_a, colour_b, np.clip(0.5 + 0.35 * t, 0.0, 1.0))
    elif style == "gradient":
        t = directional_ramp(width, height, rng.uniform(0, 2 * np.pi)) * 0.4 + 0.5
        t += 0.15 * fractal_noise(rng, width, height, 3.0, 5)
        image = _lerp(colour_a, colour_b, t)
    elif style == "horizon":
        xs, ys = _grid(width, height)
        # A slightly tilted, slightly wavy horizon; a vertical sky gradient above, a textured
        # ground below it, blended over a few pixels.
        horizon = rng.uniform(-0.6, 0.5) + rng.uniform(-0.15, 0.15) * xs
        wave = rng.standard_normal((1, int(rng.integers(3, 9)))).astype(np.float32)
        horizon = horizon + 0.05 * cv2.resize(wave, (width, 1), interpolation=cv2.INTER_CUBIC)
        sky_t = np.broadcast_to(np.clip((ys + 1.0) * 0.5, 0.0, 1.0), (height, width))
        sky = _lerp(colour_a, colour_b, np.ascontiguousarray(sky_t))
        ground_t = np.clip(0.5 + 0.3 * fractal_noise(rng, width, height, 8.0, 5), 0.0, 1.0)
        ground = _lerp(colour_c, colour_c * rng.uniform(0.4, 0.8), ground_t)
        softness = rng.uniform(0.005, 0.05)
        weight = 0.5 + 0.5 * np.tanh((ys - horizon) / (2.0 * softness))
        image = sky + weight[:, :, None] * (ground - sky)
    elif style == "tiles":
        angle = rng.uniform(0, np.pi / 2)
        tiles_per_unit = rng.uniform(1.0, 5.0)
        u = directional_ramp(width, height, angle) * tiles_per_unit
        v = directional_ramp(width, height, angle + np.pi / 2) * tiles_per_unit
        fu, fv = np.floor(u), np.floor(v)
        # Per-tile brightness from a hash of the tile index (no randomness needed per tile).
        tile_value = np.modf(np.abs(np.sin(fu * 12.9898 + fv * 78.233)) * 43758.5453)[0]
        edge = np.minimum(np.minimum(u - fu, 1.0 - (u - fu)), np.minimum(v - fv, 1.0 - (v - fv)))
        grout_width = rng.uniform(0.02, 0.08)
        grout = np.clip(edge / grout_width, 0.0, 1.0)
        t = (0.3 + 0.4 * tile_value) * grout
        image = _lerp(colour_c * 0.5, colour_a, t.astype(np.float32))
    else:  # grain: wavy stripes like wood, fabric or blinds
        phase = directional_ramp(width, height, rng.uniform(0, np.pi)) * rng.uniform(4.0, 30.0)
        phase += rng.uniform(0.5, 3.0) * fractal_noise(rng, width, height, 2.0, 4)
        t = 0.5 + 0.5 * np.sin(phase)
        image = _lerp(colour_a, colour_b * rng.uniform(0.5, 1.0), t.astype(np.float32))
    image = np.ascontiguousarray(image, dtype=np.float32)
    if rng.random() < 0.35:  # bokeh: out-of-focus lights add
        image += rng.uniform(0.2, 0.6) * _soft_discs(
            rng, width, height, int(rng.integers(8, 40)), 0.12
        )
    if rng.random() < 0.35:  # dappled light / large soft shadows multiply
        patches = _soft_discs(rng, width, height, int(rng.integers(3, 10)), 0.5)
        image *= 0.7 + 0.6 * cv2.cvtColor(patches, cv2.COLOR_BGR2GRAY)[:, :, None]
    grain = 1.0 + rng.uniform(0.02, 0.12) * fractal_noise(rng, width, height, height / 6.0, 2)
    cv2.multiply(image, cv2.merge([grain, grain, grain]), dst=image)
    return image


# The illumination field is smooth, so it is computed on a grid this many times coarser.
_LIGHTING_DOWNSCALE = 8


def lighting_grid_size(width: int, height: int) -> tuple[int, int]:
    """``(w, h)`` of the coarse grid :func:`apply_lighting` works on for a ``width x height``
    image."""
    return max(4, width // _LIGHTING_DOWNSCALE), max(4, height // _LIGHTING_DOWNSCALE)


def apply_lighting(
    image: np.ndarray,
    light_angle: float,
    gradient_strength: float,
    blotches: np.ndarray,
    vignette: float,
    gains_bgr: np.ndarray,
) -> None:
    """Multiply ``image (H, W, 3)`` in place by a smooth scene illumination.

    The field is brighter towards ``light_angle`` (radians, y down) by ``gradient_strength``,
    modulated by ``blotches`` (a smooth field of shape :func:`lighting_grid_size` ``[::-1]``,
    see :func:`fractal_noise`), darker in the corners by ``vignette``, and scaled per channel by
    ``gains_bgr (3,)`` (exposure and white balance).
    """
    height, width = image.shape[:2]
    grid_h, grid_w = blotches.shape
    xs, ys = _grid(grid_w, grid_h)
    field = 1.0 + gradient_strength * directional_ramp(grid_w, grid_h, light_angle)
    field += blotches
    field -= vignette * (xs * xs + ys * ys)
    field = np.maximum(field, 0.05).astype(np.float32, copy=False)
    field_bgr = cv2.merge([field * np.float32(g) for g in gains_bgr])
    field_bgr = cv2.resize(field_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    cv2.multiply(image, field_bgr, dst=image)


def tone_curve_lut(rng: np.random.Generator) -> np.ndarray:
    """A random camera tone curve (gamma, contrast, black level) as a ``uint8 (256,)`` LUT."""
    x = np.arange(256, dtype=np.float64) / 255.0
    gamma = math.exp(rng.uniform(-0.3, 0.3))
    contrast = rng.uniform(0.0, 0.6)
    y = x**gamma
    # Blend towards a smoothstep S-curve for extra contrast.
    y = y + contrast * (y * y * (3.0 - 2.0 * y) - y)
    black, white = rng.uniform(0.0, 0.08), rng.uniform(0.9, 1.0)
    y = black + (white - black) * y
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


def motion_blur_kernel(length: int, angle: float) -> np.ndarray:
    """Normalised ``float32 (L, L)`` line kernel for camera-shake blur of ``length`` pixels."""
    kernel = np.zeros((length, length), dtype=np.float32)
    c = (length - 1) / 2.0
    dx, dy = math.cos(angle) * c, math.sin(angle) * c
    shift = 4
    scale = 1 << shift
    cv2.line(
        kernel,
        (round((c - dx) * scale), round((c - dy) * scale)),
        (round((c + dx) * scale), round((c + dy) * scale)),
        1.0,
        1,
        cv2.LINE_AA,
        shift,
    )
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=4)
def _noise_bank(width: int, height: int) -> np.ndarray:
    """Fixed Gaussian noise ``float32 (H + 32, W + 32, 3)``, drawn once per image size.

    Drawing 0.9 M normals costs more than the rest of a scene; a random crop and sign of one
    fixed bank looks the same and keeps each scene a pure function of its seed.
    """
    bank = np.random.default_rng(0x5EED).standard_normal(
        (height + 32, width + 32, 3), dtype=np.float32
    )
    bank.flags.writeable = False
    return bank


def add_sensor_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> None:
    """Add zero-mean Gaussian noise of std ``sigma`` to ``image (H, W, 3)`` in place."""
    height, width = image.shape[:2]
    bank = _noise_bank(width, height)
    dy, dx = (int(v) for v in rng.integers(0, 32, 2))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    cv2.scaleAdd(bank[dy : dy + height, dx : dx + width], sigma * sign, image, dst=image)


def to_uint8(image: np.ndarray, tone_lut: np.ndarray | None = None) -> np.ndarray:
    """``float32 (H, W, 3)`` in ``[0, 1]`` (clipped) → ``uint8 (H, W, 3)``; ``image`` is reused."""
    np.maximum(image, 0.0, out=image)
    out = cv2.convertScaleAbs(image, alpha=255.0)  # rounds and saturates at 255
    if tone_lut is not None:
        out = cv2.LUT(out, tone_lut)
    return out
