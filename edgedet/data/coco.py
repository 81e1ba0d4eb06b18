"""COCO-format datasets: writing (used by the synthetic generator) and reading."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgedet._io import write_bytes_atomic, write_json_atomic
from edgedet.data.annotated import AnnotatedImageDataset, ImageRecord, check_class_names
from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample


def sample_to_coco_annotations(sample: Sample, first_ann_id: int) -> list[dict]:
    """COCO ``annotations`` entries for one sample (category ids are class id + 1)."""
    return coco_annotations(sample.image_id, sample.boxes_xyxy, sample.class_ids,
                            sample.iscrowd, first_ann_id, sample.areas)


def coco_annotations(image_id: int, boxes_xyxy: np.ndarray, class_ids: np.ndarray,
                     iscrowd: np.ndarray | None, first_ann_id: int,
                     areas: np.ndarray | None = None) -> list[dict]:
    """COCO ``annotations`` entries of one image's boxes (``(N, 4)`` xyxy pixels, 0-based
    class ids → category ids ``1..K``; coordinates rounded to 0.01 pixel); ``area`` is
    ``areas[k]`` where given (the file's), else the box's."""
    anns = []
    for k, (box, cls) in enumerate(zip(boxes_xyxy, class_ids, strict=True)):
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = x2 - x1, y2 - y1
        area = w * h if areas is None else float(areas[k])
        anns.append(
            {
                "id": first_ann_id + k,
                "image_id": int(image_id),
                "category_id": int(cls) + 1,
                "bbox": [round(x1, 2), round(y1, 2), round(w, 2), round(h, 2)],
                "area": round(area, 2),
                "iscrowd": int(bool(iscrowd[k])) if iscrowd is not None else 0,
            }
        )
    return anns


# Marks the files write_coco_dataset writes (info.writer), so that writing again over one of
# them is known to touch nothing of the user's. Datasets written before the mark carry
# "edgedet" in their description.
WRITER = "edgedet"
# Where the annotations of the dataset being replaced wait until the new ones are in place.
_PREVIOUS_ANNOTATIONS = ".annotations.json.previous"
# The images a run is writing, one name per line, each added before its file is written: a
# run interrupted before its annotations leaves them listed here for the next run to remove.
_WRITING_IMAGES = ".images-being-written"


def write_coco_dataset(
    samples: Iterable[Sample],
    out_dir: str | os.PathLike[str],
    class_names: Sequence[str],
    image_ext: str = ".png",
    info: dict | None = None,
) -> Path:
    """Write ``samples`` as ``out_dir/images/<file_name>`` plus ``out_dir/annotations.json``.

    Category ids are ``1..K`` in ``class_names`` order. ``out_dir`` must be new, empty, or a
    dataset this function wrote: a folder holding anything else is refused before a file is
    written (it would overwrite the user's images). Every file is written atomically and the
    annotations file last; the annotations of a dataset being replaced are moved aside
    first, so an interrupted run leaves a folder without ``annotations.json`` (which no
    reader takes for a dataset), never new images under old labels. Once the new annotations
    are in place, the images only the earlier ones listed are removed (a smaller dataset
    written again leaves no orphans, nor does a run after an interrupted one: each image's name
    is logged before it is written); no other file is touched.

    Returns:
        The path of the annotations file.

    Raises:
        DatasetError: ``out_dir`` is a file, or holds files of another dataset or program.
    """
    out_dir = Path(out_dir)
    check_dataset_folder(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_path = out_dir / "annotations.json"
    previous = out_dir / _PREVIOUS_ANNOTATIONS
    writing = out_dir / _WRITING_IMAGES
    earlier = _listed_images(ann_path) | _listed_images(previous) | _written_names(writing)
    if ann_path.exists() or earlier:
        write_json_atomic(previous, {"images": [{"file_name": name} for name in sorted(earlier)]})
        ann_path.unlink(missing_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    log = open(writing, "w", encoding="utf-8")  # noqa: SIM115 - closed below, or by the error
    try:
        for sample in samples:
            file_name = sample.file_name or f"{sample.image_id:06d}{image_ext}"
            ok, encoded = cv2.imencode(Path(file_name).suffix or image_ext, sample.image)
            if not ok:
                raise OSError(f"OpenCV could not encode image {file_name!r}")
            log.write(file_name + "\n")
            log.flush()
            write_bytes_atomic(image_dir / file_name, encoded.tobytes())
            images.append(
                {
                    "id": int(sample.image_id),
                    "file_name": file_name,
                    "width": sample.width,
                    "height": sample.height,
                }
            )
            annotations.extend(sample_to_coco_annotations(sample,
                                                          first_ann_id=len(annotations) + 1))
    finally:
        log.close()
    dataset = {
        "info": {**(info or {"description": "written by edgedet"}), "writer": WRITER},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "object"}
            for i, name in enumerate(class_names)
        ],
    }
    write_json_atomic(ann_path, dataset)
    for file_name in earlier - {image["file_name"] for image in images}:
        orphan = image_dir / file_name
        if image_dir.resolve() in orphan.resolve().parents:  # never outside images/
            orphan.unlink(missing_ok=True)
    previous.unlink(missing_ok=True)
    writing.unlink(missing_ok=True)
    return ann_path


def _written_names(log: Path) -> set[str]:
    """The image names an interrupted run's log lists (none without one)."""
    try:
        return {line for line in log.read_text(encoding="utf-8").splitlines() if line}
    except (OSError, UnicodeDecodeError):
        return set()


def check_dataset_folder(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that ``write_coco_dataset`` could not write without touching
    files it did not write: a file, or a non-empty folder that is not one of its datasets
    (finished, or interrupted while replacing one)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"{out_dir} is a file; give a folder for the dataset")
    if not out_dir.is_dir() or all(entry.name.startswith(".") for entry in out_dir.iterdir()):
        return  # new, or empty but for hidden files (a file manager's .DS_Store)
    if ((out_dir / _PREVIOUS_ANNOTATIONS).is_file() or (out_dir / _WRITING_IMAGES).is_file()
            or written_by_edgedet(out_dir / "annotations.json")):
        return
    found = sorted(entry.name for entry in out_dir.iterdir() if not entry.name.startswith("."))
    raise DatasetError(
        f"{out_dir} already holds files that are not a dataset edgedet wrote "
        f"({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); writing there would "
        "overwrite them: give a new or empty folder")


def written_by_edgedet(ann_path: Path) -> bool:
    """True when ``ann_path`` is a COCO file edgedet wrote (a dataset's annotations, a
    synthetic video's ground truth)."""
    try:
        info = json.loads(ann_path.read_text(encoding="utf-8")).get("info") or {}
        return info.get("writer") == WRITER or WRITER in str(info.get("description", ""))
    except (OSError, ValueError, AttributeError):
        return False


def _listed_images(ann_path: Path) -> set[str]:
    """The image file names an existing annotations file lists (none if it is unreadable)."""
    try:
        dataset = json.loads(ann_path.read_text(encoding="utf-8"))
        return {str(image["file_name"]) for image in dataset["images"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def load_json_file(path: Path) -> Any:
    """Parse a JSON file, turning a missing file or bad JSON into a ``DatasetError``."""
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as handle:  # as the text readers: a BOM is fine
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from error


def _required_list(dataset: dict, key: str, source: Path) -> list:
    value = dataset.get(key)
    if not isinstance(value, list):
        raise DatasetError(f"{source}: expected a list under {key!r}, found {type(value).__name__}")
    return value


def crowd_flag(annotation: dict, source: object) -> bool:
    """An annotation's ``iscrowd`` (0 or 1, or absent: 0); DatasetError for anything else
    (``bool("0")`` is True: a string "0" would silently mark the object a crowd)."""
    value = annotation.get("iscrowd", 0)
    if isinstance(value, bool) or value not in (0, 1):
        raise DatasetError(f"{source}: annotation id {annotation.get('id')!r} has iscrowd "
                           f"{value!r}; expected 0 or 1")
    return bool(value)


def _int_field(entry: Any, key: str, what: str, source: Path) -> int:
    value = entry.get(key) if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{source}: {what} has no integer {key!r} (found {value!r})")
    return value


def _bbox_xywh(annotation: dict, source: Path) -> tuple[float, float, float, float]:
    bbox = annotation.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox)
        or not all(math.isfinite(v) for v in bbox)
    ):
        raise DatasetError(
            f"{source}: annotation id {annotation.get('id')!r} has bbox {bbox!r}; "
            "expected [x, y, width, height] as 4 finite numbers"
        )
    x, y, w, h = (float(v) for v in bbox)
    return x, y, w, h


def _area(annotation: dict, box_area: float, source: Path) -> float:
    """The annotation's ``area`` (pycocotools sorts objects into APs / APm / APl by it, and
    for a segmented object it is the mask's, not the box's), else the box's."""
    if annotation.get("area") is None:
        return box_area
    area = annotation["area"]
    if isinstance(area, bool) or not isinstance(area, Real) or not (math.isfinite(area)
                                                                    and area >= 0):
        raise DatasetError(f"{source}: annotation id {annotation.get('id')!r} has area "
                           f"{area!r}; expected a finite number >= 0")
    return float(area)


class CocoDataset(AnnotatedImageDataset):
    """A COCO-JSON object-detection dataset as a ``Sequence[Sample]``.

    Images are listed in the order of the file's ``images`` array (images without annotations
    are kept, with no boxes) and read from disk only when indexed. COCO category ids may have
    gaps (real COCO uses 1..90 for its 80 classes): categories are sorted by id and numbered
    0..K-1, so ``class_names[k]`` is the category whose COCO id is ``category_ids[k]`` — use
    ``category_ids`` to write predictions back in COCO ids. Boxes are converted from COCO's
    ``[x, y, width, height]`` to ``xyxy``; annotations with a non-positive width or height are
    skipped; ``iscrowd`` flags are kept.

    Args:
        annotations: the annotations JSON file, or a directory holding ``annotations.json`` and
            ``images/`` (the layout ``write_coco_dataset`` writes).
        image_dir: the folder that ``file_name`` s are relative to. Defaults to ``images/``
            beside the annotations file.

    Attributes:
        annotation_file: the JSON file read.
        image_dir: the image folder.
        category_ids: COCO category id of each class index.

    Raises:
        DatasetError: missing file or folder, invalid JSON, malformed entries, an annotation
            naming an unknown image or category, or no images.
    """

    def __init__(
        self, annotations: str | os.PathLike[str], image_dir: str | os.PathLike[str] | None = None
    ) -> None:
        annotation_file = Path(annotations)
        if annotation_file.is_dir():
            if image_dir is None:
                image_dir = annotation_file / "images"
            annotation_file = annotation_file / "annotations.json"
        elif image_dir is None:
            image_dir = annotation_file.parent / "images"
        self.annotation_file = annotation_file
        self.image_dir = Path(image_dir)

        dataset = load_json_file(annotation_file)
        if not isinstance(dataset, dict):
            raise DatasetError(f"{annotation_file}: expected a JSON object at the top level")
        if not self.image_dir.is_dir():
            raise DatasetError(
                f"image folder not found: {self.image_dir} (for {annotation_file}; "
                "pass image_dir= to say where the images are)"
            )

        categories = sorted(
            _required_list(dataset, "categories", annotation_file),
            key=lambda c: _int_field(c, "id", "a category", annotation_file),
        )
        self.category_ids: tuple[int, ...] = tuple(c["id"] for c in categories)
        if len(set(self.category_ids)) != len(self.category_ids):
            raise DatasetError(f"{annotation_file}: duplicate category ids {self.category_ids}")
        class_names = check_class_names(
            [str(c.get("name", c["id"])) for c in categories], str(annotation_file)
        )
        class_of_category = {cat_id: k for k, cat_id in enumerate(self.category_ids)}

        images = _required_list(dataset, "images", annotation_file)
        annotations_of_image: dict[int, list[dict]] = {}
        for image in images:
            image_id = _int_field(image, "id", "an image", annotation_file)
            if not isinstance(image.get("file_name"), str):
                raise DatasetError(f"{annotation_file}: image id {image_id} has no 'file_name'")
            if image_id in annotations_of_image:
                raise DatasetError(f"{annotation_file}: duplicate image id {image_id}")
            annotations_of_image[image_id] = []
        # Test-set files (image_info_test*.json) have no "annotations" key at all.
        listed = (_required_list(dataset, "annotations", annotation_file)
                  if "annotations" in dataset else [])
        for annotation in listed:
            image_id = _int_field(annotation, "image_id", "an annotation", annotation_file)
            if image_id not in annotations_of_image:
                raise DatasetError(
                    f"{annotation_file}: annotation id {annotation.get('id')!r} refers to "
                    f"image id {image_id}, which is not in 'images'"
                )
            annotations_of_image[image_id].append(annotation)

        records = []
        for image in images:
            boxes_xyxy, class_ids, iscrowd, areas = [], [], [], []
            for annotation in annotations_of_image[image["id"]]:
                category_id = _int_field(
                    annotation, "category_id", "an annotation", annotation_file
                )
                if category_id not in class_of_category:
                    raise DatasetError(
                        f"{annotation_file}: annotation id {annotation.get('id')!r} has "
                        f"category_id {category_id}, which is not in 'categories'"
                    )
                x, y, w, h = _bbox_xywh(annotation, annotation_file)
                if w <= 0 or h <= 0:
                    continue
                boxes_xyxy.append((x, y, x + w, y + h))
                class_ids.append(class_of_category[category_id])
                iscrowd.append(crowd_flag(annotation, annotation_file))
                areas.append(_area(annotation, w * h, annotation_file))
            records.append(
                ImageRecord(
                    image_path=self.image_dir / image["file_name"],
                    file_name=image["file_name"],
                    image_id=image["id"],
                    boxes_xyxy=np.array(boxes_xyxy, np.float32).reshape(-1, 4),
                    class_ids=np.array(class_ids, np.int64),
                    iscrowd=np.array(iscrowd, bool),
                    areas=np.array(areas, np.float32),
                )
            )
        super().__init__(records, class_names, source=str(annotation_file))
