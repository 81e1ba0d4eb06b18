"""Dataset readers refuse a truncated image, naming it, instead of training on half a frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data.annotated import read_image_bgr
from edgedet.data.errors import DatasetError


def test_a_truncated_jpeg_in_a_dataset_is_an_error_naming_it(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    path = tmp_path / "frame.jpg"
    cv2.imwrite(str(path), image)
    assert read_image_bgr(path).shape == (64, 80, 3)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"frame\.jpg.*truncated"):
        read_image_bgr(path)
    with pytest.raises(DatasetError, match="not found"):
        read_image_bgr(tmp_path / "missing.jpg")
