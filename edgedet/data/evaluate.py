"""COCO box evaluation (mAP through pycocotools) and conversions into COCO's formats."""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from edgedet.data.coco import crowd_flag, load_json_file, sample_to_coco_annotations
from edgedet.data.errors import DatasetError
from edgedet.data.sample import Sample


@dataclass
class CocoMetrics:
    """The box metrics of COCO's ``summarize()``.

    ``AP`` averages over IoU 0.50:0.05:0.95, ``AP50``/``AP75`` at one IoU; ``APs/APm/APl`` over
    small (< 32² px), medium and large (> 96² px) objects; ``AR`` is the average recall with
    up to 100 detections per image (pycocotools' ``stats[8]``). Each lies in [0, 1] or is -1.

    A value of ``-1.0`` means "undefined": the ground truth has no (non-crowd) object of that
    size (for ``AP``/``AR``: no object at all), so there is nothing to measure. It is
    pycocotools' own marker, kept as is (rather than NaN) so that metrics stay valid JSON;
    filter ``value >= 0`` before averaging or comparing.
    """

    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    AR: float

    def to_dict(self) -> dict[str, float]:
        """The seven metrics as ``{"AP": ..., "AP50": ..., ..., "AR": ...}``, field order."""
        return {key: float(value) for key, value in asdict(self).items()}


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Swallow pycocotools' progress prints unless ``verbose``; then they go to stderr, so
    that stdout carries only the caller's results (``edgedet eval --json``)."""
    if verbose:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _load_ground_truth(ground_truth: str | os.PathLike[str] | dict) -> tuple[dict, str]:
    """A checked copy of the ground truth with the fields pycocotools relies on filled in."""
    if isinstance(ground_truth, dict):
        dataset, source = ground_truth, "ground-truth dict"
    else:
        source = str(ground_truth)
        dataset = load_json_file(Path(ground_truth))
        if not isinstance(dataset, dict):
            raise DatasetError(f"{source}: expected a COCO dataset (a JSON object)")
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DatasetError(f"{source}: expected a list under {key!r}")
    for what, entries in (("image", dataset["images"]), ("category", dataset["categories"])):
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not _is_int(entry.get("id")):
                raise DatasetError(f"{source}: {what} {index} has no integer 'id'")

    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    for what, entries, ids in (("image", dataset["images"], image_ids),
                               ("category", dataset["categories"], category_ids)):
        if len(ids) != len(entries):  # pycocotools keeps the last of each: silently wrong
            raise DatasetError(f"{source}: duplicate {what} ids")
    listed = dataset.get("annotations", [])
    if not isinstance(listed, list):
        raise DatasetError(f"{source}: expected a list under 'annotations'")
    annotations = []
    degenerate = []
    for index, annotation in enumerate(listed):
        bbox = annotation.get("bbox") if isinstance(annotation, dict) else None
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise DatasetError(f"{source}: annotation {index} has no bbox [x, y, w, h]")
        if bbox[2] < 0 or bbox[3] < 0:  # pycocotools scored it against nothing (AP fell)
            raise DatasetError(f"{source}: annotation {index} has bbox {bbox}, a negative width "
                               f"or height (COCO boxes are [x, y, width, height])")
        # pycocotools would silently leave such an object out (AP -1 if it was the only one).
        for key, known in (("image_id", image_ids), ("category_id", category_ids)):
            if annotation.get(key) not in known:
                raise DatasetError(f"{source}: annotation {index} has {key} "
                                   f"{annotation.get(key)!r}, which the ground truth does not "
                                   f"list")
        crowd_flag(annotation, source)
        if bbox[2] == 0 or bbox[3] == 0:
            # No box can overlap it, so pycocotools counted it as missed (a ground truth
            # scored against itself read AP 0.5); the dataset readers leave such boxes out,
            # and so does the evaluation, so that both score the same objects.
            degenerate.append(index)
            continue
        if annotation.get("area") is not None and not (_is_number(annotation["area"])
                                                       and annotation["area"] >= 0):
            raise DatasetError(f"{source}: annotation {index} has area {annotation['area']!r}")
        annotation = dict(annotation)
        # pycocotools buckets objects into small/medium/large by 'area' and skips crowds by
        # 'iscrowd'; a hand-made ground truth may lack both (an area of null counts as none,
        # as the dataset readers take it).
        if annotation.get("area") is None:
            annotation["area"] = float(bbox[2]) * float(bbox[3])
        annotation.setdefault("iscrowd", 0)
        annotations.append(annotation)
    if degenerate:
        warnings.warn(f"{source}: left out {len(degenerate)} annotation(s) with a zero width or "
                      f"height (the first: annotation {degenerate[0]}), as the dataset readers "
                      "do", stacklevel=2)
    ids = [annotation.get("id") for annotation in annotations]
    # COCOeval takes an id of 0 as "unmatched", so ids must be unique and positive.
    if not all(_is_int(i) and i > 0 for i in ids) or len(set(ids)) != len(ids):
        for new_id, annotation in enumerate(annotations, start=1):
            annotation["id"] = new_id

    checked = dict(dataset)
    checked["annotations"] = annotations
    checked.setdefault("info", {"description": "edgedet evaluation"})
    checked.setdefault("licenses", [])
    return checked, source


