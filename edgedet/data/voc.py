"""Pascal VOC datasets (VOCdevkit layout, one XML file per image)."""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgedet.data.annotated import AnnotatedImageDataset, ImageRecord, check_class_names
from edgedet.data.errors import DatasetError, read_text_file

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _child_text(element: ET.Element, tag: str, xml_path: Path) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{xml_path}: <{element.tag}> has no <{tag}>")
    return child.text.strip()


def _coordinate(bndbox: ET.Element, tag: str, xml_path: Path) -> float:
    text = _child_text(bndbox, tag, xml_path)
    try:
        value = float(text)  # some tools write fractional coordinates ("12.5")
    except ValueError:
        raise DatasetError(f"{xml_path}: <{tag}> is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{xml_path}: <{tag}> is {text!r}, not a finite number")
    return value


def read_voc_xml(
    xml_path: Path, class_index: dict[str, int], keep_difficult: bool
) -> tuple[str | None, np.ndarray, np.ndarray, np.ndarray]:
    """Parse one VOC annotation file.

    Returns:
        ``(filename or None, boxes_xyxy (N, 4) float32, class_ids (N,) int64, difficult (N,)
        bool)`` with boxes in continuous 0-based pixel coordinates.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise DatasetError(f"{xml_path}: not valid XML ({error})") from error
    if root.tag != "annotation":  # another XML file would read as an image without objects
        raise DatasetError(f"{xml_path}: not a VOC annotation (its root is <{root.tag}>)")
    filename_element = root.find("filename")
    filename = None
    if filename_element is not None and filename_element.text and filename_element.text.strip():
        filename = filename_element.text.strip()

    boxes_xyxy, class_ids, difficult = [], [], []
    for obj in root.iter("object"):
        name = _child_text(obj, "name", xml_path)
        if name not in class_index:
            raise DatasetError(
                f"{xml_path}: unknown class name {name!r} (known: {', '.join(class_index)})"
            )
        difficult_text = obj.findtext("difficult", default="0").strip()
        is_difficult = difficult_text in ("1", "true")
        if is_difficult and not keep_difficult:
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{xml_path}: object {name!r} has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _coordinate(bndbox, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        if xmax < xmin or ymax < ymin:
            raise DatasetError(
                f"{xml_path}: object {name!r} has xmin,ymin,xmax,ymax = "
                f"{xmin:g},{ymin:g},{xmax:g},{ymax:g} (max below min)"
            )
        # VOC coordinates are 1-based, inclusive pixel indices: xmin=1, xmax=10 covers the first
        # ten pixel columns, which in continuous 0-based coordinates (Sample's convention) is
        # the interval [0, 10]. Hence x1 = xmin - 1 while x2 = xmax stays.
        boxes_xyxy.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        class_ids.append(class_index[name])
        difficult.append(is_difficult)
    return (
        filename,
        np.array(boxes_xyxy, np.float32).reshape(-1, 4),
        np.array(class_ids, np.int64),
        np.array(difficult, bool),
    )


class VocDataset(AnnotatedImageDataset):
    """A Pascal VOC dataset as a ``Sequence[Sample]``.

    Layout (one year's folder of a VOCdevkit, e.g. ``VOCdevkit/VOC2007``)::

        root/Annotations/<id>.xml
        root/JPEGImages/<id>.jpg          (or the XML's <filename>)
        root/ImageSets/Main/<split>.txt   (one <id> per line)

    When ``root/ImageSets/Main/`` does not exist at all, every ``Annotations/*.xml`` is used,
    sorted by name, whatever ``split`` says (custom VOC-format sets often have no split files).
    When it exists but ``<split>.txt`` does not, that is an error naming the splits there are,
    since a mistyped split silently reading everything would mix training and test images.

    Boxes are converted from VOC's 1-based pixel indices to continuous 0-based ``xyxy``
    (``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``). Objects marked ``difficult`` are
    kept with ``iscrowd=True``, so COCO evaluation ignores them as VOC's does (or dropped when
    ``keep_difficult=False``). Image ids are 1..N in split order.

    Args:
        root: the dataset folder holding ``Annotations/`` and ``JPEGImages/``.
        split: the ``ImageSets/Main`` list to read.
        class_names: object names in class-index order; any other name in an XML is an error.
        keep_difficult: keep difficult objects (as crowd regions) or drop them.

    Raises:
        DatasetError: a missing folder or file, invalid XML, an unknown class name, a malformed
            box, or no images.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "trainval",
        class_names: Sequence[str] = VOC_CLASSES,
        keep_difficult: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        annotation_dir = self.root / "Annotations"
        image_dir = self.root / "JPEGImages"
        for folder in (annotation_dir, image_dir):
            if not folder.is_dir():
                raise DatasetError(f"VOC folder not found: {folder}")
        names = check_class_names(class_names, str(self.root))
        class_index = {name: k for k, name in enumerate(names)}

        split_dir = self.root / "ImageSets" / "Main"
        split_file = split_dir / f"{split}.txt"
        if split_file.is_file():
            lines = read_text_file(split_file).splitlines()
            # Per-class lists (ImageSets/Main/cat_train.txt) have "<id> <flag>"; keep the id.
            ids = [line.split()[0] for line in lines if line.strip()]
            source = str(split_file)
        elif split_dir.is_dir():
            available = sorted(p.stem for p in split_dir.glob("*.txt") if "_" not in p.stem)
            raise DatasetError(f"VOC split file not found: {split_file} (available: {available})")
        else:
            ids = sorted(p.stem for p in annotation_dir.glob("*.xml"))
            source = str(annotation_dir)

        records = []
        for image_id, stem in enumerate(ids, start=1):
            xml_path = annotation_dir / f"{stem}.xml"
            if not xml_path.is_file():
                raise DatasetError(
                    f"VOC annotation file not found: {xml_path} (listed in {source})"
                )
            filename, boxes_xyxy, class_ids, difficult = read_voc_xml(
                xml_path, class_index, keep_difficult
            )
            file_name = filename or f"{stem}.jpg"
            records.append(
                ImageRecord(
                    image_path=image_dir / file_name,
                    file_name=file_name,
                    image_id=image_id,
                    boxes_xyxy=boxes_xyxy,
                    class_ids=class_ids,
                    iscrowd=difficult,
                )
            )
        super().__init__(records, names, source=source)
