"""Shared by the INT8 tests of both targets: calibration / eval inputs and output similarity."""

from __future__ import annotations

import numpy as np

from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import PreprocessConfig
from quantize.calibration import calibration_inputs


def synthetic_inputs(input_size: tuple[int, int], count: int, seed: int) -> list[np.ndarray]:
    """``count`` preprocessed synthetic images ``(1, 3, H, W)`` of generator seed ``seed``."""
    scenes = SyntheticScenes(count, seed=seed, config=SyntheticConfig(image_size=input_size))
    return calibration_inputs(list(scenes), PreprocessConfig(input_size=input_size))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
