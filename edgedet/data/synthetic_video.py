"""The synthetic demo video: the still scenes' objects moving over a panning, relit scene.

:func:`render_synthetic_video` writes the video plus its per-frame COCO ground truth. Objects
are sprites (a shape drawn once upright, warped every frame); each frame is composited and
annotated with the layout helpers of :mod:`edgedet.data.synthetic`, so frames and stills share
one notion of "visible enough". Like the stills, the video is a pure function of its seed and
config.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgedet._io import write_json_atomic
from edgedet.data.coco import WRITER, sample_to_coco_annotations, written_by_edgedet
from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample
from edgedet.data.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticConfig,
    _check_seed,
    _composite,
    _paint_clutter,
    _soft_shadow,
)
from edgedet.data.synthetic_backgrounds import (
    add_sensor_noise,
    apply_lighting,
    fractal_noise,
    lighting_grid_size,
    render_background,
    to_uint8,
    tone_curve_lut,
)
from edgedet.data.synthetic_layout import (
    _OWNED_ALPHA,
    _is_visible_enough,
    _Layer,
    _overlap,
    _random_object_pose,
    _visible_boxes,
)
from edgedet.data.synthetic_shapes import (
    DISTRACTOR_KINDS,
    distractor_mask,
    object_texture,
    shape_mask,
)
from edgedet.video import AtomicVideoWriter, video_codecs

# SeedSequence entropy word that keeps the demo video's random stream apart from the stills'
# (stills use the image index there, and no dataset has 2**32 - 1 images).
_VIDEO_STREAM = 2**32 - 1



@dataclass
class _Sprite:
    """A shape that moves through the video, drawn once upright and warped every frame.

    ``rgba`` is ``float32 (h, w, 4)``: BGR texture plus alpha in ``[0, 255]``, centred.
    Motion: ``position(t) = start + velocity * t`` wrapped round a band ``margin`` px wider
    than the frame; ``angle(t) = angle0 + swing * sin(spin * t + phase)``; the size breathes by
    ``1 + zoom * sin(zoom_rate * t + phase)``.
    """

    rgba: np.ndarray
    class_id: int
    full_area: float
    start: np.ndarray
    velocity: np.ndarray
    margin: float
    angle0: float
    swing: float
    spin: float
    zoom: float
    zoom_rate: float
    phase: float
    shadow_offset: float
    shadow_darkness: float


def _make_sprite(
    rng: np.random.Generator,
    config: SyntheticConfig,
    class_id: int,
    size: float,
    light_angle: float,
    pan_margin: float,
) -> _Sprite:
    width, height = config.image_size
    if class_id >= 0:
        size_wh, _, flip = _random_object_pose(rng, config, class_id, size)
        # Drawn upright: the sprite's rotation is animated instead.
        mask, _, _ = shape_mask(class_id, (0.0, 0.0), size_wh, 0.0, flip)
    else:
        kind = DISTRACTOR_KINDS[int(rng.integers(len(DISTRACTOR_KINDS)))]
        mask, _, _ = distractor_mask(rng, kind, (0.0, 0.0), size)
    # Pad so rotation never cuts the corners off.
    pad = math.ceil(0.25 * max(mask.shape)) + 2
    mask = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    texture = object_texture(rng, *mask.shape, light_angle)
    rgba = np.dstack([texture, mask.astype(np.float32)])
    speed = rng.uniform(0.5, 4.0)  # px per frame
    heading = rng.uniform(0.0, 2.0 * np.pi)
    swing = rng.uniform(0.0, config.max_rotation_deg)
    return _Sprite(
        rgba=rgba,
        class_id=class_id,
        full_area=float(np.count_nonzero(mask >= _OWNED_ALPHA)),
        start=np.array([rng.uniform(0, width), rng.uniform(0, height)]),
        velocity=speed * np.array([math.cos(heading), math.sin(heading)]),
        margin=0.75 * max(mask.shape) + pan_margin + 2.0,
        angle0=rng.uniform(-1.0, 1.0) * (config.max_rotation_deg - swing),
        swing=swing,
        spin=rng.uniform(0.01, 0.08),
        zoom=rng.uniform(0.0, 0.15),
        zoom_rate=rng.uniform(0.01, 0.05),
        phase=rng.uniform(0.0, 2.0 * np.pi),
        shadow_offset=size * rng.uniform(0.04, 0.12) if rng.random() < config.shadow_prob else 0,
        shadow_darkness=rng.uniform(0.25, 0.55),
    )


def _sprite_at(
    sprite: _Sprite, t: int, camera_xy: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, int, int, float]:
    """Warp ``sprite`` to frame ``t``: ``(rgba patch (h, w, 4), x0, y0, scale)``."""
    span = np.array([width, height], dtype=np.float64) + 2.0 * sprite.margin
    world = (sprite.start + sprite.velocity * t + sprite.margin) % span - sprite.margin
    cx, cy = world - camera_xy
    angle = sprite.angle0 + sprite.swing * math.sin(sprite.spin * t + sprite.phase)
    scale = 1.0 + sprite.zoom * math.sin(sprite.zoom_rate * t + sprite.phase)
    h, w = sprite.rgba.shape[:2]
    out_h, out_w = math.ceil(h * scale) + 2, math.ceil(w * scale) + 2
    x0, y0 = math.floor(cx - out_w / 2.0), math.floor(cy - out_h / 2.0)
    # Rotate/scale about the sprite centre and put that centre at (cx, cy) - (x0, y0); warpAffine
    # works in pixel-centre coordinates, hence the -0.5 on both sides.
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), -angle, scale)
    matrix[:, 2] += np.array([cx - x0 - 0.5 - (w - 1) / 2.0, cy - y0 - 0.5 - (h - 1) / 2.0])
    patch = cv2.warpAffine(
        sprite.rgba,
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return patch, x0, y0, scale


def _render_video_frame(
    t: int,
    sprites: list[_Sprite],
    background: np.ndarray,
    scene: dict,
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, Sample]:
    """Frame ``t`` (``uint8 (H, W, 3)``) and its ground truth (hidden objects as iscrowd)."""
    width, height = config.image_size
    pan = scene["pan_margin"]
    camera = pan * (1.0 + 0.8 * np.sin(scene["pan_rate"] * t + scene["pan_phase"]))
    image = cv2.getRectSubPix(
        background, (width, height), (camera[0] + width / 2.0, camera[1] + height / 2.0)
    )
    camera_xy = camera - pan  # how far the view has moved from its rest position
    light_angle = scene["light_angle"] + 0.5 * math.sin(scene["light_rate"] * t)
    owner = np.full((height, width), -1, dtype=np.int16)
    placements = []
    for index, sprite in enumerate(sprites):
        patch, x0, y0, scale = _sprite_at(sprite, t, camera_xy, width, height)
        alpha = np.clip(patch[:, :, 3], 0, 255).astype(np.uint8)
        if sprite.shadow_offset:
            offset = sprite.shadow_offset * scale
            shadow, pad = _soft_shadow(alpha, 0.5 + 0.04 * max(alpha.shape))
            black = np.zeros((*shadow.shape, 3), dtype=np.float32)
            _composite(
                image,
                black,
                shadow,
                x0 - pad - round(offset * math.cos(light_angle)),
                y0 - pad - round(offset * math.sin(light_angle)),
                sprite.shadow_darkness,
            )
        _composite(image, np.ascontiguousarray(patch[:, :, :3]), alpha, x0, y0, 1.0)
        overlap = _overlap(x0, y0, *alpha.shape, width, height)
        if overlap is not None:
            image_slices, patch_slices = overlap
            owner[image_slices][alpha[patch_slices] >= _OWNED_ALPHA] = index
        placements.append((alpha, x0, y0, scale))

    layers = []
    for sprite, (alpha, x0, y0, scale) in zip(sprites, placements, strict=True):
        layer = _Layer(alpha, x0, y0, sprite.class_id, 0.0)
        # The whole shape's area, also when part of it is outside the frame.
        layer.full_area = int(sprite.full_area * scale * scale)
        layers.append(layer)
    all_boxes, counts = _visible_boxes(layers, owner)
    boxes, class_ids, iscrowd = [], [], []
    for layer, box, count in zip(layers, all_boxes, counts, strict=True):
        if layer.class_id < 0 or count == 0:
            continue
        boxes.append(box)
        class_ids.append(layer.class_id)
        iscrowd.append(not _is_visible_enough(box, int(count), layer, config))

    apply_lighting(
        image,
        light_angle,
        scene["light_gradient"],
        scene["blotches"],
        scene["vignette"],
        scene["white_balance"],
    )
    add_sensor_noise(rng, image, scene["noise_sigma"])
    frame = to_uint8(image, scene["tone_lut"])
    sample = Sample(
        image=frame,
        boxes_xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        class_ids=np.array(class_ids, dtype=np.int64),
        image_id=t + 1,
        file_name=f"frame_{t:06d}",
        iscrowd=np.array(iscrowd, dtype=bool),
    )
    return frame, sample


def _described_video(ground_truth: Path) -> str | None:
    """The video file name a ground truth this module wrote names (``info.video``)."""
    try:
        info = json.loads(ground_truth.read_text(encoding="utf-8")).get("info") or {}
    except (OSError, ValueError, AttributeError):
        return None
    video = info.get("video") if isinstance(info, dict) else None
    return str(video) if video else None


def render_synthetic_video(
    path: str | os.PathLike[str],
    num_frames: int,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    fps: float = 25,
    progress: bool = True,
) -> Path:
    """Write a demo video of synthetic objects moving over a panning, slowly relit scene.

    Objects glide at constant velocity (leaving one side and re-entering at the other), sway in
    rotation and size, and occlude each other freely. Next to the video, ``<stem>.json`` holds
    COCO ground truth per frame (image id = frame index + 1, file_name ``frame_{k:06d}``);
    objects less visible than ``min_visible_fraction`` / ``min_visible_side`` are marked
    ``iscrowd`` so evaluation ignores them rather than counting them as missed.

    Args:
        path: ``.mp4`` (written with the ``mp4v`` codec) or ``.avi`` (``MJPG``); a
            ``<stem>.json`` beside it must be absent or a ground truth this function wrote.

    Returns:
        ``path``. Both files are written atomically.
    """
    path = Path(path)
    video_codecs(path)  # an unknown extension fails before anything is rendered
    ground_truth = path.with_suffix(".json")
    if ground_truth.exists() and not written_by_edgedet(ground_truth):
        raise DatasetError(f"{ground_truth} exists and is not a ground truth edgedet wrote: "
                           f"the video's ground truth would replace it; move it or write the "
                           f"video elsewhere")
    described = _described_video(ground_truth)
    if described not in (None, path.name) and (path.parent / described).exists():
        raise DatasetError(f"{ground_truth} is the ground truth of {path.parent / described}, "
                           f"which would keep the labels of {path.name}; write the video under "
                           "another name")
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    seed = _check_seed(seed)
    config = config if config is not None else SyntheticConfig()
    config.validate()
    width, height = config.image_size

    rng = np.random.default_rng(np.random.SeedSequence([seed, _VIDEO_STREAM]))
    pan_margin = round(0.08 * min(width, height))
    light_angle = rng.uniform(0.0, 2.0 * np.pi)
    background = render_background(rng, width + 2 * pan_margin, height + 2 * pan_margin)
    clutter = int(rng.integers(config.min_distractors, config.max_distractors + 1))
    _paint_clutter(rng, background, round(clutter * config.clutter_fraction), config, light_angle)
    strength = config.lighting_strength
    scene = {
        "pan_margin": float(pan_margin),
        "pan_rate": 2.0 * np.pi / (fps * rng.uniform(6.0, 14.0)),
        "pan_phase": rng.uniform(0.0, 2.0 * np.pi, 2),
        "light_angle": light_angle,
        "light_rate": 2.0 * np.pi / (fps * rng.uniform(5.0, 12.0)),
        "light_gradient": strength * rng.uniform(0.3, 1.0),
        "blotches": strength * 0.5 * fractal_noise(rng, *lighting_grid_size(width, height), 1.5, 2),
        "vignette": strength * rng.uniform(0.0, 0.4),
        "white_balance": np.exp(rng.normal(0.0, 0.07, 3)),
        "noise_sigma": rng.uniform(0.0, config.max_noise_sigma),
        "tone_lut": tone_curve_lut(rng),
    }
    # Moving objects: no bigger than 40% of the short side, or they would bury everything.
    # A busy scene: at least half the maximum object count.
    n_objects = max(
        1,
        int(rng.integers(max(config.min_objects, config.max_objects // 2), config.max_objects + 1)),
    )
    max_size = max(config.min_object_size, min(config.max_object_px, 0.4 * min(width, height)))
    sizes = np.sort(
        np.exp(rng.uniform(math.log(config.min_object_size), math.log(max_size), n_objects))
    )[::-1]
    sprites = [
        _make_sprite(
            rng,
            config,
            int(rng.integers(len(SYNTHETIC_CLASSES))),
            float(s),
            light_angle,
            pan_margin,
        )
        for s in sizes
    ]
    n_moving_distractors = int(rng.integers(0, 3))
    for _ in range(n_moving_distractors):
        # Distractors from twice the smallest object size, or max_size where a small frame
        # (a short side under 40 px) leaves less room than that.
        low = math.log(min(config.min_object_size * 2, max_size))
        size = math.exp(rng.uniform(low, math.log(max_size)))
        sprites.insert(
            int(rng.integers(len(sprites) + 1)),
            _make_sprite(rng, config, -1, size, light_angle, pan_margin),
        )

    samples: list[Sample] = []
    # verify: a writer can open and still write frames OpenCV cannot read back; fail loudly.
    with AtomicVideoWriter(path, fps, verify=True) as writer:
        for t in tqdm(range(num_frames), desc="synthetic video", disable=not progress):
            frame, sample = _render_video_frame(t, sprites, background, scene, config, rng)
            writer.write(frame)
            samples.append(sample)
    write_json_atomic(path.with_suffix(".json"), _video_ground_truth(samples, path, fps, seed))
    return path


def _video_ground_truth(samples: list[Sample], video: Path, fps: float, seed: int) -> dict:
    """COCO ground truth of a synthetic video, one image entry per frame."""
    annotations: list[dict] = []
    for sample in samples:
        annotations.extend(sample_to_coco_annotations(sample, first_ann_id=len(annotations) + 1))
    return {
        "info": {
            "description": "edgedet synthetic video",
            "writer": WRITER,
            "video": video.name,
            "fps": fps,
            "seed": seed,
        },
        "images": [
            {"id": s.image_id, "file_name": s.file_name, "width": s.width, "height": s.height}
            for s in samples
        ],
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "shape"}
            for k, name in enumerate(SYNTHETIC_CLASSES)
        ],
    }
