"""Tests for the synthetic scene generator (edgedet/data/synthetic.py, synthetic_video.py and
their helpers)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from edgedet.data.errors import DatasetError
from edgedet.data.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticConfig,
    SyntheticScenes,
    render_scene,
    write_synthetic_dataset,
)
from edgedet.data.synthetic_layout import _Layer, _layout, _visible_boxes
from edgedet.data.synthetic_shapes import SHAPE_NAMES, shape_mask
from edgedet.data.synthetic_video import render_synthetic_video
from edgedet.video import read_video_frames

SMALL = SyntheticConfig(image_size=(128, 96), max_objects=6, max_distractors=4)


@pytest.fixture(scope="module")
def default_samples():
    """50 default-size images (about a second to render), shared by the statistics tests."""
    scenes = SyntheticScenes(50, seed=11)
    return [scenes[i] for i in range(len(scenes))]


def test_classes_are_many_and_distinct():
    assert len(SYNTHETIC_CLASSES) >= 10
    assert len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    assert SyntheticScenes(1).class_names == SYNTHETIC_CLASSES


def test_same_seed_and_index_give_the_same_sample():
    a = SyntheticScenes(5, seed=7)[3]
    # A dataset of another length renders image 3 identically: images are pure functions of
    # (seed, index).
    b = SyntheticScenes(40, seed=7)[3]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_different_seeds_and_indices_differ():
    a, b = SyntheticScenes(2, seed=0)[0], SyntheticScenes(2, seed=1)[0]
    c = SyntheticScenes(2, seed=0)[1]
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)


def test_sample_format(default_samples):
    for i, sample in enumerate(default_samples):
        assert sample.image.shape == (480, 640, 3)
        assert sample.image.dtype == np.uint8
        assert sample.image_id == i + 1
        assert sample.file_name == f"{i:06d}.jpg"
        boxes = sample.boxes_xyxy
        assert boxes.dtype == np.float32 and sample.class_ids.dtype == np.int64
        assert len(boxes) >= 1
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 640)
        assert np.all(boxes[:, 3] <= 480)
        # Non-degenerate: at least min_visible_side (6 px) each way.
        assert np.all(boxes[:, 2:] - boxes[:, :2] >= 6)
        assert np.all((sample.class_ids >= 0) & (sample.class_ids < len(SYNTHETIC_CLASSES)))
    # The image is not a flat fill: backgrounds are textured.
    assert np.std(default_samples[0].image.astype(np.float32)) > 5


def test_all_classes_and_all_coco_size_buckets_appear(default_samples):
    class_ids = np.concatenate([s.class_ids for s in default_samples])
    assert set(class_ids.tolist()) == set(range(len(SYNTHETIC_CLASSES)))
    boxes = np.concatenate([s.boxes_xyxy for s in default_samples])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    small = np.mean(areas < 32**2)
    large = np.mean(areas > 96**2)
    medium = 1.0 - small - large
    # Log-uniform sizes give about a third each; demand a clear share of every bucket.
    assert small > 0.2 and medium > 0.15 and large > 0.15, (small, medium, large)


def test_owner_map_matches_the_boxes():
    """Each annotated box is exactly the box of the pixels that object shows."""
    for index in range(6):
        scene = render_scene(3, index, SyntheticConfig())
        labels = set(np.unique(scene.owner).tolist()) - {-1}
        # Every object showing in the image is annotated, and every annotation shows.
        assert labels == set(range(len(scene.boxes_xyxy)))
        for k, box in enumerate(scene.boxes_xyxy):
            ys, xs = np.nonzero(scene.owner == k)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_layout_does_not_depend_on_camera_effects():
    plain = replace(
        SyntheticConfig(), blur_prob=0.0, motion_blur_prob=0.0, noise_prob=0.0, shadow_prob=0.0
    )
    a, b = render_scene(5, 2, SyntheticConfig()), render_scene(5, 2, plain)
    np.testing.assert_array_equal(a.boxes_xyxy, b.boxes_xyxy)
    np.testing.assert_array_equal(a.owner, b.owner)
    assert not np.array_equal(a.image, b.image)


def test_placement_limits_occlusion():
    config = SyntheticConfig(max_objects=20, max_distractors=20)
    for index in range(8):
        rng = np.random.default_rng(index)
        layers, owner = _layout(rng, config)
        _, counts = _visible_boxes(layers, owner)
        for layer, count in zip(layers, counts, strict=True):
            if layer.class_id >= 0:
                # The image border plus all later layers hide at most max_occlusion.
                assert count >= (1 - config.max_occlusion) * layer.full_area - 1e-6


def test_visible_boxes_hand_computed():
    """Pixel columns 3..5 and rows 4..6 owned → continuous box (3, 4, 6, 7)."""
    owner = np.full((10, 12), -1, dtype=np.int16)
    owner[4:7, 3:6] = 0
    owner[5, 4] = 1  # a later layer covers one pixel
    layer = _Layer(np.full((5, 6), 255, dtype=np.uint8), x0=2, y0=3, class_id=0, size=5.0)
    top = _Layer(np.full((1, 1), 255, dtype=np.uint8), x0=4, y0=5, class_id=-1, size=1.0)
    boxes, counts = _visible_boxes([layer, top], owner)
    np.testing.assert_array_equal(boxes, [[3, 4, 6, 7], [4, 5, 5, 6]])
    np.testing.assert_array_equal(counts, [8, 1])


def test_shape_mask_covers_exactly_the_shape():
    """A 10x10 square centred at (5, 5) owns pixel columns/rows 0..9, nothing more."""
    mask, x0, y0 = shape_mask(SHAPE_NAMES.index("square"), (5.0, 5.0), (10.0, 10.0), 0.0, False)
    ys, xs = np.nonzero(mask >= 128)
    assert (xs.min() + x0, xs.max() + x0 + 1, ys.min() + y0, ys.max() + y0 + 1) == (0, 10, 0, 10)
    assert len(xs) == 100
    ring, rx0, ry0 = shape_mask(SHAPE_NAMES.index("ring"), (20.0, 20.0), (30.0, 30.0), 0.0, False)
    assert ring[20 - ry0, 20 - rx0] == 0  # the hole
    assert ring[20 - ry0, 7 - rx0] == 255  # the band


def test_write_synthetic_dataset_round_trip(tmp_path):
    ann_path = write_synthetic_dataset(tmp_path / "ds", 4, seed=2, config=SMALL, progress=False)
    assert ann_path == tmp_path / "ds" / "annotations.json"
    data = json.loads(ann_path.read_text())
    assert [c["name"] for c in data["categories"]] == list(SYNTHETIC_CLASSES)
    assert [c["id"] for c in data["categories"]] == list(range(1, len(SYNTHETIC_CLASSES) + 1))
    scenes = SyntheticScenes(4, seed=2, config=SMALL)
    expected = [scenes[i] for i in range(4)]
    assert len(data["annotations"]) == sum(len(s.boxes_xyxy) for s in expected)
    coco = COCO(str(ann_path))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4]
    for sample in expected:
        image = cv2.imread(str(tmp_path / "ds" / "images" / sample.file_name))
        assert image.shape == (96, 128, 3)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[sample.image_id]))
        boxes_xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        np.testing.assert_allclose(boxes_xywh[:, :2], sample.boxes_xyxy[:, :2])
        np.testing.assert_allclose(
            boxes_xywh[:, 2:], sample.boxes_xyxy[:, 2:] - sample.boxes_xyxy[:, :2]
        )
        assert [a["category_id"] for a in anns] == (sample.class_ids + 1).tolist()


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_round_trip(tmp_path, suffix):
    path = render_synthetic_video(
        tmp_path / f"demo{suffix}", 7, seed=1, config=SMALL, fps=10, progress=False
    )
    assert path == tmp_path / f"demo{suffix}"
    frames = read_video_frames(path)
    assert len(frames) == 7 and frames[0].shape == (96, 128, 3)
    assert not np.array_equal(frames[0], frames[6])  # things move
    ground_truth = json.loads((tmp_path / "demo.json").read_text())
    assert [im["id"] for im in ground_truth["images"]] == list(range(1, 8))
    assert ground_truth["images"][3]["file_name"] == "frame_000003"
    assert len(ground_truth["annotations"]) > 0
    for ann in ground_truth["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 128 and y + h <= 96
        assert 1 <= ann["category_id"] <= len(SYNTHETIC_CLASSES)
    COCO(str(tmp_path / "demo.json"))
    # Written atomically: no temporary files left beside the results.
    assert sorted(os.listdir(tmp_path)) == sorted([f"demo{suffix}", "demo.json"])


def test_video_rejects_unknown_extension_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        render_synthetic_video(tmp_path / "demo.gif", 3, config=SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_video_never_takes_the_ground_truth_of_another_video(tmp_path):
    first = render_synthetic_video(tmp_path / "x.mp4", 2, seed=1, config=SMALL, progress=False)
    truth = (tmp_path / "x.json").read_bytes()
    with pytest.raises(DatasetError, match=r"x\.json is the ground truth of .*x\.mp4"):
        render_synthetic_video(tmp_path / "x.avi", 2, seed=2, config=SMALL, progress=False)
    assert (tmp_path / "x.json").read_bytes() == truth and not (tmp_path / "x.avi").exists()
    render_synthetic_video(first, 2, seed=3, config=SMALL, progress=False)  # its own: rewritten
    first.unlink()  # once the other video is gone, its ground truth may go too
    render_synthetic_video(tmp_path / "x.avi", 2, seed=2, config=SMALL, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": (16, 480)}, "image_size"),
        ({"image_size": (640,)}, "image_size"),
        ({"image_size": (100_000, 100_000)}, "at most 8192"),  # 30 GB of pixels
        ({"image_size": (640.0, 480.0)}, "whole pixels"),  # failed later inside numpy
        ({"min_objects": 5, "max_objects": 2}, "min_objects"),
        ({"min_distractors": -1}, "min_distractors"),
        ({"blur_prob": 1.5}, "blur_prob"),
        ({"max_object_size": 0.0}, "max_object_size"),
        ({"max_occlusion": 1.0}, "max_occlusion"),
        ({"min_object_size": 2.0}, "min_object_size"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)


def test_argument_validation(tmp_path: Path):
    with pytest.raises(ValueError, match="num_images"):
        SyntheticScenes(0)
    with pytest.raises(ValueError, match="seed"):
        SyntheticScenes(3, seed=-1)
    scenes = SyntheticScenes(3, config=SMALL)
    with pytest.raises(IndexError):
        scenes[3]
    with pytest.raises(TypeError):
        scenes[0:2]
    assert scenes[-1].image_id == 3
    assert len(list(scenes)) == 3  # Sequence iteration stops at the end
    with pytest.raises(ValueError, match="num_frames"):
        render_synthetic_video(tmp_path / "v.avi", 0, config=SMALL, progress=False)
    with pytest.raises(ValueError, match="fps"):
        render_synthetic_video(tmp_path / "v.avi", 2, config=SMALL, fps=0, progress=False)
