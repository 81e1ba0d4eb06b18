"""Training augmentation in numpy/OpenCV, boxes kept consistent with the pixels.

Every transform takes and returns ``(image BGR uint8 (H, W, 3), boxes_xyxy (N, 4) float32,
labels (N,) int64)`` and draws its randomness from the ``numpy.random.Generator`` it is given,
so a sample's augmentation is a pure function of that generator's seed (the data pipeline
seeds it from ``(seed, epoch, index)``: the same on every worker count and after a resume).

Two recipes:

* ``SsdAugmentation`` (SSD, Liu et al. 2016, as in ssd.pytorch; used by PASSD and DAIPNet):
  photometric distortion, zoom-out (expand onto a mean-filled canvas up to 4x), IoU-constrained
  random crop (zoom-in), horizontal flip.
* ``RetinaAugmentation`` (RetinaNet / HAR-Net / DSANet): horizontal flip and scale jitter:
  the image is resized with its aspect ratio kept so that it fits the input at a random scale,
  then placed (smaller than the input) or cropped (larger) at a random position.

Resizing to the model input and normalisation are not done here: ``edgedet.preprocess`` does
them, exactly as the runtime will.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edgedet.preprocess import Interpolation

Boxes = np.ndarray
Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


def box_iou_one_to_many(box_xyxy: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """IoU of one box ``(4,)`` with ``boxes_xyxy (N, 4)`` → ``(N,)``."""
    lt = np.maximum(box_xyxy[:2], boxes_xyxy[:, :2])
    rb = np.minimum(box_xyxy[2:], boxes_xyxy[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area_a = (box_xyxy[2] - box_xyxy[0]) * (box_xyxy[3] - box_xyxy[1])
    area_b = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def drop_small_boxes(boxes_xyxy: Boxes, labels: np.ndarray, min_size: float) -> tuple[Boxes,
                                                                                        np.ndarray]:
    """Keep boxes whose width and height are both at least ``min_size`` pixels."""
    wh = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]
    keep = (wh >= min_size).all(axis=1)
    return boxes_xyxy[keep], labels[keep]


def horizontal_flip(image: np.ndarray, boxes_xyxy: Boxes) -> tuple[np.ndarray, Boxes]:
    """Mirror the image left-right; ``x1' = W - x2``, ``x2' = W - x1``."""
    width = image.shape[1]
    flipped = boxes_xyxy.copy()
    flipped[:, 0] = width - boxes_xyxy[:, 2]
    flipped[:, 2] = width - boxes_xyxy[:, 0]
    # cv2.flip: the same bytes as numpy's image[:, ::-1] copied, 12x faster (8 against 97 ms
    # for a 2000x1500 zoomed-out canvas).
    return cv2.flip(image, 1), flipped


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD's photometric distortion: brightness, contrast (before or after), saturation, hue.

    Each step happens with probability 1/2 (ssd.pytorch's ``PhotometricDistort`` without the
    channel swap, which would turn a red object blue and change what colour means).
    """
    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        out *= rng.uniform(0.5, 1.5)
    hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_BGR2HSV)
    if rng.random() < 0.5:
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0.0, 1.0)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-18, 18)) % 360.0  # OpenCV float hue: degrees
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0
    if not contrast_first and rng.random() < 0.5:
        out *= rng.uniform(0.5, 1.5)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def zoom_out(
    image: np.ndarray, boxes_xyxy: Boxes, rng: np.random.Generator,
    fill_bgr: Sequence[float], max_ratio: float = 4.0,
) -> tuple[np.ndarray, Boxes]:
    """Place the image at a random spot of a canvas ``ratio`` (1..max_ratio) times larger."""
    height, width = image.shape[:2]
    ratio = rng.uniform(1.0, max_ratio)
    canvas_w, canvas_h = int(width * ratio), int(height * ratio)
    left = int(rng.uniform(0, canvas_w - width))
    top = int(rng.uniform(0, canvas_h - height))
    fill = [int(v) for v in np.clip(np.round(np.asarray(fill_bgr, dtype=np.float32)), 0, 255)]
    # One OpenCV call builds the canvas: filling it from numpy broadcast a 3-vector over
    # (H, W, 3) and took 66 ms for a 2300x1700 canvas against 1.5 ms here (same bytes), the
    # largest cost of the whole SSD pipeline.
    canvas = cv2.copyMakeBorder(image, top, canvas_h - height - top, left,
                                canvas_w - width - left, cv2.BORDER_CONSTANT, value=fill)
    return canvas, boxes_xyxy + np.array([left, top, left, top], dtype=np.float32)


# ssd.pytorch's RandomSampleCrop modes: keep the whole image, or crop with a minimum IoU with
# some object of 0.1 .. 0.9, or crop without constraint.
_CROP_MIN_IOUS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.7, 0.9, -np.inf)


