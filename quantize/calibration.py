"""Calibration and evaluation images: which split, preprocessed like the SDK, and their hashes.

Seeds of the built-in synthetic data (``train/data.py``: training uses seed S for the training
images and S+1 for validation, S = 0 by default):

=============  ====  ===============================================================
split          seed  used for
=============  ====  ===============================================================
train          0     training (``train/main.py`` default)
eval           1     the accuracy check (training's validation split)
calibration    2     INT8 calibration: disjoint from both
=============  ====  ===============================================================

A dataset is named by a spec: ``synthetic`` (default seed of its role), ``synthetic:SEED``,
or ``coco:PATH`` / ``voc:PATH`` / ``yolo:PATH`` (``edgedet.data.datasets.open_dataset``). Synthetic
images are rendered at the size training used (the checkpoint's ``synthetic_size``, recorded
by ``train/main.py``; the model's input size for checkpoints without it).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from edgedet.data.datasets import open_dataset
from edgedet.data.sample import Sample
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import PreprocessConfig, preprocess

TRAIN_SEED = 0
EVAL_SEED = 1
CALIBRATION_SEED = 2


@dataclass
class ImageSet:
    """Samples loaded into memory, with where they came from.

    Attributes:
        spec: the dataset spec with the seed made explicit (``synthetic:2``, ``coco:/d``).
        samples: the first ``num_images`` samples of the dataset, in order.
        class_names: the dataset's classes.
        seed: the synthetic seed, or None for a dataset on disk.
    """

    spec: str
    samples: list[Sample]
    class_names: tuple[str, ...]
    seed: int | None
    stats: dict | None = None

    @property
    def sha256(self) -> str:
        return images_sha256(self.samples)

    def describe(self) -> dict:
        """``{"data", "seed", "num_images", "sha256", "image_size"}`` (JSON-ready; image size
        ``[width, height]`` when every image has the same, else None, so that a synthetic set
        can be rendered again), plus ``"stats"`` once ``check_calibration`` measured them."""
        sizes = {(s.image.shape[1], s.image.shape[0]) for s in self.samples}
        described = {"data": self.spec, "seed": self.seed, "num_images": len(self.samples),
                     "sha256": self.sha256,
                     "image_size": list(sizes.pop()) if len(sizes) == 1 else None}
        if self.stats is not None:
            described["stats"] = self.stats
        return described


def open_image_set(spec: str, num_images: int, synthetic_size: tuple[int, int],
                   default_seed: int, progress: bool = True, what: str = "images") -> ImageSet:
    """Load the first ``num_images`` samples of the dataset ``spec`` (see the module docstring).

    Args:
        spec: ``synthetic``, ``synthetic:SEED`` or ``SCHEME:PATH``.
        num_images: how many images (fewer when the dataset is smaller).
        synthetic_size: ``(width, height)`` of synthetic images (those training validated
            on: the checkpoint's ``synthetic_size``, else the model input).
        default_seed: seed of a bare ``synthetic``.
        progress: show a progress bar while loading.
        what: the progress bar's label.

    Raises:
        ValueError: a bad spec or ``num_images`` < 1 (``DatasetError`` from the readers is a
            ``ValueError`` too).
    """
    if num_images < 1:
        raise ValueError(f"{what}: need at least 1 image, got {num_images}")
    scheme, _, rest = spec.partition(":")
    seed: int | None = None
    if scheme == "synthetic":
        try:
            seed = int(rest) if rest else default_seed
        except ValueError:
            raise ValueError(f"dataset spec {spec!r}: expected synthetic or synthetic:SEED "
                             "with an integer seed") from None
        dataset: Sequence[Sample] = SyntheticScenes(
            num_images, seed=seed, config=SyntheticConfig(image_size=tuple(synthetic_size)))
        spec = f"synthetic:{seed}"
    else:
        dataset = open_dataset(spec)
    count = min(num_images, len(dataset))
    samples = [dataset[i] for i in tqdm(range(count), desc=what, disable=not progress)]
    return ImageSet(spec, samples, tuple(dataset.class_names), seed)


def image_sha256(image: np.ndarray) -> str:
    """sha256 of one image's shape and bytes."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def images_sha256(samples: Sequence[Sample]) -> str:
    """sha256 over the images of ``samples`` in order (each image's shape, then its bytes)."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(str(sample.image.shape).encode())
        digest.update(np.ascontiguousarray(sample.image).tobytes())
    return digest.hexdigest()


def check_disjoint(calibration: ImageSet, evaluation: ImageSet) -> None:
    """Refuse calibration images that also appear in the eval set (compared by image hash).

    Raises:
        ValueError: naming how many images are shared and the two specs.
    """
    eval_hashes = {image_sha256(s.image) for s in evaluation.samples}
    shared = sum(image_sha256(s.image) in eval_hashes for s in calibration.samples)
    if shared:
        raise ValueError(f"{shared} of {len(calibration.samples)} calibration images "
                         f"({calibration.spec}) are also in the eval set ({evaluation.spec}); "
                         "calibrate on a disjoint split (e.g. another synthetic seed)")


def calibration_inputs(samples: Sequence[Sample], config: PreprocessConfig
                       ) -> list[np.ndarray]:
    """Each sample's image preprocessed exactly as ``Detector.detect`` does:
    a list of ``(1, 3, H, W)`` float32 arrays."""
    return [preprocess(sample.image, config)[0] for sample in samples]


# An image whose pixels vary less than this (std of uint8 values) is constant: black, white,
# a lens cap, a dead stream.
CONSTANT_STD = 2.0
# Warn when more than this share of the calibration images is constant.
CONSTANT_SHARE_WARNING = 0.25
# Warn when fewer than this share of the images differ (8x8 grey thumbnails compared).
DISTINCT_SHARE_WARNING = 0.5
# Warn when images are smaller than this fraction of the model input side: upscaled that
# much, they are not the frames the model will see.
SMALL_SIDE_WARNING = 0.25


def check_calibration(images: ImageSet, input_size: tuple[int, int]) -> list[str]:
    """Check calibration images, record their statistics in ``images.stats``, and return
    warnings (each also issued with ``warnings.warn``).

    INT8 scales are the ranges activations take on these images: an empty or constant set
    gives ranges that fit nothing, and near-duplicates or tiny images give ranges of one
    scene or of blur.

    Raises:
        ValueError: no images, or every image constant (the message says which data).
    """
    count = len(images.samples)
    if count == 0:
        raise ValueError(f"calibration data {images.spec} holds no images")
    stds = np.array([float(s.image.std()) for s in images.samples])
    constant = int((stds < CONSTANT_STD).sum())
    thumbnails = {_thumbnail_key(s.image) for s in images.samples}
    widths = [s.width for s in images.samples]
    heights = [s.height for s in images.samples]
    pixels = np.concatenate([s.image.reshape(-1, 3)[::97] for s in images.samples])
    images.stats = {
        "constant_images": constant, "distinct_images": len(thumbnails),
        "width_range": [min(widths), max(widths)], "height_range": [min(heights), max(heights)],
        "pixel_mean_bgr": [round(float(v), 2) for v in pixels.mean(axis=0)],
        "pixel_std_bgr": [round(float(v), 2) for v in pixels.std(axis=0)],
    }
    if constant == count:
        raise ValueError(f"calibration data {images.spec}: all {count} images are constant "
                         f"(pixel std < {CONSTANT_STD}, e.g. all black); INT8 ranges measured "
                         "on them would fit no real frame. Calibrate on real or synthetic "
                         "frames (--calib-data)")
    problems = []
    if constant > CONSTANT_SHARE_WARNING * count:
        problems.append(f"{constant} of {count} calibration images are constant (pixel std "
                        f"< {CONSTANT_STD}, e.g. black frames)")
    if len(thumbnails) < DISTINCT_SHARE_WARNING * count:
        problems.append(f"only {len(thumbnails)} of {count} calibration images differ "
                        "(near-duplicates, e.g. a static camera): ranges will fit one scene")
    small = min(min(widths) / input_size[0], min(heights) / input_size[1])
    if small < SMALL_SIDE_WARNING:
        problems.append(f"calibration images as small as {min(widths)}x{min(heights)} are "
                        f"upscaled {1 / small:.1f}x to the {input_size[0]}x{input_size[1]} "
                        "input: not the frames the model will see")
    images.stats["warnings"] = problems
    for problem in problems:
        warnings.warn(f"calibration data {images.spec}: {problem}", stacklevel=2)
    return problems


def _thumbnail_key(image: np.ndarray) -> bytes:
    """8x8 grey thumbnail in 16 levels: equal for near-identical frames (noise, compression)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (8, 8), interpolation=cv2.INTER_AREA)
    return (small // 16).astype(np.uint8).tobytes()
