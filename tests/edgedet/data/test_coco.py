"""CocoDataset: reading COCO-JSON datasets, and the write_coco_dataset round trip."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data.coco import CocoDataset, write_coco_dataset
from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _coco_dict() -> dict:
    # Category ids with gaps and out of order, as in real COCO (1..90 for 80 classes).
    return {
        "images": [
            {"id": 7, "file_name": "b.png", "width": 64, "height": 48},
            {"id": 3, "file_name": "a.png", "width": 32, "height": 40},
            {"id": 9, "file_name": "empty.png", "width": 16, "height": 16},
        ],
        "categories": [
            {"id": 90, "name": "toothbrush"},
            {"id": 1, "name": "person"},
            {"id": 18, "name": "dog"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10, 20, 30, 15], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 90, "bbox": [0.5, 1.5, 2, 3], "iscrowd": 1},
            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [4, 5, 6, 7]},
            # Zero-width box: skipped.
            {"id": 4, "image_id": 3, "category_id": 1, "bbox": [4, 5, 0, 7]},
        ],
    }


def _write_dataset(root: Path, dataset: dict | None = None) -> Path:
    """``root/annotations.json`` + ``root/images/*.png``; returns the annotations path."""
    dataset = _coco_dict() if dataset is None else dataset
    (root / "images").mkdir(parents=True)
    for seed, image in enumerate(dataset["images"]):
        cv2.imwrite(
            str(root / "images" / image["file_name"]), _image(image["height"], image["width"], seed)
        )
    path = root / "annotations.json"
    path.write_text(json.dumps(dataset))
    return path


def test_reads_boxes_classes_and_crowd_flags_with_category_id_gaps(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    dataset = CocoDataset(tmp_path)  # the directory layout write_coco_dataset writes

    assert isinstance(dataset, Sequence)
    assert dataset.class_names == ("person", "dog", "toothbrush")
    assert dataset.category_ids == (1, 18, 90)
    assert dataset.image_ids == (7, 3, 9)  # the file's image order
    assert len(dataset) == 3

    first = dataset[0]
    assert first.image_id == 7 and first.file_name == "b.png"
    assert first.image.shape == (48, 64, 3) and first.image.dtype == np.uint8
    np.testing.assert_array_equal(first.image, _image(48, 64, seed=0))
    # xywh [10, 20, 30, 15] → xyxy [10, 20, 40, 35]; category 18 is class 1 ("dog").
    np.testing.assert_allclose(first.boxes_xyxy, [[10, 20, 40, 35], [0.5, 1.5, 2.5, 4.5]])
    assert first.boxes_xyxy.dtype == np.float32
    np.testing.assert_array_equal(first.class_ids, [1, 2])
    assert first.class_ids.dtype == np.int64
    np.testing.assert_array_equal(first.iscrowd, [False, True])

    second = dataset[1]
    np.testing.assert_allclose(second.boxes_xyxy, [[4, 5, 10, 12]])  # zero-width one skipped
    np.testing.assert_array_equal(second.class_ids, [0])

    empty = dataset[-1]
    assert empty.file_name == "empty.png"
    assert empty.boxes_xyxy.shape == (0, 4) and empty.class_ids.shape == (0,)

    with pytest.raises(IndexError):
        dataset[3]
    assert [sample.image_id for sample in dataset] == [7, 3, 9]


def test_annotation_file_with_separate_image_dir(tmp_path: Path) -> None:
    ann_path = _write_dataset(tmp_path / "set")
    moved = tmp_path / "pixels"
    (tmp_path / "set" / "images").rename(moved)
    dataset = CocoDataset(ann_path, image_dir=moved)
    assert dataset.image_dir == moved
    assert dataset[1].image.shape == (40, 32, 3)
    # Without image_dir the default is images/ beside the file, which is now gone.
    with pytest.raises(DatasetError, match="image folder not found"):
        CocoDataset(ann_path)


def test_test_set_file_without_annotations_key(tmp_path: Path) -> None:
    dataset_dict = _coco_dict()
    del dataset_dict["annotations"]
    _write_dataset(tmp_path, dataset_dict)
    dataset = CocoDataset(tmp_path / "annotations.json")
    assert all(dataset[i].boxes_xyxy.shape == (0, 4) for i in range(len(dataset)))


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    samples = [
        Sample(
            image=_image(30, 40, seed=1),
            boxes_xyxy=[[1.25, 2.5, 10.75, 20.0], [5, 5, 39, 29]],
            class_ids=[1, 0],
            image_id=1,
            file_name="000001.png",
            iscrowd=[False, True],
        ),
        Sample(
            image=_image(20, 20, seed=2),
            boxes_xyxy=np.zeros((0, 4)),
            class_ids=[],
            image_id=2,
            file_name="000002.png",
        ),
    ]
    write_coco_dataset(samples, tmp_path / "out", class_names=["cat", "dog"])
    dataset = CocoDataset(tmp_path / "out")
    assert dataset.class_names == ("cat", "dog")
    assert dataset.category_ids == (1, 2)
    for written, read in zip(samples, dataset, strict=True):
        assert read.image_id == written.image_id and read.file_name == written.file_name
        np.testing.assert_array_equal(read.image, written.image)  # PNG is lossless
        np.testing.assert_allclose(read.boxes_xyxy, written.boxes_xyxy, atol=0.01)
        np.testing.assert_array_equal(read.class_ids, written.class_ids)
        np.testing.assert_array_equal(read.iscrowd, written.iscrowd)


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"annotation file not found.*nope.json"):
        CocoDataset(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match=r"annotations.json"):
        CocoDataset(tmp_path)  # a directory without annotations.json


def test_truncated_json(tmp_path: Path) -> None:
    ann_path = _write_dataset(tmp_path)
    ann_path.write_text(ann_path.read_text()[:50])
    with pytest.raises(DatasetError, match=r"annotations.json: not valid JSON"):
        CocoDataset(tmp_path)


def test_corrupt_and_missing_images_fail_when_read(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "images" / "b.png").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "images" / "a.png").unlink()
    dataset = CocoDataset(tmp_path)  # images are only read on access
    with pytest.raises(DatasetError, match=r"cannot read image .*b\.png"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"image file not found: .*a\.png"):
        dataset[1]
    assert dataset[2].image.shape == (16, 16, 3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["annotations"][0].update(category_id=5), "category_id 5, which is not in"),
        (lambda d: d["annotations"][0].update(image_id=4), "image id 4, which is not in"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"bbox \[1, 2, 3\]"),
        (lambda d: d["images"][1].update(id=7), "duplicate image id 7"),
        (lambda d: d["images"][0].pop("file_name"), "image id 7 has no 'file_name'"),
        (lambda d: d.pop("categories"), "expected a list under 'categories'"),
        (lambda d: d.update(images=[], annotations=[]), "holds no images"),
    ],
)
def test_malformed_content(tmp_path: Path, edit, message: str) -> None:
    _write_dataset(tmp_path)
    dataset_dict = _coco_dict()
    edit(dataset_dict)
    (tmp_path / "annotations.json").write_text(json.dumps(dataset_dict))
    with pytest.raises(DatasetError, match=message):
        CocoDataset(tmp_path)


def test_writing_a_smaller_dataset_over_a_larger_one_leaves_no_orphans(tmp_path: Path) -> None:
    scenes = SyntheticScenes(3, seed=0, config=SyntheticConfig(image_size=(64, 48)))
    write_coco_dataset(list(scenes), tmp_path, scenes.class_names)
    (tmp_path / "images" / "notes.txt").write_text("the user's own file")
    write_coco_dataset(list(scenes)[:1], tmp_path, scenes.class_names)
    kept = sorted(p.name for p in (tmp_path / "images").iterdir())
    listed = [image["file_name"] for image in
              json.loads((tmp_path / "annotations.json").read_text())["images"]]
    assert kept == sorted([*listed, "notes.txt"])  # unlisted images gone, other files kept


def test_a_folder_edgedet_did_not_write_is_refused_untouched(tmp_path: Path) -> None:
    scenes = SyntheticScenes(2, seed=0, config=SyntheticConfig(image_size=(64, 48)))
    theirs = tmp_path / "theirs"
    _write_dataset(theirs)  # someone else's COCO dataset, with a file of their own
    (theirs / "README.txt").write_text("mine")
    before = {p: p.read_bytes() for p in theirs.rglob("*") if p.is_file()}
    images_only = tmp_path / "images_only"
    (images_only / "images").mkdir(parents=True)
    (images_only / "images" / "000001.png").write_bytes(b"a photo")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, message in ((theirs, "not a dataset edgedet wrote"),
                         (images_only, "already holds files"), (a_file, "is a file")):
        with pytest.raises(DatasetError, match=message):
            write_coco_dataset(list(scenes), out, scenes.class_names)
    assert {p: p.read_bytes() for p in theirs.rglob("*") if p.is_file()} == before
    assert (images_only / "images" / "000001.png").read_bytes() == b"a photo"
    assert a_file.read_text() == "x"
    finder = tmp_path / "finder"  # empty but for a file manager's hidden file: fine
    finder.mkdir()
    (finder / ".DS_Store").write_bytes(b"\0")
    write_coco_dataset(list(scenes), finder, scenes.class_names)
    assert (finder / "annotations.json").is_file() and (finder / ".DS_Store").is_file()


def test_an_interrupted_rewrite_never_looks_like_a_whole_dataset(tmp_path: Path) -> None:
    first = SyntheticScenes(3, seed=0, config=SyntheticConfig(image_size=(64, 48)))
    second = SyntheticScenes(3, seed=1, config=SyntheticConfig(image_size=(64, 48)))
    write_coco_dataset(list(first), tmp_path, first.class_names)

    def stopped_after_one():
        yield second[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_coco_dataset(stopped_after_one(), tmp_path, second.class_names,
                           info={"description": "test"})
    assert not (tmp_path / "annotations.json").exists()  # new image 1, old 2 and 3: no labels
    with pytest.raises(DatasetError, match="not found"):
        CocoDataset(tmp_path)
    write_coco_dataset([second[0]], tmp_path, second.class_names)  # the rerun is allowed
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [second[0].file_name
                                                                       or "000000.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert CocoDataset(tmp_path).file_names == (second[0].file_name or "000000.png",)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(annotations=None), "expected a list under 'annotations'"),
    (lambda d: d["annotations"][0].update(iscrowd="0"), "iscrowd '0'; expected 0 or 1"),
    (lambda d: d["annotations"][0].update(area=-1), "area -1; expected a finite number >= 0"),
    (lambda d: d["annotations"][0].update(area="5"), "area '5'; expected a finite number"),
])
def test_malformed_annotation_fields_are_named(tmp_path: Path, change, message: str) -> None:
    scenes = SyntheticScenes(2, seed=0, config=SyntheticConfig(image_size=(64, 48)))
    path = write_coco_dataset(list(scenes), tmp_path, scenes.class_names)
    dataset = json.loads(path.read_text())
    change(dataset)
    path.write_text(json.dumps(dataset))
    with pytest.raises(DatasetError, match=message):
        CocoDataset(tmp_path)


def test_a_run_after_an_interrupted_one_leaves_none_of_its_images(tmp_path: Path) -> None:
    # An interrupted `edgedet synth` left 138 images that no later run removed.
    big = SyntheticScenes(5, seed=2, config=SyntheticConfig(image_size=(64, 48)))
    small = SyntheticScenes(1, seed=3, config=SyntheticConfig(image_size=(64, 48)))

    def stopped_after(count: int):
        yield from list(big)[:count]
        raise KeyboardInterrupt

    for earlier in ([], list(SyntheticScenes(2, seed=0,
                                             config=SyntheticConfig(image_size=(64, 48))))):
        out = tmp_path / f"after_{len(earlier)}"
        if earlier:  # a finished dataset first; else the interrupted run is the first one
            write_coco_dataset(earlier, out, big.class_names)
        with pytest.raises(KeyboardInterrupt):
            write_coco_dataset(stopped_after(4), out, big.class_names)
        assert len(list((out / "images").iterdir())) >= 4
        write_coco_dataset(list(small), out, small.class_names)  # allowed, and cleans up
        listed = [image["file_name"] for image in
                  json.loads((out / "annotations.json").read_text())["images"]]
        assert sorted(p.name for p in (out / "images").iterdir()) == sorted(listed)
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_the_file_s_object_areas_reach_the_evaluation(tmp_path: Path) -> None:
    # pycocotools sorts objects into small / medium / large by `area` (a segmented object's
    # is its mask's): a 40 x 40 box with area 500 is small (< 32^2), by its box medium. The
    # reader recomputed it from the box, so APs / APm of training and conversion differed
    # from `edgedet eval` on the same file.
    from edgedet.data.evaluate import evaluate_coco, samples_to_coco_gt

    dataset = _coco_dict()
    dataset["annotations"][0]["area"] = 500.0  # its box: 30 x 15 = 450
    dataset["annotations"][1]["area"] = None  # (as good as none: the box's)
    dataset["annotations"][2]["bbox"] = [0, 0, 30, 38]
    dataset["annotations"][2]["area"] = 900.0  # its box: 1140, medium; the file says small
    path = _write_dataset(tmp_path, dataset)
    samples = list(CocoDataset(tmp_path))
    np.testing.assert_allclose(samples[0].areas, [500.0, 6.0])
    ground_truth = samples_to_coco_gt(samples, ("person", "dog", "toothbrush"))
    assert [a["area"] for a in ground_truth["annotations"]] == [500.0, 6.0, 900.0]
    # Each scored against itself: no medium object in either (by its box there was one).
    with pytest.warns(UserWarning, match="zero width"):  # (the fixture's zero-width box)
        from_file = evaluate_coco(path, path)
    from_samples = evaluate_coco(ground_truth, ground_truth)
    assert from_file.APm == from_samples.APm == -1.0
    by_boxes = samples_to_coco_gt([replace(s, areas=None) for s in samples],
                                  ("person", "dog", "toothbrush"))
    assert evaluate_coco(by_boxes, by_boxes).APm == pytest.approx(1.0)
