"""The built-in synthetic detection dataset: shape objects in cluttered, photographic-ish scenes.

Image ``i`` of a dataset with seed ``s`` is a pure function of ``(s, i)``: any image can be
rendered alone, and a training and a validation split with different seeds share no image.

A scene is made in two passes:

1. **Layout** (masks only). Objects (largest first, so small ones end up on top) and occluding
   distractors are placed one by one while a per-pixel *owner map* records which layer shows at
   each pixel. A placement is rejected if it would leave any class object with less than
   ``1 - max_occlusion`` of its area visible (the image border counts as an occluder). Objects
   that still end up too hidden (under ``min_visible_fraction`` or a visible side under
   ``min_visible_side`` px) are removed from the scene altogether, so no class object is ever
   visible without an annotation. Boxes are the tight boxes of each object's owned pixels.
2. **Rendering**. Background, unannotated clutter beneath the objects, drop shadows, textured
   and shaded objects and distractors, a smooth illumination field with white balance, optional
   Gaussian or motion blur, sensor noise and a tone curve.

The shapes and textures live in :mod:`edgedet.data.synthetic_shapes`, the backgrounds and
camera effects in :mod:`edgedet.data.synthetic_backgrounds`, and the demo video (the same
objects moving over a panning scene) in :mod:`edgedet.data.synthetic_video`, which reuses the
layout helpers of :mod:`edgedet.data.synthetic_layout` and the compositing helpers below.
"""

from __future__ import annotations

import collections.abc
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgedet.data.coco import check_dataset_folder, write_coco_dataset
from edgedet.data.sample import Sample
from edgedet.data.synthetic_backgrounds import (
    add_sensor_noise,
    apply_lighting,
    fractal_noise,
    lighting_grid_size,
    motion_blur_kernel,
    render_background,
    to_uint8,
    tone_curve_lut,
)
from edgedet.data.synthetic_layout import _Layer, _layout, _overlap, _visible_boxes
from edgedet.data.synthetic_shapes import (
    DISTRACTOR_KINDS,
    SHAPE_NAMES,
    distractor_mask,
    object_texture,
)

SYNTHETIC_CLASSES: tuple[str, ...] = SHAPE_NAMES

# Image extension written by write_synthetic_dataset: JPEG is ~5x smaller than PNG for these
# noisy scenes and its compression artefacts are what a detector meets on camera frames.
IMAGE_EXT = ".jpg"



# The largest side a synthetic image may have (8K video is 7680 wide).
MAX_IMAGE_SIDE = 8192

