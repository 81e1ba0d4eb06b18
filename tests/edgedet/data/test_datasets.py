"""open_dataset: SCHEME:PATH specs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data.coco import CocoDataset
from edgedet.data.datasets import open_dataset
from edgedet.data.errors import DatasetError
from edgedet.data.voc import VocDataset
from edgedet.data.yolo import YoloDataset


def _write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((20, 30, 3), np.uint8))


def _coco(root: Path) -> Path:
    _write_image(root / "images" / "x.png")
    dataset = {
        "images": [{"id": 1, "file_name": "x.png", "width": 30, "height": 20}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
    }
    (root / "annotations.json").write_text(json.dumps(dataset))
    return root


def _voc(root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    for stem in ("a", "b"):
        _write_image(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(
            "<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    return root


def _yolo(root: Path) -> Path:
    _write_image(root / "images" / "val" / "x.png")
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "classes.txt").write_text("thing\n")
    return root


def test_each_scheme(tmp_path: Path) -> None:
    coco = open_dataset(f"coco:{_coco(tmp_path / 'coco')}")
    assert isinstance(coco, CocoDataset) and coco.class_names == ("thing",)
    np.testing.assert_allclose(coco[0].boxes_xyxy, [[1, 2, 4, 6]])
    coco_file = open_dataset(f"coco:{tmp_path / 'coco' / 'annotations.json'}")
    assert len(coco_file) == 1

    voc_root = _voc(tmp_path / "voc")
    voc = open_dataset(f"voc:{voc_root}")
    assert isinstance(voc, VocDataset) and voc.file_names == ("a.jpg", "b.jpg")  # trainval
    assert open_dataset(f"voc:{voc_root}", split="val").file_names == ("b.jpg",)

    yolo = open_dataset(f"yolo:{_yolo(tmp_path / 'yolo')}", split="val")
    assert isinstance(yolo, YoloDataset)
    np.testing.assert_allclose(yolo[0].boxes_xyxy, [[7.5, 5, 22.5, 15]])


def test_path_may_contain_colons(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "run:3")
    assert len(open_dataset(f"yolo:{root}", split="val")) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("imagenet:/data", "expected SCHEME:PATH with SCHEME one of coco, voc, yolo"),
        ("/data/coco", "expected SCHEME:PATH"),
        ("synthetic", "expected SCHEME:PATH"),
        ("voc:", "no path after 'voc:'"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        open_dataset(spec)


def test_reader_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="COCO datasets have no split"):
        open_dataset(f"coco:{_coco(tmp_path)}", split="val")
    with pytest.raises(DatasetError, match="annotation file not found"):
        open_dataset(f"coco:{tmp_path / 'missing.json'}")
