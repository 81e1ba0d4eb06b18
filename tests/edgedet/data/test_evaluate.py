"""COCO evaluation through pycocotools, and the conversions into COCO's formats."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data.coco import CocoDataset
from edgedet.data.errors import DatasetError
from edgedet.data.evaluate import (
    CocoMetrics,
    detections_to_coco_results,
    evaluate_coco,
    samples_to_coco_gt,
)
from edgedet.data.sample import Sample

# COCO size buckets by area: small < 32² = 1024, medium up to 96² = 9216, large above.
SMALL, MEDIUM, LARGE = [10, 10, 20, 20], [60, 60, 50, 50], [40, 20, 120, 150]


def _ground_truth() -> dict:
    """Two images, two classes, one object of each size bucket; no info/licenses/area keys."""
    return {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": SMALL},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": MEDIUM},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": LARGE},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [150, 10, 40, 40]},
        ],
    }


def _as_predictions(ground_truth: dict, shift: float = 0.0) -> list[dict]:
    return [
        {
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "bbox": [ann["bbox"][0] + shift, ann["bbox"][1] + shift, *ann["bbox"][2:]],
            "score": 0.9 - 0.1 * k,
        }
        for k, ann in enumerate(ground_truth["annotations"])
    ]


def test_ground_truth_as_predictions_is_perfect() -> None:
    ground_truth = _ground_truth()
    untouched = copy.deepcopy(ground_truth)
    metrics = evaluate_coco(ground_truth, _as_predictions(ground_truth))
    # approx: pycocotools divides by (tp + fp + 2.2e-16), so a perfect score is 1 - 2e-16.
    assert metrics.to_dict() == pytest.approx(dict.fromkeys(metrics.to_dict(), 1.0))
    assert ground_truth == untouched  # info/licenses/area were added to a copy only


def test_metrics_to_dict_keys() -> None:
    metrics = evaluate_coco(_ground_truth(), _as_predictions(_ground_truth()))
    assert list(metrics.to_dict()) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR"]
    assert all(isinstance(v, float) for v in metrics.to_dict().values())


def test_jittered_boxes_score_lower() -> None:
    ground_truth = _ground_truth()
    small_shift = evaluate_coco(ground_truth, _as_predictions(ground_truth, shift=2.0))
    large_shift = evaluate_coco(ground_truth, _as_predictions(ground_truth, shift=6.0))
    assert 0.0 < large_shift.AP < small_shift.AP < 1.0
    # A 2 px shift of the 20 px box: IoU = 18·18 / (2·400 − 324) = 0.68, still a hit at 0.5.
    assert pytest.approx(1.0) == small_shift.AP50
    assert small_shift.APs < 1.0 and small_shift.APl > small_shift.APs


def test_one_of_two_objects_found() -> None:
    ground_truth = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]},
            {"image_id": 1, "category_id": 1, "bbox": [100, 100, 60, 60]},
        ],
    }
    found = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    metrics = evaluate_coco(ground_truth, found)
    # One exact hit out of two objects: recall 0.5 at precision 1, nothing beyond. pycocotools
    # samples precision at the 101 recall points 0, 0.01, ..., 1; the 51 points 0..0.50 get 1,
    # the other 50 get 0, so AP = 51/101 at every IoU threshold (the hit has IoU 1).
    assert pytest.approx(51 / 101) == metrics.AP50
    assert pytest.approx(51 / 101) == metrics.AP
    assert pytest.approx(0.5) == metrics.AR
    # Both objects are medium (2500 and 3600 px²): no small or large ones → -1, "undefined".
    assert metrics.APs == -1.0 and metrics.APl == -1.0
    assert metrics.APm == pytest.approx(51 / 101)


def test_false_positive_ranked_first_halves_precision() -> None:
    ground_truth = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50]}],
    }
    predictions = [
        {"image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50], "score": 0.9},  # miss
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.8},  # hit
    ]
    # Ranked by score: precision 0/1 then 1/2 at recall 1. The interpolated precision (the best
    # precision at any recall ≥ r) is 0.5 at every recall point, so AP = 0.5; recall reaches 1.
    metrics = evaluate_coco(ground_truth, predictions)
    assert pytest.approx(0.5) == metrics.AP50 and pytest.approx(1.0) == metrics.AR


def test_empty_predictions_score_zero() -> None:
    metrics = evaluate_coco(_ground_truth(), [])
    assert metrics == CocoMetrics(AP=0.0, AP50=0.0, AP75=0.0, APs=0.0, APm=0.0, APl=0.0, AR=0.0)


def test_files_and_dataset_as_predictions(tmp_path: Path) -> None:
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(_ground_truth()))
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(_as_predictions(_ground_truth(), shift=2.0)))
    from_files = evaluate_coco(gt_path, results_path)
    assert from_files == evaluate_coco(_ground_truth(), _as_predictions(_ground_truth(), 2.0))
    # A COCO dataset as predictions: its annotations, each with score 1.0.
    assert pytest.approx(1.0) == evaluate_coco(gt_path, gt_path).AP
    with_bom = tmp_path / "gt_bom.json"  # as a Windows editor saves it
    with_bom.write_bytes(b"\xef\xbb\xbf" + gt_path.read_bytes())
    assert evaluate_coco(with_bom, results_path) == from_files


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        ({"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}, "image_id 99 is"),
        ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 1}, "category_id 3 is"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}, r"missing \['score'\]"),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 1}, "bbox must be"),
        (
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, -5, 5], "score": 1},
            "bbox .* has a negative width",
        ),
        (
            {"image_id": "1", "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1},
            "image_id and category_id must be integers",
        ),
        ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": "x"}, "score must be"),
        ([1, 1, 0, 0, 5, 5, 1.0], "expected a dict, found list"),
    ],
    ids=["image", "category", "no-score", "bbox-len", "negative", "id-type", "score", "list"],
)
def test_bad_predictions_name_the_entry(prediction: object, message: str) -> None:
    good = _as_predictions(_ground_truth())[0]
    with pytest.raises(ValueError, match=f"prediction 1: {message}"):
        evaluate_coco(_ground_truth(), [good, prediction])


def test_bad_ground_truth(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="annotation file not found"):
        evaluate_coco(tmp_path / "missing.json", [])
    (tmp_path / "cut.json").write_text(json.dumps(_ground_truth())[:40])
    with pytest.raises(ValueError, match=r"cut.json: not valid JSON"):
        evaluate_coco(tmp_path / "cut.json", [])
    with pytest.raises(ValueError, match="expected a list under 'images'"):
        evaluate_coco({"categories": []}, [])
    with pytest.raises(ValueError, match="expected a list of COCO results, or a COCO dataset"):
        evaluate_coco(_ground_truth(), {"predictions": []})


def test_quiet_unless_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate_coco(_ground_truth(), _as_predictions(_ground_truth()))
    assert capsys.readouterr().out == ""
    evaluate_coco(_ground_truth(), _as_predictions(_ground_truth()), verbose=True)
    out, err = capsys.readouterr()  # on stderr: stdout is the caller's (eval --json)
    assert "Average Precision" in err and out == ""


def _samples() -> list[Sample]:
    image = np.zeros((100, 120, 3), np.uint8)
    return [
        Sample(image, [[10, 10, 50, 40], [60, 20, 110, 90]], [0, 1], image_id=1, file_name="a"),
        Sample(image, [[5, 5, 30, 30]], [1], image_id=2, file_name="b", iscrowd=[False]),
        Sample(image, np.zeros((0, 4)), [], image_id=3, file_name="c"),
    ]


def test_samples_to_coco_gt_and_detections_round_trip() -> None:
    samples = _samples()
    ground_truth = samples_to_coco_gt(samples, ["cat", "dog"])
    assert [c["id"] for c in ground_truth["categories"]] == [1, 2]
    assert [(im["id"], im["width"], im["height"]) for im in ground_truth["images"]] == [
        (1, 120, 100),
        (2, 120, 100),
        (3, 120, 100),
    ]
    assert ground_truth["annotations"][1]["bbox"] == [60, 20, 50, 70]
    assert ground_truth["annotations"][1]["category_id"] == 2

    results = []
    for sample in samples:
        scores = np.linspace(0.9, 0.5, len(sample.class_ids))
        results += detections_to_coco_results(
            sample.image_id, sample.boxes_xyxy, scores, sample.class_ids
        )
    assert results[0] == {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "score": 0.9}
    assert json.loads(json.dumps(results)) == results  # plain Python numbers
    assert pytest.approx(1.0) == evaluate_coco(ground_truth, results).AP


def test_samples_to_coco_gt_rejects_bad_samples() -> None:
    samples = _samples()
    samples[1].image_id = 1
    with pytest.raises(ValueError, match="image id 1 appears twice"):
        samples_to_coco_gt(samples, ["cat", "dog"])
    with pytest.raises(ValueError, match=r"class ids \[0, 1\], outside 0..0"):
        samples_to_coco_gt(_samples(), ["cat"])


def test_detections_to_coco_results_checks_inputs() -> None:
    boxes = np.array([[0, 0, 10, 10]], np.float32)
    assert detections_to_coco_results(5, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) == []
    mapped = detections_to_coco_results(5, boxes, np.array([0.5]), np.array([1]), [3, 90])
    assert mapped[0]["category_id"] == 90
    with pytest.raises(ValueError, match="1 boxes, 2 scores and 1 class ids"):
        detections_to_coco_results(5, boxes, np.array([0.5, 0.4]), np.array([0]))
    with pytest.raises(ValueError, match="class id 2 has no COCO category id"):
        detections_to_coco_results(5, boxes, np.array([0.5]), np.array([2]), [3, 90])


def test_reader_category_ids_map_predictions_back(tmp_path: Path) -> None:
    """Predictions from a CocoDataset with id gaps, written back with its category_ids."""
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "x.png"), np.zeros((80, 80, 3), np.uint8))
    ann_path = tmp_path / "annotations.json"
    ann_path.write_text(
        json.dumps(
            {
                "images": [{"id": 42, "file_name": "x.png", "width": 80, "height": 80}],
                "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}],
                "annotations": [
                    {"id": 1, "image_id": 42, "category_id": 7, "bbox": [1, 2, 30, 40]},
                    {"id": 2, "image_id": 42, "category_id": 3, "bbox": [40, 40, 20, 20]},
                ],
            }
        )
    )
    dataset = CocoDataset(tmp_path)
    assert dataset.class_names == ("a", "b") and dataset.category_ids == (3, 7)
    sample = dataset[0]
    scores = np.ones(len(sample.class_ids))
    results = detections_to_coco_results(
        sample.image_id, sample.boxes_xyxy, scores, sample.class_ids, dataset.category_ids
    )
    assert pytest.approx(1.0) == evaluate_coco(ann_path, results).AP
    # Without the mapping, class 1 ("b", COCO id 7) becomes id 2, which this ground truth lacks.
    unmapped = detections_to_coco_results(
        sample.image_id, sample.boxes_xyxy, scores, sample.class_ids
    )
    with pytest.raises(ValueError, match="prediction 0: category_id 2 is not in the ground truth"):
        evaluate_coco(ann_path, unmapped)


def test_a_ground_truth_without_images_or_objects_is_an_error() -> None:
    # pycocotools would answer -1 for every metric, which reads like a measurement.
    no_objects = {**_ground_truth(), "annotations": []}
    with pytest.raises(DatasetError, match="no annotations"):
        evaluate_coco(no_objects, [])
    with pytest.raises(DatasetError, match="no images"):
        evaluate_coco({**no_objects, "images": []}, [])
    orphan = _ground_truth()
    orphan["annotations"][0]["image_id"] = 99
    with pytest.raises(DatasetError, match="annotation 0 has image_id 99"):
        evaluate_coco(orphan, [])
    unknown = _ground_truth()
    unknown["annotations"][1]["category_id"] = 7
    with pytest.raises(DatasetError, match="annotation 1 has category_id 7"):
        evaluate_coco(unknown, [])


@pytest.mark.parametrize(("change", "message"), [
    ({"annotations": None}, "expected a list under 'annotations'"),
    ({"iscrowd": None}, "iscrowd None; expected 0 or 1"),
    ({"iscrowd": "0"}, "iscrowd '0'"),  # bool("0") is True: a silent crowd
    ({"area": "x"}, "has area 'x'"),
    ({"images": [{"id": 1}, {"id": 1}]}, "duplicate image ids"),
    ({"bbox": [10, 10, -50, 20]}, "a negative width or height"),  # changed AP silently
])
def test_malformed_ground_truth_fields_are_named(change: dict, message: str) -> None:
    ground_truth = _ground_truth()
    if "annotations" in change or "images" in change:
        ground_truth.update(change)
    else:
        ground_truth["annotations"][0].update(change)
    with pytest.raises(DatasetError, match=message):
        evaluate_coco(ground_truth, [])


def test_predictions_that_look_like_corner_boxes_are_warned_about() -> None:
    ground_truth = _ground_truth()
    corners = [{"image_id": 1 + k % 2, "category_id": 1, "bbox": [100 + k, 120, 150 + k, 190],
                "score": 0.5} for k in range(12)]  # [x1, y1, x2, y2] read as [x, y, w, h]
    with pytest.warns(UserWarning, match=r"12 of 12 predicted boxes end more than 10% past"):
        evaluate_coco(ground_truth, corners)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # right ones, and too few to judge, stay quiet
        evaluate_coco(ground_truth, _as_predictions(_ground_truth()) * 3)
        evaluate_coco(ground_truth, corners[:5])


def test_a_zero_width_ground_truth_box_is_left_out_as_the_readers_do() -> None:
    # It read AP 0.505 for a ground truth scored against itself (nothing can overlap it).
    ground_truth = _ground_truth()
    ground_truth["annotations"].append({**ground_truth["annotations"][0], "id": 999,
                                        "bbox": [150, 150, 0, 20]})
    predictions = _as_predictions(_ground_truth())
    with pytest.warns(UserWarning, match=r"left out 1 annotation\(s\) with a zero width"):
        metrics = evaluate_coco(ground_truth, predictions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = evaluate_coco(_ground_truth(), predictions)
    assert metrics.AP > 0.99
    assert abs(metrics.AP - expected.AP) < 1e-9