@dataclass
class SyntheticConfig:
    """How synthetic scenes look. The defaults give hard-but-fair 640x480 detection scenes.

    Sizes are ``sqrt(w * h)`` of a shape's unrotated box in pixels; they are drawn log-uniformly
    between ``min_object_size`` and ``max_object_size * min(width, height)``, which at the
    default image size puts roughly a third of the objects in each of COCO's small / medium /
    large area buckets.
    """

    image_size: tuple[int, int] = (640, 480)  # (width, height)
    min_objects: int = 2
    max_objects: int = 14
    min_object_size: float = 8.0
    max_object_size: float = 0.7  # fraction of the image's short side
    max_aspect_change: float = 1.4  # width/height stretched by a factor in [1/x, x]
    max_rotation_deg: float = 20.0  # small: a rotated square must not pass for a diamond
    max_occlusion: float = 0.5  # most of an object that the border + later layers may hide
    min_visible_fraction: float = 0.3  # less visible: removed (stills) / iscrowd (video)
    min_visible_side: float = 6.0  # px; a smaller visible box: removed / iscrowd likewise
    min_distractors: int = 2
    max_distractors: int = 12
    clutter_fraction: float = 0.5  # share of distractors drawn beneath the objects
    shadow_prob: float = 0.5
    blur_prob: float = 0.25
    max_blur_sigma: float = 1.6
    motion_blur_prob: float = 0.1
    max_motion_blur_px: int = 9
    noise_prob: float = 0.85
    max_noise_sigma: float = 0.05  # in units of full scale (0.05 ≈ 13 grey levels)
    lighting_strength: float = 0.35
    placement_attempts: int = 12

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first setting that makes no sense."""
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be (width, height), got {self.image_size!r}")
        width, height = self.image_size
        whole = all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                    for v in (width, height))  # 640.0 passed here and failed in numpy
        if not whole or min(width, height) < 32:
            raise ValueError(f"image_size must be whole pixels >= 32 each, got {self.image_size}")
        if max(width, height) > MAX_IMAGE_SIDE:  # 100000 x 100000 would be 30 GB of pixels
            raise ValueError(f"image_size sides must be at most {MAX_IMAGE_SIDE} pixels, got "
                             f"{self.image_size}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if not 0 <= self.min_distractors <= self.max_distractors:
            raise ValueError(
                f"need 0 <= min_distractors <= max_distractors, got {self.min_distractors}, "
                f"{self.max_distractors}"
            )
        if self.min_object_size < 4:
            raise ValueError(f"min_object_size must be >= 4 px, got {self.min_object_size}")
        if not 0 < self.max_object_size <= 1:
            raise ValueError(
                f"max_object_size is a fraction of the short side in (0, 1], "
                f"got {self.max_object_size}"
            )
        if self.max_object_size * min(width, height) < self.min_object_size:
            raise ValueError(
                f"max_object_size {self.max_object_size} x short side {min(width, height)} px "
                f"is below min_object_size {self.min_object_size} px"
            )
        if self.max_aspect_change < 1:
            raise ValueError(f"max_aspect_change must be >= 1, got {self.max_aspect_change}")
        if not 0 <= self.max_rotation_deg <= 45:
            raise ValueError(f"max_rotation_deg must be in [0, 45], got {self.max_rotation_deg}")
        if not 0 <= self.max_occlusion < 1:
            raise ValueError(f"max_occlusion must be in [0, 1), got {self.max_occlusion}")
        if not 0 <= self.min_visible_fraction <= 1:
            raise ValueError(
                f"min_visible_fraction must be in [0, 1], got {self.min_visible_fraction}"
            )
        if self.min_visible_side < 1:
            raise ValueError(f"min_visible_side must be >= 1 px, got {self.min_visible_side}")
        for name in (
            "clutter_fraction",
            "shadow_prob",
            "blur_prob",
            "motion_blur_prob",
            "noise_prob",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {value}")
        if self.max_blur_sigma < 0 or self.max_noise_sigma < 0 or self.lighting_strength < 0:
            raise ValueError("max_blur_sigma, max_noise_sigma and lighting_strength must be >= 0")
        if self.max_motion_blur_px < 3:
            raise ValueError(f"max_motion_blur_px must be >= 3, got {self.max_motion_blur_px}")
        if self.placement_attempts < 1:
            raise ValueError(f"placement_attempts must be >= 1, got {self.placement_attempts}")

    @property
    def max_object_px(self) -> float:
        """Largest object size in pixels."""
        return self.max_object_size * min(self.image_size)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _composite(
    image: np.ndarray, colour: np.ndarray, alpha: np.ndarray, x0: int, y0: int, opacity: float
) -> None:
    """Blend ``colour (h, w, 3)`` into ``image (H, W, 3)`` at ``(x0, y0)`` with ``alpha (h, w)``.

    ``alpha`` is ``uint8`` (0..255); ``image`` is changed in place.
    """
    height, width = image.shape[:2]
    overlap = _overlap(x0, y0, *alpha.shape, width, height)
    if overlap is None:
        return
    image_slices, patch_slices = overlap
    weight = alpha[patch_slices].astype(np.float32) * np.float32(opacity / 255.0)
    colour_part = np.ascontiguousarray(colour[patch_slices])
    image[image_slices] = cv2.blendLinear(colour_part, image[image_slices], weight, 1.0 - weight)


def _cast_shadow(
    rng: np.random.Generator, image: np.ndarray, layer: _Layer, light_angle: float
) -> None:
    """Darken ``image`` under a blurred copy of ``layer``'s mask, offset away from the light."""
    blur_sigma = 0.5 + layer.size * rng.uniform(0.02, 0.08)
    offset = layer.size * rng.uniform(0.04, 0.14)
    darkness = rng.uniform(0.25, 0.6)
    shadow, pad = _soft_shadow(layer.mask, blur_sigma)
    x0 = layer.x0 - pad - round(offset * math.cos(light_angle))
    y0 = layer.y0 - pad - round(offset * math.sin(light_angle))
    black = np.zeros((*shadow.shape, 3), dtype=np.float32)
    _composite(image, black, shadow, x0, y0, darkness)


