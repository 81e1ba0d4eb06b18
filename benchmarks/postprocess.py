"""Benchmark the numpy post-processing on a detector-sized output.

    python benchmarks/postprocess.py [--anchors 20000] [--classes 80] [--repeats 20]

The input imitates a trained detector on a busy image: ``--objects`` objects, each covered by
many overlapping anchors whose score for the object's class grows with their IoU, and
background anchors whose scores are mostly tiny (sigmoid of a low logit). Prints the median
time of each stage in milliseconds; nothing is asserted (speed is measured, not unit-tested).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from edgedet._repo import use_repo_root

use_repo_root(__file__)

from benchmarks.common.args import require_at_least
from edgedet.boxes import batched_nms, batched_soft_nms, box_iou, box_voting, topk_candidates
from edgedet.postprocess import select_detections


def make_detector_output(
    num_anchors: int, num_classes: int, num_objects: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes_xyxy (A, 4), scores (A, K))`` resembling a trained detector's decoded output."""
    rng = np.random.default_rng(seed)
    size = 640.0
    centres = rng.uniform(0, size, (num_objects, 2))
    sides = np.exp(rng.uniform(np.log(12), np.log(400), (num_objects, 2)))
    objects = np.concatenate([centres - sides / 2, centres + sides / 2], 1).clip(0, size)
    object_classes = rng.integers(0, num_classes, num_objects)

    owner = rng.integers(-1, num_objects, num_anchors)  # -1: background anchor
    owner[rng.uniform(size=num_anchors) < 0.6] = -1
    boxes = np.empty((num_anchors, 4), np.float32)
    background = owner < 0
    bg_xy = rng.uniform(0, size, (background.sum(), 2))
    bg_wh = np.exp(rng.uniform(np.log(8), np.log(500), (background.sum(), 2)))
    boxes[background] = np.concatenate([bg_xy, bg_xy + bg_wh], 1)
    fg = ~background
    base = objects[owner[fg]]
    wh = base[:, 2:] - base[:, :2]
    jitter = rng.normal(0, 0.12, (fg.sum(), 4)) * np.concatenate([wh, wh], 1)
    boxes[fg] = base + jitter

    logits = rng.normal(-7.0, 1.5, (num_anchors, num_classes))
    scores = 1 / (1 + np.exp(-logits))
    iou = np.diag(box_iou(boxes[fg], base))
    scores[np.flatnonzero(fg), object_classes[owner[fg]]] = np.clip(
        iou * rng.uniform(0.5, 1.05, fg.sum()), 0, 1
    )
    return boxes, scores.astype(np.float32)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchors", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--score-threshold", type=float, default=0.05)
    parser.add_argument("--top-k", type=int, default=1000, help="pre-NMS top-k")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    require_at_least(parser, 1, anchors=args.anchors, classes=args.classes,
                     repeats=args.repeats)
    require_at_least(parser, 0, objects=args.objects, top_k=args.top_k,
                     score_threshold=args.score_threshold)

    boxes, scores = make_detector_output(args.anchors, args.classes, args.objects)
    anchor_idx, class_idx, cand_scores = topk_candidates(scores, args.top_k,
                                                         args.score_threshold)
    all_above = int((scores > args.score_threshold).sum())
    cand_boxes = boxes[anchor_idx]
    keep_soft, _ = batched_soft_nms(cand_boxes, cand_scores, class_idx)
    print(f"input: {args.anchors} boxes x {args.classes} classes "
          f"({args.anchors * args.classes:,} scores), {all_above} above "
          f"{args.score_threshold}, {len(cand_scores)} after top-{args.top_k}")

    rows = [
        ("top-k pre-filter (threshold + top-k)",
         lambda: topk_candidates(scores, args.top_k, args.score_threshold)),
        ("NMS, class-aware (hard, IoU 0.5)",
         lambda: batched_nms(cand_boxes, cand_scores, class_idx, 0.5)),
        ("Soft-NMS, class-aware (Gaussian, sigma 0.5)",
         lambda: batched_soft_nms(cand_boxes, cand_scores, class_idx)),
        ("Soft-NMS, class-aware (linear, IoU 0.3)",
         lambda: batched_soft_nms(cand_boxes, cand_scores, class_idx, method="linear")),
        ("box voting (after Soft-NMS, 100 boxes)",
         lambda: box_voting(cand_boxes[keep_soft[:100]], class_idx[keep_soft[:100]],
                            cand_boxes, cand_scores, class_idx)),
    ]
    for mode in ("hard", "soft", "soft+voting"):
        rows.append((f"select_detections end to end, nms_mode={mode}",
                     lambda mode=mode: select_detections(
                         boxes, scores, score_threshold=args.score_threshold,
                         pre_nms_top_k=args.top_k, nms_mode=mode)))
    rows.append((f"NMS without top-k ({all_above} candidates)",
                 lambda: select_detections(boxes, scores, pre_nms_top_k=0,
                                           score_threshold=args.score_threshold)))
    width = max(len(name) for name, _ in rows)
    print(f"{'stage':<{width}}  median ms ({args.repeats} runs)")
    for name, fn in rows:
        print(f"{name:<{width}}  {median_ms(fn, args.repeats):8.2f}")


if __name__ == "__main__":
    main()
