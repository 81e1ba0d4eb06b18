import json

import numpy as np
import pytest

from benchmarks.demo_video import covered, covered_mask, ground_truth_of, main
from edgedet.detections import Detections

pytest.importorskip("onnxruntime")


def test_covered_counts_same_class_overlaps_once_per_object():
    gt_xyxy = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], dtype=float)
    gt_classes = np.array([0, 1, 1])
    found = Detections(np.array([[0, 0, 10, 12], [1, 0, 10, 10], [20, 20, 30, 30],
                                 [50, 50, 60, 60]], dtype=np.float32),
                       np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32),
                       np.array([0, 0, 1, 0]), ("a", "b"))
    # Object 0: two hits (IoU 0.83 and 0.9), counted once; object 1: hit; object 2: the
    # only overlap has the wrong class.
    assert covered(found, gt_xyxy, gt_classes) == 2
    assert covered_mask(found, gt_xyxy, gt_classes).tolist() == [True, True, False]
    assert covered(Detections.empty(("a", "b")), gt_xyxy, gt_classes) == 0


def test_ground_truth_leaves_out_crowd_objects():
    coco = {"annotations": [
        {"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 2, "iscrowd": 0},
        {"image_id": 1, "bbox": [5, 5, 1, 1], "category_id": 1, "iscrowd": 1},
        {"image_id": 2, "bbox": [0, 0, 1, 1], "category_id": 1}]}
    boxes, classes = ground_truth_of(coco, 1)
    assert boxes.tolist() == [[1, 2, 4, 6]] and classes.tolist() == [1]


def test_one_zoo_model_on_a_short_video(tmp_path, capsys):
    from edgedet.data.synthetic_video import render_synthetic_video

    video = render_synthetic_video(tmp_path / "v.mp4", num_frames=6, seed=3, progress=False)
    assert main(["--video", str(video), "--models", "passd_mobilenet_int8", "--every", "2",
                 "--tiles", "1", "2", "--json"]) == 0
    row, tiled = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (row["tiles"], tiled["tiles"]) == (1, 2) and tiled["ms_per_frame"] > 0
    assert row["gt_per_frame"] == tiled["gt_per_frame"]
    assert row["model"] == "passd_mobilenet_int8" and row["gt_per_frame"] > 0
    assert 0.0 <= row["recall"] <= 1.0 and row["found_per_frame"] >= 0
    by_size = [row[f"recall_{size}"] for size in "SML"]
    assert all(np.isnan(r) or 0.0 <= r <= 1.0 for r in by_size)
    assert not all(np.isnan(r) for r in by_size)
    assert row["threshold"] == pytest.approx(0.4)  # the application default of the manifest