def _soft_shadow(mask: np.ndarray, sigma: float) -> tuple[np.ndarray, int]:
    """``mask (h, w)`` padded by ``pad`` px each side and Gaussian-blurred: ``(shadow, pad)``.

    Wide blurs run on a downscaled copy (a blurred mask has no detail to lose).
    """
    pad = math.ceil(3.0 * sigma)
    padded = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    factor = max(1, int(sigma / 1.5))
    if factor == 1:
        return cv2.GaussianBlur(padded, (0, 0), sigma), pad
    h, w = padded.shape
    small = cv2.resize(
        padded, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), pad


def _paint_clutter(
    rng: np.random.Generator,
    image: np.ndarray,
    count: int,
    config: SyntheticConfig,
    light_angle: float,
) -> None:
    """Unannotated distractors beneath the objects: they never occlude anything."""
    height, width = image.shape[:2]
    log_lo = math.log(config.min_object_size * 1.5)
    log_hi = math.log(max(config.max_object_px * 0.5, config.min_object_size * 2.0))
    for _ in range(count):
        kind = DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]
        centre = (rng.uniform(0, width), rng.uniform(0, height))
        mask, x0, y0 = distractor_mask(rng, kind, centre, math.exp(rng.uniform(log_lo, log_hi)))
        texture = object_texture(rng, *mask.shape, light_angle)
        _composite(image, texture, mask, x0, y0, rng.uniform(0.5, 1.0))


def _apply_camera(
    rng: np.random.Generator, image: np.ndarray, config: SyntheticConfig, light_angle: float
) -> np.ndarray:
    """Illumination, white balance, blur, noise and tone curve: ``float32`` → ``uint8 (H,W,3)``.

    ``image`` is overwritten.
    """
    height, width = image.shape[:2]
    strength = config.lighting_strength
    blotches = strength * 0.5 * fractal_noise(rng, *lighting_grid_size(width, height), 1.5, 2)
    exposure = math.exp(rng.uniform(-0.35, 0.25))
    white_balance = np.exp(rng.normal(0.0, 0.07, 3)) * exposure
    apply_lighting(
        image,
        light_angle,
        strength * rng.uniform(0.2, 1.0),
        blotches,
        vignette=strength * rng.uniform(0.0, 0.4),
        gains_bgr=white_balance,
    )
    if rng.random() < config.blur_prob:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, max(config.max_blur_sigma, 0.5)))
    if rng.random() < config.motion_blur_prob:
        length = int(rng.integers(3, config.max_motion_blur_px + 1))
        image = cv2.filter2D(image, -1, motion_blur_kernel(length, rng.uniform(0, np.pi)))
    if rng.random() < config.noise_prob:
        add_sensor_noise(rng, image, rng.uniform(0.0, config.max_noise_sigma))
    return to_uint8(image, tone_curve_lut(rng))


@dataclass
class SceneRender:
    """A rendered scene plus what tests need to check its annotations.

    Attributes:
        image: BGR ``uint8 (H, W, 3)``.
        boxes_xyxy: ``(N, 4) float32`` tight boxes of each object's visible pixels.
        class_ids: ``(N,) int64``.
        owner: ``int16 (H, W)``: index ``k`` into the annotations of the object that shows at
            each pixel (alpha >= 50 %), -1 for background and distractors.
    """

    image: np.ndarray
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    owner: np.ndarray


