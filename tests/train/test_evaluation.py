"""Training-time evaluation and the conversion pipeline's reference score one number: both
decode with ``edgedet.decoder.HeadDecoder`` and build the same COCO ground truth."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from edgedet.artifact import Artifact
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.decoder import HeadDecoder
from edgedet.models.checkpoint import build_from_checkpoint
from edgedet.preprocess import PreprocessConfig
from quantize.accuracy import coco_metrics, reference_detector, run_detector
from quantize.manifest import build_manifest
from tests.quantize.tiny_checkpoint import write_tiny_checkpoint
from train.data import EvalDataset, collate_eval
from train.distributed import DistInfo
from train.evaluation import evaluate


def test_training_eval_ap_is_the_reference_ap(tmp_path):
    model, config = build_from_checkpoint(write_tiny_checkpoint(tmp_path / "tiny"))
    # Frames larger than the input, as the zoo model's 640x480 validation frames: both paths
    # resize them and map the boxes back the same way.
    samples = list(SyntheticScenes(6, seed=1, config=SyntheticConfig(image_size=(200, 150))))
    preprocess_config = PreprocessConfig.from_dict(config["preprocess"])
    loader = DataLoader(EvalDataset(samples, preprocess_config), batch_size=4,
                        collate_fn=collate_eval)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    decoder = HeadDecoder.from_manifest(config)
    # The papers' evaluation threshold, not the application one detect() adds by default
    # (which, applied here, once cut the edge HAR-Net's validation AP from 17.2 to 11.9).
    assert decoder.options.score_threshold == config["postprocess"]["score_threshold"]
    training = evaluate(model, loader, decoder, info)

    # The accuracy check's reference: Detector + TorchBackend on an artifact's manifest.
    manifest = build_manifest(model, config, "tiny", "fp32", "onnxruntime")
    # The torch reference never reads a model file; the checkpoint stands in for one.
    staged = Artifact.stage(tmp_path / "staged", {"model.onnx": tmp_path / "tiny.safetensors"},
                            manifest)
    reference = run_detector(reference_detector(model, staged, "cpu").detect, samples,
                             progress=False)
    assert sum(len(d) for d in reference.detections) > 50
    checked = coco_metrics(samples, reference.detections, config["class_names"])
    assert training is not None
    assert {k: 100.0 * v if v >= 0 else -1.0 for k, v in training.items()} == pytest.approx(
        checked, abs=1e-6)


def test_training_s_ground_truth_keeps_the_file_s_object_areas():
    # The same ground truth as edgedet.data.evaluate.samples_to_coco_gt, areas included (they
    # sort objects into APs / APm / APl).
    import numpy as np

    from edgedet.data.evaluate import samples_to_coco_gt
    from edgedet.data.sample import Sample
    from train.data import EvalDataset
    from train.evaluation import _coco_ground_truth

    sample = Sample(image=np.zeros((48, 64, 3), np.uint8), boxes_xyxy=[[0, 0, 40, 40]],
                    class_ids=[0], image_id=5, areas=[500.0])
    config = PreprocessConfig(input_size=(64, 48))
    _, record = EvalDataset([sample], config)[0]
    ours = _coco_ground_truth([record], ["a"])["annotations"]
    sdk = samples_to_coco_gt([sample], ["a"])["annotations"]
    assert [a["area"] for a in ours] == [a["area"] for a in sdk] == [500.0]
