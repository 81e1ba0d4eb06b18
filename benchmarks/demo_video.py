"""What the camera demo finds on its built-in video: ``python benchmarks/demo_video.py``

Runs zoo models (or artifact folders) on frames of the demo video that ``apps/webcam.py`` plays
when no camera is there (a panning, slowly relit synthetic scene with COCO ground truth per
frame next to it) and prints, per model:

- GT/frame: ground-truth objects per frame (those the video marks ``iscrowd``, mostly hidden,
  are not counted);
- found/frame and recall: detections per frame at the application threshold (what the demo
  draws) and the share of ground-truth objects one of them covers (same class, IoU >= 0.5),
  overall and for COCO's small / medium / large objects (area < 32^2, < 96^2, larger);
- AP / AP50 / APs on the same frames with the evaluation settings (threshold 0.01), the figure
  to compare with the accuracy check's synthetic eval split;
- ms/frame: ``detect()`` p50 at the application settings.

``--tiles 2 3`` measures each model once per tiling setting (``DetectorOptions.tiles``, tiled
inference: 1 is off), so the gain on small objects and its cost are in one table.
"""

from __future__ import annotations

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common.args import require_zoo_models
from edgedet.boxes import box_iou
from edgedet.data.evaluate import detections_to_coco_results, evaluate_coco
from edgedet.detections import Detections
from edgedet.detector import Detector
from edgedet.options import MAX_TILES
from edgedet.zoo import list_models


def demo_video() -> Path:
    """The video ``apps/webcam.py`` plays without a camera (rendered on first use)."""
    # The apps import their siblings as top-level modules, as when run as scripts.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps"))
    import sources

    return sources.demo_video()


def read_frames(video: Path, every: int, limit: int) -> list[tuple[int, np.ndarray]]:
    """``[(frame index, BGR frame)]``: every ``every``-th frame, at most ``limit``."""
    capture = cv2.VideoCapture(str(video))
    frames: list[tuple[int, np.ndarray]] = []
    index = 0
    try:
        while len(frames) < limit:
            ok, frame = capture.read()
            if not ok:
                break
            if index % every == 0:
                frames.append((index, frame))
            index += 1
    finally:
        capture.release()
    if not frames:
        raise SystemExit(f"error: no frame could be read from {video}")
    return frames