def render_scene(seed: int, index: int, config: SyntheticConfig) -> SceneRender:
    """Render image ``index`` of the dataset with ``seed``: a pure function of its arguments."""
    layout_seed, render_seed = np.random.SeedSequence([seed, index]).spawn(2)
    # Separate streams: changing camera effects in the config never moves the objects.
    layers, owner = _layout(np.random.default_rng(layout_seed), config)
    rng = np.random.default_rng(render_seed)
    width, height = config.image_size

    light_angle = rng.uniform(0.0, 2.0 * np.pi)
    image = render_background(rng, width, height)
    n_clutter = int(rng.integers(config.min_distractors, config.max_distractors + 1))
    _paint_clutter(rng, image, round(n_clutter * config.clutter_fraction), config, light_angle)
    for layer in layers:
        if rng.random() < config.shadow_prob:
            _cast_shadow(rng, image, layer, light_angle)
        texture = object_texture(rng, *layer.mask.shape, light_angle)
        _composite(image, texture, layer.mask, layer.x0, layer.y0, 1.0)
    image_u8 = _apply_camera(rng, image, config, light_angle)

    boxes, _ = _visible_boxes(layers, owner)
    is_object = np.array([layer.class_id >= 0 for layer in layers], dtype=bool)
    # Renumber the owner map from layer indices to annotation indices.
    annotation_index = np.full(len(layers) + 1, -1, dtype=np.int16)
    annotation_index[1:][is_object] = np.arange(int(is_object.sum()), dtype=np.int16)
    return SceneRender(
        image=image_u8,
        boxes_xyxy=boxes[is_object].reshape(-1, 4),
        class_ids=np.array(
            [layer.class_id for layer in layers if layer.class_id >= 0], dtype=np.int64
        ),
        owner=annotation_index[owner.astype(np.int32) + 1],
    )


# ---------------------------------------------------------------------------------------------
# Public dataset API
# ---------------------------------------------------------------------------------------------


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


class SyntheticScenes(collections.abc.Sequence[Sample]):
    """``num_images`` synthetic detection samples, rendered on demand (nothing is cached).

    ``scenes[i]`` is a :class:`~edgedet.data.sample.Sample` with ``image_id = i + 1`` and
    ``file_name = f"{i:06d}.jpg"``; it depends only on ``(seed, i, config)``.
    """

    def __init__(
        self, num_images: int, seed: int = 0, config: SyntheticConfig | None = None
    ) -> None:
        if not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
        self.num_images = int(num_images)
        self.seed = _check_seed(seed)
        self.config = config if config is not None else SyntheticConfig()
        self.config.validate()
        self.class_names: tuple[str, ...] = SYNTHETIC_CLASSES

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"SyntheticScenes indices must be integers, got {type(index)}")
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"image {index} out of range for {self.num_images} images")
        scene = render_scene(self.seed, int(index), self.config)
        return Sample(
            image=scene.image,
            boxes_xyxy=scene.boxes_xyxy,
            class_ids=scene.class_ids,
            image_id=int(index) + 1,
            file_name=f"{int(index):06d}{IMAGE_EXT}",
        )


def write_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    num_images: int,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    progress: bool = True,
) -> Path:
    """Render ``num_images`` scenes into ``out_dir/images/*.jpg`` + ``out_dir/annotations.json``.

    Category ids are ``1..K`` in :data:`SYNTHETIC_CLASSES` order.

    Returns:
        The path of ``annotations.json``.
    """
    scenes = SyntheticScenes(num_images, seed, config)
    check_dataset_folder(Path(out_dir))  # before the progress bar starts
    samples = tqdm(scenes, total=len(scenes), desc="synthetic images", disable=not progress)
    info = {
        "description": "edgedet synthetic scenes",
        "seed": scenes.seed,
        "config": asdict(scenes.config),
    }
    return write_coco_dataset(samples, out_dir, scenes.class_names, IMAGE_EXT, info=info)