def _load_predictions(predictions: str | os.PathLike[str] | list[dict] | dict) -> list:
    if isinstance(predictions, str | os.PathLike):
        predictions = load_json_file(Path(predictions))
    if isinstance(predictions, dict):
        if not isinstance(predictions.get("annotations"), list):
            raise ValueError(
                "predictions: expected a list of COCO results, or a COCO dataset with 'annotations'"
            )
        return [
            {**annotation, "score": 1.0} if isinstance(annotation, dict) else annotation
            for annotation in predictions["annotations"]
        ]
    if not isinstance(predictions, list):
        raise ValueError(
            f"predictions: expected a list of COCO results, found {type(predictions).__name__}"
        )
    return predictions


def _check_predictions(
    predictions: list, image_ids: set[int], category_ids: set[int]
) -> list[dict]:
    """Validated copies of the prediction entries, shaped as pycocotools' ``loadRes`` makes them.

    (``loadRes`` itself is not used: it rewrites the caller's dicts and fails on an empty list.)
    """
    checked = []
    for index, entry in enumerate(predictions):
        where = f"prediction {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a dict, found {type(entry).__name__}")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in entry]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        image_id, category_id = entry["image_id"], entry["category_id"]
        bbox, score = entry["bbox"], entry["score"]
        if not _is_int(image_id) or not _is_int(category_id):
            raise ValueError(f"{where}: image_id and category_id must be integers")
        if image_id not in image_ids:
            raise ValueError(f"{where}: image_id {image_id} is not in the ground truth")
        if category_id not in category_ids:
            raise ValueError(
                f"{where}: category_id {category_id} is not in the ground truth "
                f"(categories {sorted(category_ids)})"
            )
        if not (isinstance(bbox, list | tuple) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise ValueError(f"{where}: bbox must be [x, y, width, height], found {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{where}: bbox {bbox!r} has a negative width or height")
        if not _is_number(score):
            raise ValueError(f"{where}: score must be a finite number, found {score!r}")
        x, y, w, h = (float(v) for v in bbox)
        checked.append(
            {
                "id": index + 1,
                "image_id": int(image_id),
                "category_id": int(category_id),
                "bbox": [x, y, w, h],
                "score": float(score),
                "area": w * h,
                "iscrowd": 0,
            }
        )
    return checked


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _warn_if_corner_boxes(results: Sequence[dict], images: Sequence[dict]) -> None:
    """Warn when most predicted boxes, read as COCO's ``[x, y, w, h]``, run well past their
    image's right or bottom edge: the mark of ``[x1, y1, x2, y2]`` boxes, which score an AP
    near 0 without any error. Images without ``width`` / ``height`` are not judged."""
    sizes = {image["id"]: (image.get("width"), image.get("height")) for image in images}
    judged = past = 0
    for result in results:
        width, height = sizes.get(result["image_id"], (None, None))
        if not (_is_number(width) and _is_number(height)):
            continue
        x, y, w, h = result["bbox"]
        judged += 1
        past += x + w > 1.1 * width or y + h > 1.1 * height
    if judged >= 10 and past > judged / 2:
        warnings.warn(f"{past} of {judged} predicted boxes end more than 10% past their "
                      f"image's right or bottom edge when read as [x, y, width, height] (COCO's "
                      f"box format); were they written as [x1, y1, x2, y2]?", stacklevel=3)


def evaluate_coco(
    ground_truth: str | os.PathLike[str] | dict,
    predictions: str | os.PathLike[str] | list[dict] | dict,
    verbose: bool = False,
) -> CocoMetrics:
    """Box mAP of ``predictions`` against ``ground_truth``, computed by pycocotools.

    Args:
        ground_truth: a COCO annotations file or the same as a dict. ``info``/``licenses``,
            annotation ``area`` (width × height), ``iscrowd`` (0) and annotation ids are
            filled in when missing; the caller's dict is not modified.
        predictions: COCO results — a list of ``{"image_id", "category_id", "bbox": [x, y,
            w, h], "score"}`` — or a JSON file holding one. A COCO *dataset* (a dict, or a
            file, with ``"annotations"``) is also accepted: each annotation becomes a
            prediction with score 1.0, which compares two annotation sets of the same images.
        verbose: print pycocotools' progress and summary table.

    Returns:
        The metrics; with no predictions at all they are 0 (or -1 where undefined, see
        ``CocoMetrics``).

    Raises:
        DatasetError: the ground truth is missing or malformed, or has no images or no
            annotations.
        ValueError: a prediction is malformed (the message names its index) or refers to an
            image or category id the ground truth does not have.
    """
    gt_dataset, source = _load_ground_truth(ground_truth)
    if not gt_dataset["images"] or not gt_dataset["annotations"]:
        # pycocotools would report -1 for every metric, which reads like a result.
        raise DatasetError(f"{source}: no {'images' if not gt_dataset['images'] else 'annotations'}"
                           " in the ground truth, so there is nothing to evaluate against")
    results = _check_predictions(
        _load_predictions(predictions),
        image_ids={image["id"] for image in gt_dataset["images"]},
        category_ids={category["id"] for category in gt_dataset["categories"]},
    )
    _warn_if_corner_boxes(results, gt_dataset["images"])
    results_dataset = {
        "info": gt_dataset["info"],
        "images": gt_dataset["images"],
        "categories": gt_dataset["categories"],
        "annotations": results,
    }
    with _quiet(verbose):
        coco_eval = COCOeval(
            _coco_from_dict(gt_dataset), _coco_from_dict(results_dataset), iouType="bbox"
        )
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = [float(value) for value in coco_eval.stats]
    return CocoMetrics(
        AP=stats[0],
        AP50=stats[1],
        AP75=stats[2],
        APs=stats[3],
        APm=stats[4],
        APl=stats[5],
        AR=stats[8],
    )


def samples_to_coco_gt(samples: Iterable[Sample], class_names: Sequence[str]) -> dict:
    """A COCO ground-truth dataset (in memory) for ``samples``; category ids are ``1..K``.

    Reads every sample once (for its image size), so any ``Sequence[Sample]`` — a reader, the
    synthetic generator — can be evaluated with ``evaluate_coco``.

    Raises:
        ValueError: two samples share an image id, or a class id is outside ``class_names``.
    """
    images: list[dict] = []
    annotations: list[dict] = []
    seen_ids: set[int] = set()
    for sample in samples:
        if sample.image_id in seen_ids:
            raise ValueError(
                f"samples_to_coco_gt: image id {sample.image_id} appears twice "
                f"({sample.file_name!r}); every sample needs its own image_id"
            )
        seen_ids.add(sample.image_id)
        if len(sample.class_ids) and not (
            sample.class_ids.min() >= 0 and sample.class_ids.max() < len(class_names)
        ):
            raise ValueError(
                f"samples_to_coco_gt: image id {sample.image_id} has class ids "
                f"{sorted(set(sample.class_ids.tolist()))}, outside 0..{len(class_names) - 1}"
            )
        images.append(
            {
                "id": int(sample.image_id),
                "file_name": sample.file_name,
                "width": sample.width,
                "height": sample.height,
            }
        )
        annotations.extend(sample_to_coco_annotations(sample, first_ann_id=len(annotations) + 1))
    return {
        "info": {"description": "edgedet samples"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "object"}
            for k, name in enumerate(class_names)
        ],
    }


