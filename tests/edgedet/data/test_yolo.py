"""YoloDataset and the small data.yaml parser."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data.errors import DatasetError
from edgedet.data.yolo import YoloDataset, parse_data_yaml


def _write_yolo(root: Path, split: str | None = "train", names: str | None = None) -> Path:
    """Two images (100 wide × 50 high, and 40 × 40) and one label file."""
    image_dir = root / "images" / split if split else root / "images"
    label_dir = root / "labels" / split if split else root / "labels"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    cv2.imwrite(str(image_dir / "a.png"), np.zeros((50, 100, 3), np.uint8))
    cv2.imwrite(str(image_dir / "b.jpg"), np.zeros((40, 40, 3), np.uint8))
    (image_dir / "notes.md").write_text("not an image")
    (label_dir / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.05 0.9 0.2 0.4\n2 0.5 0.5 0 0.1\n")
    # b.jpg has no label file: an image without objects.
    (root / "data.yaml").write_text(names if names is not None else "names: [cat, dog, bird]\n")
    return root


def test_reads_normalised_boxes_in_pixels(tmp_path: Path) -> None:
    dataset = YoloDataset(_write_yolo(tmp_path), split="train")
    assert dataset.class_names == ("cat", "dog", "bird")
    assert dataset.file_names == ("a.png", "b.jpg")  # only image files, sorted
    assert dataset.image_ids == (1, 2)

    sample = dataset[0]
    assert sample.image.shape == (50, 100, 3)
    # cx=0.5·100=50, w=0.2·100=20 → x 40..60; cy=0.5·50=25, h=0.4·50=20 → y 15..35.
    # The second box (cx=0.05, w=0.2) reaches x=-5: clipped to 0; cy=0.9, h=0.4 → y 35..55 → 50.
    # The zero-width third box is skipped.
    np.testing.assert_allclose(sample.boxes_xyxy, [[40, 15, 60, 35], [0, 35, 15, 50]], atol=1e-4)
    np.testing.assert_array_equal(sample.class_ids, [1, 0])
    np.testing.assert_array_equal(sample.iscrowd, [False, False])

    unlabelled = dataset[1]
    assert unlabelled.boxes_xyxy.shape == (0, 4) and unlabelled.class_ids.shape == (0,)


def test_no_split_level(tmp_path: Path) -> None:
    dataset = YoloDataset(_write_yolo(tmp_path, split=None))
    assert len(dataset) == 2 and dataset[0].boxes_xyxy.shape == (2, 4)


@pytest.mark.parametrize(
    "yaml_text",
    [
        "names: ['cat', \"dog\", bird]  # flow list\n",
        "path: ../datasets/x\ntrain: images/train\nnc: 3\nnames:\n  - cat\n  - dog\n  - bird\n",
        "names:\n- cat\n- dog   # comment\n- bird\n",
        "names:\n  0: cat\n  1: dog\n\n  2: bird\ndownload: |\n  echo hi\n",
        "names: {0: cat, 1: 'dog', 2: bird}\n",
        "# Roboflow\nnames: [\n  cat,  # first\n  dog,\n  bird]\nnc: 3\n",
    ],
    ids=["flow-list", "block-list", "block-list-col0", "block-map", "flow-map", "multiline"],
)
def test_data_yaml_name_styles(tmp_path: Path, yaml_text: str) -> None:
    dataset = YoloDataset(_write_yolo(tmp_path, names=yaml_text), split="train")
    assert dataset.class_names == ("cat", "dog", "bird")


def test_parse_data_yaml_keys_and_quoting() -> None:
    text = (
        "path: 'C:/data/coco8'  # where\n"
        "train: images/train\n"
        'val: "images/val # not a comment"\n'
        "names: [men's, 'it''s', \"a, b\"]\n"
        "roboflow:\n  workspace: w\n  version: 2\n"
    )
    assert parse_data_yaml(text) == {
        "path": "C:/data/coco8",
        "train": "images/train",
        "val": "images/val # not a comment",
        "names": ["men's", "it's", "a, b"],
        "roboflow": {"workspace": "w", "version": "2"},
    }


def test_class_name_sources_in_order(tmp_path: Path) -> None:
    root = _write_yolo(tmp_path)
    (root / "classes.txt").write_text("x\ny\nz\n")
    assert YoloDataset(root, "train", class_names=["p", "q", "r"]).class_names == ("p", "q", "r")
    assert YoloDataset(root, "train").class_names == ("cat", "dog", "bird")  # data.yaml first
    (root / "data.yaml").unlink()
    assert YoloDataset(root, "train").class_names == ("x", "y", "z")
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="no class names"):
        YoloDataset(root, "train")


def test_split_folder_from_data_yaml(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _write_yolo(root / "extra", split="tr")
    (root / "data.yaml").write_text("train: extra/images/tr\nnames: [a, b, c]\n")
    dataset = YoloDataset(root, split="train")
    assert dataset.image_dir == root / "extra" / "images" / "tr"
    assert dataset.label_dir == root / "extra" / "labels" / "tr"
    assert len(dataset[0].boxes_xyxy) == 2
    (root / "data.yaml").write_text("train: train.txt\nnames: [a, b, c]\n")
    with pytest.raises(DatasetError, match="image-list file"):
        YoloDataset(root, split="train")


@pytest.mark.parametrize(
    ("label_text", "message"),
    [
        ("1 0.5 0.5 0.2\n", r"a.txt:1: expected 5 fields 'class cx cy w h', found 4"),
        ("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.2 0.1 0.3 0.3\n", "a.txt:2: .*found 7 .*polygon"),
        ("1 0.5 half 0.2 0.4\n", r"a.txt:1: non-numeric value in '1 0.5 half 0.2 0.4'"),
        ("dog 0.5 0.5 0.2 0.4\n", "a.txt:1: non-numeric"),
        ("3 0.5 0.5 0.2 0.4\n", "a.txt:1: class id 3 is out of range for 3 classes"),
        ("-1 0.5 0.5 0.2 0.4\n", "a.txt:1: class id -1 is out of range"),
        ("0 50 25 20 20\n", r"a.txt:1: cx cy w h must be fractions .* found 50 25 20 20"),
        ("0 0.5 0.5 nan 0.4\n", "a.txt:1: cx cy w h must be fractions"),
    ],
    ids=[
        "4-fields",
        "polygon",
        "non-numeric",
        "class-name",
        "class-high",
        "class-negative",
        "pixels",
        "nan",
    ],
)
def test_malformed_label_lines(tmp_path: Path, label_text: str, message: str) -> None:
    root = _write_yolo(tmp_path)
    (root / "labels" / "train" / "a.txt").write_text(label_text)
    with pytest.raises(DatasetError, match=message):
        YoloDataset(root, split="train")


def test_missing_folders_and_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="YOLO dataset folder not found"):
        YoloDataset(tmp_path / "nothing", class_names=["a"])
    root = _write_yolo(tmp_path / "set")
    with pytest.raises(DatasetError, match=r"image folder not found: .*images/val"):
        YoloDataset(root, split="val")
    # No split given but the images are in split folders: say so.
    with pytest.raises(DatasetError, match=r"no images in .*subfolders \['train'\]: pass split="):
        YoloDataset(root)
    for path in (root / "images" / "train").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="no images in"):
        YoloDataset(root, split="train")
    (root / "labels" / "train" / "a.txt").unlink()
    (root / "labels" / "train").rmdir()
    with pytest.raises(DatasetError, match=r"label folder not found: .*labels/train"):
        YoloDataset(root, split="train")


def test_corrupt_image_fails_when_read(tmp_path: Path) -> None:
    root = _write_yolo(tmp_path)
    (root / "images" / "train" / "b.jpg").write_bytes(np.random.default_rng(2).bytes(400))
    dataset = YoloDataset(root, split="train")
    assert dataset[0].image.shape == (50, 100, 3)
    with pytest.raises(DatasetError, match=r"cannot read image .*b\.jpg"):
        dataset[1]


def test_byte_order_marks_are_stripped_and_other_encodings_named(tmp_path: Path) -> None:
    # Windows editors start UTF-8 files with a BOM; left in, it became part of the first
    # class name ('\ufeffcat') or made data.yaml's names: key unreadable.
    root = _write_yolo(tmp_path)
    (root / "data.yaml").write_bytes(b"\xef\xbb\xbfnames: [cat, dog, bird]\n")
    label = root / "labels" / "train" / "a.txt"
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes())
    dataset = YoloDataset(root, split="train")
    assert dataset.class_names == ("cat", "dog", "bird")
    np.testing.assert_array_equal(dataset[0].class_ids, [1, 0])
    label.write_bytes("1 0.5 0.5 0.2 0.4 # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"a\.txt: not UTF-8 text"):
        YoloDataset(root, split="train")