def iou_constrained_crop(
    image: np.ndarray, boxes_xyxy: Boxes, labels: np.ndarray, rng: np.random.Generator,
    trials: int = 50,
) -> Triple:
    """SSD's zoom-in: a random crop (0.3..1 of each side, aspect 0.5..2) whose IoU with at least
    one object reaches the drawn minimum; boxes whose centre falls outside are dropped, the
    rest clipped to the crop. Gives up (returns the input) when no trial satisfies the mode.
    """
    height, width = image.shape[:2]
    if len(boxes_xyxy) == 0:
        return image, boxes_xyxy, labels
    min_iou = _CROP_MIN_IOUS[int(rng.integers(len(_CROP_MIN_IOUS)))]
    if min_iou is None:
        return image, boxes_xyxy, labels
    for _ in range(trials):
        crop_w = rng.uniform(0.3 * width, width)
        crop_h = rng.uniform(0.3 * height, height)
        if not 0.5 <= crop_h / crop_w <= 2.0:
            continue
        left = rng.uniform(0, width - crop_w)
        top = rng.uniform(0, height - crop_h)
        rect = np.array([int(left), int(top), int(left + crop_w), int(top + crop_h)],
                        dtype=np.float32)
        if rect[2] - rect[0] < 2 or rect[3] - rect[1] < 2:
            continue
        if box_iou_one_to_many(rect, boxes_xyxy).max() < min_iou:
            continue
        centres = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2
        inside = ((centres > rect[:2]) & (centres < rect[2:])).all(axis=1)
        if not inside.any():
            continue
        x1, y1, x2, y2 = (int(v) for v in rect)
        cropped = np.ascontiguousarray(image[y1:y2, x1:x2])
        kept = boxes_xyxy[inside].copy()
        kept[:, :2] = np.maximum(kept[:, :2], rect[:2]) - rect[:2]
        kept[:, 2:] = np.minimum(kept[:, 2:], rect[2:]) - rect[:2]
        return cropped, kept, labels[inside]
    return image, boxes_xyxy, labels


@dataclass(frozen=True)
class SsdAugmentation:
    """SSD's training augmentation (PASSD sec. 6.1, DAIPNet: "the same as SSD").

    Attributes:
        fill_bgr: zoom-out canvas colour, BGR 0..255 (the normalisation mean, so the canvas is
            zero after normalisation, as in ssd.pytorch).
        expand_prob, max_expand_ratio: zoom-out probability and largest canvas factor.
        flip_prob: horizontal flip probability.
    """

    fill_bgr: tuple[float, float, float]
    expand_prob: float = 0.5
    max_expand_ratio: float = 4.0
    flip_prob: float = 0.5

    def __call__(self, image: np.ndarray, boxes_xyxy: Boxes, labels: np.ndarray,
                 rng: np.random.Generator) -> Triple:
        image = photometric_distort(image, rng)
        if rng.random() < self.expand_prob:
            image, boxes_xyxy = zoom_out(image, boxes_xyxy, rng, self.fill_bgr,
                                         self.max_expand_ratio)
        image, boxes_xyxy, labels = iou_constrained_crop(image, boxes_xyxy, labels, rng)
        if rng.random() < self.flip_prob:
            image, boxes_xyxy = horizontal_flip(image, boxes_xyxy)
        return image, boxes_xyxy, labels


@dataclass(frozen=True)
class RetinaAugmentation:
    """Horizontal flip and scale jitter onto the fixed model input (HAR-Net sec. V, DSANet).

    The image is resized (aspect kept) to ``s`` times the size that would just fit
    ``input_size``, ``s`` uniform in ``scale_range``, and pasted at a random offset onto an
    ``input_size`` canvas of ``pad_value`` (cropped at a random offset when larger). With
    ``s = 1`` this is a letterbox with a random pad split.

    Attributes:
        input_size: model input ``(width, height)``.
        scale_range: jitter range of ``s``.
        pad_value: canvas grey level (``PreprocessConfig.pad_value``).
        flip_prob: horizontal flip probability.
        interpolation: shrinking as ``PreprocessConfig.interpolation`` (``area`` or
            ``linear``), so training sees the runtime's kind of pixels.
    """

    input_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.75, 1.25)
    pad_value: float = 114.0
    flip_prob: float = 0.5
    interpolation: Interpolation = "area"

    def __call__(self, image: np.ndarray, boxes_xyxy: Boxes, labels: np.ndarray,
                 rng: np.random.Generator) -> Triple:
        if rng.random() < self.flip_prob:
            image, boxes_xyxy = horizontal_flip(image, boxes_xyxy)
        height, width = image.shape[:2]
        in_w, in_h = self.input_size
        scale = min(in_w / width, in_h / height) * rng.uniform(*self.scale_range)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        shrink = cv2.INTER_AREA if self.interpolation == "area" else cv2.INTER_LINEAR
        interp = shrink if new_w < width else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
        boxes = boxes_xyxy * np.array([new_w / width, new_h / height] * 2, dtype=np.float32)
        # Offset of the resized image on the canvas (negative = cropped on that side).
        off_x = int(rng.integers(0, in_w - new_w + 1)) if new_w <= in_w else \
            -int(rng.integers(0, new_w - in_w + 1))
        off_y = int(rng.integers(0, in_h - new_h + 1)) if new_h <= in_h else \
            -int(rng.integers(0, new_h - in_h + 1))
        canvas = np.full((in_h, in_w, 3), self.pad_value, dtype=np.uint8)
        src_x0, src_y0 = max(0, -off_x), max(0, -off_y)
        dst_x0, dst_y0 = max(0, off_x), max(0, off_y)
        copy_w = min(new_w - src_x0, in_w - dst_x0)
        copy_h = min(new_h - src_y0, in_h - dst_y0)
        canvas[dst_y0:dst_y0 + copy_h, dst_x0:dst_x0 + copy_w] = \
            resized[src_y0:src_y0 + copy_h, src_x0:src_x0 + copy_w]
        boxes = boxes + np.array([off_x, off_y, off_x, off_y], dtype=np.float32)
        boxes = np.clip(boxes, 0, np.array([in_w, in_h, in_w, in_h], dtype=np.float32))
        return canvas, boxes, labels