def detections_to_coco_results(
    image_id: int,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """COCO results entries for one image's detections.

    Args:
        image_id: the image's COCO id.
        boxes_xyxy: ``(N, 4)`` boxes in image pixels.
        scores: ``(N,)`` confidences.
        class_ids: ``(N,)`` 0-based class indices.
        category_ids: COCO category id of each class index (``CocoDataset.category_ids``);
            default ``class index + 1``, matching ``samples_to_coco_gt`` and
            ``write_coco_dataset``.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` in input order,
        with plain Python numbers (JSON-ready).
    """
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    if not len(boxes_xyxy) == len(scores) == len(class_ids):
        raise ValueError(
            f"detections_to_coco_results: {len(boxes_xyxy)} boxes, {len(scores)} scores and "
            f"{len(class_ids)} class ids"
        )
    if len(class_ids) and not np.issubdtype(class_ids.dtype, np.integer):
        raise ValueError(f"detections_to_coco_results: class ids have dtype {class_ids.dtype}")
    if (
        category_ids is not None
        and len(class_ids)
        and not (class_ids.min() >= 0 and class_ids.max() < len(category_ids))
    ):
        raise ValueError(
            f"detections_to_coco_results: class id {int(class_ids.max())} has no COCO category "
            f"id ({len(category_ids)} given)"
        )
    results = []
    for (x1, y1, x2, y2), score, class_id in zip(boxes_xyxy, scores, class_ids, strict=True):
        category_id = category_ids[class_id] if category_ids is not None else int(class_id) + 1
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_id),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            }
        )
    return results