def ground_truth_of(coco: dict, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes_xyxy (N, 4), 0-based class ids (N,))`` of one frame, crowd objects left out."""
    entries = [a for a in coco["annotations"]
               if a["image_id"] == image_id and not a.get("iscrowd", 0)]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in entries)],
                     dtype=np.float64).reshape(-1, 4)
    return boxes, np.array([a["category_id"] - 1 for a in entries], dtype=np.int64)


def covered_mask(found: Detections, gt_xyxy: np.ndarray, gt_classes: np.ndarray
                 ) -> np.ndarray:
    """``(N,) bool``: which ground-truth objects a same-class detection overlaps at
    IoU >= 0.5."""
    if len(found) == 0 or len(gt_xyxy) == 0:
        return np.zeros(len(gt_xyxy), dtype=bool)
    iou = box_iou(gt_xyxy, found.xyxy.astype(np.float64))
    same_class = gt_classes[:, None] == found.class_ids[None, :]
    return ((iou >= 0.5) & same_class).any(axis=1)


def covered(found: Detections, gt_xyxy: np.ndarray, gt_classes: np.ndarray) -> int:
    """Ground-truth objects that a same-class detection overlaps at IoU >= 0.5."""
    return int(covered_mask(found, gt_xyxy, gt_classes).sum())


# COCO's area buckets (pixels of the frame): small < 32^2 <= medium < 96^2 <= large.
SIZE_BUCKETS = (("S", 0.0, 32.0**2), ("M", 32.0**2, 96.0**2), ("L", 96.0**2, np.inf))


def measure(model: str, frames: Sequence[tuple[int, np.ndarray]], coco: dict,
            tiles: int = 1) -> dict:
    application = Detector(model, tiles=tiles)
    evaluation = Detector(model, settings="evaluation", tiles=tiles)
    image_ids = [index + 1 for index, _ in frames]
    found_total = 0
    hits: list[np.ndarray] = []
    areas: list[np.ndarray] = []
    results: list[dict] = []
    latencies: list[float] = []
    for (_, frame), image_id in zip(frames, image_ids, strict=True):
        gt_xyxy, gt_classes = ground_truth_of(coco, image_id)
        start = time.perf_counter()
        found = application.detect(frame)
        latencies.append((time.perf_counter() - start) * 1000.0)
        found_total += len(found)
        hits.append(covered_mask(found, gt_xyxy, gt_classes))
        areas.append((gt_xyxy[:, 2] - gt_xyxy[:, 0]) * (gt_xyxy[:, 3] - gt_xyxy[:, 1]))
        scored = evaluation.detect(frame)
        results.extend(detections_to_coco_results(image_id, scored.xyxy, scored.scores,
                                                  scored.class_ids))
    used = set(image_ids)
    subset = {**coco, "images": [i for i in coco["images"] if i["id"] in used],
              "annotations": [a for a in coco["annotations"] if a["image_id"] in used]}
    metrics = evaluate_coco(subset, results).to_dict()
    hit, area = np.concatenate(hits), np.concatenate(areas)
    by_size = {}
    for bucket, low, high in SIZE_BUCKETS:
        in_bucket = (area >= low) & (area < high)
        by_size[f"recall_{bucket}"] = (float(hit[in_bucket].mean()) if in_bucket.any()
                                       else float("nan"))
    return {"model": model, "tiles": tiles, "threshold": application.options.score_threshold,
            "gt_per_frame": len(hit) / len(frames), "found_per_frame": found_total / len(frames),
            "recall": float(hit.mean()) if len(hit) else 0.0, **by_size,
            **{key: metrics[key] * 100 for key in ("AP", "AP50", "APs")},
            "ms_per_frame": statistics.median(latencies)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/demo_video.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None,
                        help="comma-separated zoo names or artifact folders (default: every "
                             "zoo model)")
    parser.add_argument("--every", type=int, default=15, help="use every N-th frame (15)")
    parser.add_argument("--frames", type=int, default=20, help="frames to use (20)")
    parser.add_argument("--video", type=Path, default=None,
                        help="another video with its COCO ground truth next to it as "
                             "<stem>.json, e.g. from edgedet.data.synthetic_video (default: "
                             "the demo video)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[1], metavar="N",
                        help="tiled inference settings to measure, e.g. 1 2 3 (default: 1, off)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per model")
    args = parser.parse_args(argv)
    if args.every < 1 or args.frames < 1:
        parser.error("--every and --frames must be >= 1")
    if any(not 1 <= n <= MAX_TILES for n in args.tiles):
        parser.error(f"--tiles: each from 1 to {MAX_TILES}")
    models = require_zoo_models(parser, args.models.split(",") if args.models
                                else list_models())
    video = args.video or demo_video()
    truth = video.with_suffix(".json")
    if not video.is_file() or not truth.is_file():
        parser.error(f"--video: needs {video} and its ground truth {truth}")
    try:
        coco = json.loads(truth.read_text(encoding="utf-8"))
        coco["annotations"], coco["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        parser.error(f"--video: {truth} is not a COCO ground truth ({error!r})")
    frames = read_frames(video, args.every, args.frames)
    if not args.json:
        print(f"video {video.name}: {len(frames)} frames, one every {args.every}")
    if not args.json:
        print(f"{'model':<24} {'tiles':>5} {'thr':>4} {'GT/frame':>8} {'found/frame':>11} "
              f"{'recall':>6} {'S / M / L':>16} {'AP':>5} {'AP50':>5} {'APs':>5} "
              f"{'ms/frame':>8}")
    for model in models:
        for tiles in args.tiles:
            row = measure(model, frames, coco, tiles)
            if args.json:
                print(json.dumps(row))
                continue
            sizes = " / ".join(f"{row[f'recall_{b}']:.2f}" for b, _, _ in SIZE_BUCKETS)
            print(f"{row['model']:<24} {tiles:>5} {row['threshold']:>4.2f} "
                  f"{row['gt_per_frame']:>8.1f} {row['found_per_frame']:>11.1f} "
                  f"{row['recall']:>6.2f} {sizes:>16} {row['AP']:>5.1f} {row['AP50']:>5.1f} "
                  f"{row['APs']:>5.1f} {row['ms_per_frame']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
