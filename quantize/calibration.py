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
or ``coco:PATH`` / ``voc:PATH`` / ``yolo:PATH`` (``edgedet.data.open_dataset``). Synthetic
images are rendered at the size training used (the checkpoint's ``synthetic_size``, recorded
by ``train/main.py``; the model's input size for checkpoints without it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

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

    @property
    def sha256(self) -> str:
        return images_sha256(self.samples)

    def describe(self) -> dict:
        """``{"data", "seed", "num_images", "sha256"}`` (JSON-ready)."""
        return {"data": self.spec, "seed": self.seed, "num_images": len(self.samples),
                "sha256": self.sha256}


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
