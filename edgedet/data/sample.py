"""The one sample form every dataset reader and the synthetic generator produce."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """One annotated image.

    Attributes:
        image: BGR ``uint8 (H, W, 3)`` image, as OpenCV reads it.
        boxes_xyxy: ``(N, 4) float32`` boxes in image pixels, ``x1, y1, x2, y2`` with
            ``x2 > x1`` and ``y2 > y1`` (continuous coordinates: a box covering pixel columns
            0..9 is ``x1=0, x2=10``).
        class_ids: ``(N,) int64`` 0-based indices into the dataset's class list.
        image_id: the COCO image id (1-based for datasets edgedet writes).
        file_name: image path relative to the dataset's image folder.
        iscrowd: ``(N,) bool``; crowd / "difficult" regions evaluation ignores. Defaults to
            all False.
        areas: ``(N,) float32`` object areas in pixels as the dataset file gives them (COCO's
            ``area``, a segmentation's, which sorts objects into small / medium / large for
            APs / APm / APl); None: each box's width x height.
    """

    image: np.ndarray
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray
    image_id: int = 0
    file_name: str = ""
    iscrowd: np.ndarray | None = None
    areas: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes_xyxy = np.asarray(self.boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        if len(self.boxes_xyxy) != len(self.class_ids):
            raise ValueError(
                f"Sample {self.file_name!r}: {len(self.boxes_xyxy)} boxes but "
                f"{len(self.class_ids)} class ids"
            )
        if self.iscrowd is None:
            self.iscrowd = np.zeros(len(self.class_ids), dtype=bool)
        else:
            self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if self.areas is not None:
            self.areas = np.asarray(self.areas, dtype=np.float32).reshape(-1)
            if len(self.areas) != len(self.class_ids):
                raise ValueError(f"Sample {self.file_name!r}: {len(self.areas)} areas but "
                                 f"{len(self.class_ids)} boxes")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
