"""The shared base of the dataset readers: annotations parsed up front, images read lazily."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import SupportsIndex

import cv2
import numpy as np

from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample
from edgedet.image_io import ImageReadError, read_image

# IMREAD_IGNORE_ORIENTATION: annotation tools label the pixels as stored, but OpenCV would
# otherwise rotate JPEGs that carry an EXIF orientation tag, and the boxes would no longer fit.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image_bgr(path: Path) -> np.ndarray:
    """Read an image file as BGR ``uint8 (H, W, 3)`` (grey and 16-bit images are converted).

    Raises:
        DatasetError: the file does not exist, or it is truncated, corrupt or not an image
            (``edgedet.image_io.read_image`` checks that the file is complete: OpenCV alone
            returns a half-grey image for a truncated JPEG).
    """
    if not path.is_file():
        raise DatasetError(f"image file not found: {path}")
    try:
        return read_image(path, _IMREAD_FLAGS)
    except ImageReadError as error:
        raise DatasetError(str(error)) from error


@dataclass(frozen=True)
class ImageRecord:
    """Everything about one image except its pixels.

    Attributes:
        image_path: where the image file is.
        file_name: the image path relative to the dataset's image folder (POSIX separators).
        image_id: the image's id (the COCO id, or 1..N in reading order for VOC and YOLO).
        boxes_xyxy: ``(N, 4) float32`` ``x1, y1, x2, y2`` in pixels or, when
            ``boxes_are_relative``, as fractions of the image width and height (YOLO labels,
            whose pixel size is only known once the image is read).
        class_ids: ``(N,) int64`` 0-based class indices.
        iscrowd: ``(N,) bool`` regions evaluation ignores (COCO crowd, VOC difficult).
        boxes_are_relative: see ``boxes_xyxy``.
        areas: ``(N,) float32`` object areas the file gives (COCO), or None (``Sample.areas``).
    """

    image_path: Path
    file_name: str
    image_id: int
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    iscrowd: np.ndarray
    boxes_are_relative: bool = False
    areas: np.ndarray | None = None


class AnnotatedImageDataset(Sequence[Sample]):
    """A ``Sequence[Sample]`` over ``ImageRecord`` s; ``dataset[i]`` reads image ``i`` from disk.

    Attributes:
        class_names: the class list; ``Sample.class_ids`` index into it.
        source: the path the dataset was read from, for messages.
    """

    def __init__(self, records: list[ImageRecord], class_names: Sequence[str], source: str) -> None:
        if not records:
            raise DatasetError(f"{source}: the dataset holds no images")
        self._records = records
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.source = source

    @property
    def num_objects(self) -> int:
        """Annotated objects over all images (crowd regions included)."""
        return sum(len(record.class_ids) for record in self._records)

    @property
    def image_ids(self) -> tuple[int, ...]:
        """The image id of every sample, in dataset order."""
        return tuple(record.image_id for record in self._records)

    @property
    def file_names(self) -> tuple[str, ...]:
        """The file name of every sample, relative to the image folder, in dataset order."""
        return tuple(record.file_name for record in self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: SupportsIndex) -> Sample:  # type: ignore[override]
        # Slices are not supported: they would read every image in the slice at once.
        record = self._records[operator.index(index)]
        image = read_image_bgr(record.image_path)
        boxes_xyxy = record.boxes_xyxy
        if record.boxes_are_relative:
            height, width = image.shape[:2]
            boxes_xyxy = boxes_xyxy * np.array([width, height, width, height], dtype=np.float32)
        return Sample(
            image=image,
            boxes_xyxy=boxes_xyxy.copy(),
            class_ids=record.class_ids.copy(),
            image_id=record.image_id,
            file_name=record.file_name,
            iscrowd=record.iscrowd.copy(),
            areas=None if record.areas is None else record.areas.copy(),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source!r}: {len(self)} images, "
            f"{len(self.class_names)} classes)"
        )


def check_class_names(class_names: Sequence[str], source: str) -> tuple[str, ...]:
    """Return ``class_names`` as a tuple after checking it is non-empty with no duplicates."""
    names = tuple(str(name) for name in class_names)
    if not names:
        raise DatasetError(f"{source}: the class list is empty")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{source}: duplicate class names {duplicates}")
    return names


def empty_annotations() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes_xyxy (0, 4) float32, class_ids (0,) int64, iscrowd (0,) bool)``."""
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
