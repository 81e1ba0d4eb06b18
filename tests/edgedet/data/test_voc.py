"""VocDataset: Pascal VOC XML datasets in the VOCdevkit layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data.errors import DatasetError
from edgedet.data.voc import VOC_CLASSES, VocDataset


def _xml(filename: str | None, objects: list[tuple[str, int, tuple[float, ...]]]) -> str:
    """A VOC annotation; each object is ``(name, difficult, (xmin, ymin, xmax, ymax))``."""
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
        f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        for name, difficult, box in objects
    )
    filename_tag = f"<filename>{filename}</filename>" if filename else ""
    return (
        f"<annotation><folder>VOC2007</folder>{filename_tag}"
        f"<size><width>80</width><height>60</height><depth>3</depth></size>{body}</annotation>"
    )


def _write_voc(root: Path, with_split_files: bool = True) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    annotations = {
        "000005": _xml("000005.jpg", [("dog", 0, (11, 21, 50, 40)), ("person", 1, (1, 1, 80, 60))]),
        "000002": _xml("000002.jpg", [("tvmonitor", 0, (30.5, 2, 31.5, 9))]),
        "000009": _xml(None, []),  # no <filename>: <id>.jpg; no objects
    }
    for stem, text in annotations.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
        cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), np.full((60, 80, 3), 128, np.uint8))
    if with_split_files:
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True)
        (main / "trainval.txt").write_text("000005\n000002\n000009\n")
        (main / "test.txt").write_text("000002\n\n")
        (main / "dog_trainval.txt").write_text("000005  1\n000002 -1\n")
    return root


def test_reads_boxes_in_zero_based_continuous_coordinates(tmp_path: Path) -> None:
    dataset = VocDataset(_write_voc(tmp_path))
    assert dataset.class_names == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert dataset.file_names == ("000005.jpg", "000002.jpg", "000009.jpg")  # split order
    assert dataset.image_ids == (1, 2, 3)

    sample = dataset[0]
    assert sample.image.shape == (60, 80, 3)
    # 1-based inclusive xmin=11..xmax=50 → continuous [10, 50]; the full-image box 1..80 → 0..80.
    np.testing.assert_allclose(sample.boxes_xyxy, [[10, 20, 50, 40], [0, 0, 80, 60]])
    np.testing.assert_array_equal(sample.class_ids, [VOC_CLASSES.index("dog"), 14])
    np.testing.assert_array_equal(sample.iscrowd, [False, True])  # person is difficult

    np.testing.assert_allclose(dataset[1].boxes_xyxy, [[29.5, 1, 31.5, 9]])  # fractional ok
    assert dataset[2].boxes_xyxy.shape == (0, 4)


def test_split_and_keep_difficult(tmp_path: Path) -> None:
    root = _write_voc(tmp_path)
    assert VocDataset(root, split="test").file_names == ("000002.jpg",)
    # Per-class lists carry "<id> <flag>"; the id is read.
    assert VocDataset(root, split="dog_trainval").file_names == ("000005.jpg", "000002.jpg")
    no_difficult = VocDataset(root, keep_difficult=False)
    np.testing.assert_array_equal(no_difficult[0].class_ids, [VOC_CLASSES.index("dog")])


def test_without_image_sets_reads_all_xml_sorted(tmp_path: Path) -> None:
    dataset = VocDataset(_write_voc(tmp_path, with_split_files=False), split="whatever")
    assert dataset.file_names == ("000002.jpg", "000005.jpg", "000009.jpg")


def test_custom_class_names(tmp_path: Path) -> None:
    root = _write_voc(tmp_path)
    dataset = VocDataset(root, split="test", class_names=["tvmonitor", "dog", "person"])
    assert dataset.class_names == ("tvmonitor", "dog", "person")
    np.testing.assert_array_equal(dataset[0].class_ids, [0])
    with pytest.raises(DatasetError, match=r"000005.xml: unknown class name 'person'"):
        VocDataset(root, class_names=["tvmonitor", "dog"])
    with pytest.raises(DatasetError, match="duplicate class names"):
        VocDataset(root, class_names=["dog", "dog"])


def test_missing_split_file_names_available_splits(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"val.txt \(available: \['test', 'trainval'\]\)"):
        VocDataset(_write_voc(tmp_path), split="val")


def test_missing_folders_and_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"VOC folder not found: .*Annotations"):
        VocDataset(tmp_path)
    root = _write_voc(tmp_path / "voc")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000404\n")
    with pytest.raises(DatasetError, match=r"000404.xml \(listed in .*trainval.txt\)"):
        VocDataset(root)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    root = _write_voc(tmp_path)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n")
    with pytest.raises(DatasetError, match="holds no images"):
        VocDataset(root)


@pytest.mark.parametrize(
    ("xml_text", "message"),
    [
        ("<annotation><object><name>dog</name>", "not valid XML"),
        (_xml(None, [("unicorn", 0, (1, 1, 5, 5))]), "unknown class name 'unicorn'"),
        (_xml(None, [("dog", 0, (10, 1, 5, 5))]), r"object 'dog' has .* \(max below min\)"),
        (_xml(None, [("dog", 0, ("ten", 1, 5, 5))]), "<xmin> is 'ten', not a number"),
        (
            "<annotation><object><name>dog</name></object></annotation>",
            "object 'dog' has no <bndbox>",
        ),
        ("<foo/>", r"not a VOC annotation \(its root is <foo>\)"),
    ],
    ids=["truncated", "unknown-class", "max-below-min", "non-numeric", "no-bndbox",
         "not-voc"],
)
def test_malformed_xml(tmp_path: Path, xml_text: str, message: str) -> None:
    root = _write_voc(tmp_path)
    (root / "Annotations" / "000002.xml").write_text(xml_text)
    with pytest.raises(DatasetError, match=f"000002.xml: {message}"):
        VocDataset(root)


def test_corrupt_image_fails_when_read(tmp_path: Path) -> None:
    root = _write_voc(tmp_path)
    (root / "JPEGImages" / "000002.jpg").write_bytes(np.random.default_rng(1).bytes(300))
    dataset = VocDataset(root)
    with pytest.raises(DatasetError, match=r"cannot read image .*000002\.jpg"):
        dataset[1]
