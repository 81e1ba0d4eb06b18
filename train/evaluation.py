"""Training-time evaluation: COCO box metrics of the model being trained.

The model's raw head outputs go through the SDK's own decoder (``edgedet.decoder.HeadDecoder``,
built from the checkpoint config as ``Detector`` builds it from a manifest), so the AP logged
during training is the reference AP of the conversion pipeline's accuracy check on the same
images. Distributed: each rank decodes its shard, rank 0 scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from edgedet.data.coco import coco_annotations
from edgedet.data.evaluate import detections_to_coco_results, evaluate_coco
from edgedet.decoder import HeadDecoder
from edgedet.preprocess import FrameTransform
from train.checkpoint import unwrap
from train.data import EvalRecord, loader_batches
from train.distributed import DistInfo, gather_objects


def _autocast(device: torch.device, amp: str | None):
    """``torch.autocast`` at ``amp`` ("bf16" / "fp16") precision; a no-op context for None.

    The training step (train/engine.py) uses it too: both passes run at one precision.
    """
    if amp is None:
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _coco_ground_truth(records: Sequence[EvalRecord], class_names: Sequence[str]) -> dict:
    """COCO ground truth (frame pixels, category = class + 1) of the evaluated images, built
    exactly as ``edgedet.data.evaluate.samples_to_coco_gt`` builds it for the SDK's check."""
    images, annotations = [], []
    for record in records:
        images.append({"id": record.image_id, "width": record.width, "height": record.height,
                       "file_name": str(record.image_id)})
        annotations.extend(coco_annotations(record.image_id, record.boxes_xyxy,
                                            record.class_ids, record.iscrowd,
                                            first_ann_id=len(annotations) + 1,
                                            areas=record.areas))
    return {"images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    decoder: HeadDecoder,
    info: DistInfo,
    amp: str | None = None,
    progress: bool = False,
) -> dict[str, float] | None:
    """COCO box metrics of ``model`` on ``loader``'s images, through the SDK's decoder.

    Each rank decodes its shard (model → numpy → ``decoder``, which maps boxes back to the
    original image exactly as ``Detector.detect`` does); rank 0 gathers and scores with
    ``evaluate_coco``. Returns the metrics on rank 0, None elsewhere.
    """
    bare = unwrap(model)
    was_training = bare.training
    bare.eval()
    records: list[EvalRecord] = []
    results: list[dict] = []
    # (COCO's val split takes minutes: a bar, on rank 0 and where the run shows its own.)
    with loader_batches(loader) as iterator:
        batches = tqdm(iterator, desc="evaluating", leave=False, dynamic_ncols=True,
                       disable=not (info.is_main and progress), total=len(loader))
        for images, batch_records in batches:
            with _autocast(info.device, amp):
                outputs = bare(images.to(info.device, non_blocking=True))
            arrays = {name: outputs[name].float().cpu().numpy()
                      for name in decoder.output_names}
            transforms = [FrameTransform((r.width, r.height), r.scale_x, r.scale_y, r.pad_x,
                                         r.pad_y) for r in batch_records]
            for record, found in zip(batch_records, decoder.decode_batch(arrays, transforms),
                                     strict=True):
                results.extend(detections_to_coco_results(record.image_id, found.xyxy,
                                                          found.scores, found.class_ids))
                records.append(record)
    bare.train(was_training)
    gathered = gather_objects((records, results), info)
    if not info.is_main:
        return None
    all_records = [r for part, _ in gathered for r in part]
    all_results = [r for _, part in gathered for r in part]
    metrics = evaluate_coco(_coco_ground_truth(all_records, class_names=decoder.class_names),
                            all_results)
    return metrics.to_dict()
