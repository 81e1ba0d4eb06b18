"""A tiny PASSD-MobileNet checkpoint (width 0.25, FPN 32, 128x128 input, the synthetic classes)
with He-normal weights, written like ``train/`` writes one."""

from __future__ import annotations

from pathlib import Path

import torch

from edgedet.data.synthetic import SYNTHETIC_CLASSES
from edgedet.models.passd import passd_mobilenet
from edgedet.preprocess import PreprocessConfig
from tests.quantize.conftest import he_normal, randomise
from train.checkpoint import save_checkpoint

INPUT_SIZE = (128, 128)


# The fragile checkpoint's layer whose INPUT spans a huge range, and the one producing it.
FRAGILE_LAYER = "/backbone/mobilenet/model.3/model.3.0/Conv"
FRAGILE_PRODUCER = "/backbone/mobilenet/model.2/model.2.3/Conv"


def write_tiny_checkpoint(stem: Path, fragile_scale: float | None = None) -> Path:
    """Write ``stem.safetensors`` + ``stem.json``; returns the ``.safetensors`` path.

    ``fragile_scale``: multiply channel 0 of MobileNet block 2's output (its last BN, before
    the ReLU) by this and divide block 3's depthwise weights of that channel by it: the same
    function (ReLU commutes with a positive scale, a depthwise conv reads one channel), but
    the activation between them spans ``fragile_scale`` times the range of its other
    channels, which per-tensor INT8 of that tensor (``FRAGILE_LAYER``'s input, and for ONNX
    Runtime also ``FRAGILE_PRODUCER``'s output) rounds to nothing.
    """
    generator = torch.Generator().manual_seed(11)
    model = passd_mobilenet(num_classes=len(SYNTHETIC_CLASSES), img_size=320, width_mult=0.25,
                            fpn_channels=32)
    he_normal(model, generator)
    for module in (model.head.attend_cls, model.head.attend_box, model.head.propose_box):
        randomise(module, generator, std=0.05)
    model.eval()
    if fragile_scale is not None:
        with torch.no_grad():
            block2_bn, block3_depthwise = (model.backbone.mobilenet.model[2][4],
                                           model.backbone.mobilenet.model[3][0])
            block2_bn.weight[0] *= fragile_scale
            block2_bn.bias[0] = block2_bn.bias[0].abs() * fragile_scale
            block3_depthwise.weight[0] /= fragile_scale
    config = {
        **model.config,
        "class_names": list(SYNTHETIC_CLASSES),
        "input_size": list(INPUT_SIZE),
        "preprocess": PreprocessConfig(input_size=INPUT_SIZE).to_dict(),
        "anchor_spec": model.anchor_spec(INPUT_SIZE).to_dict(),
        "box_coder_weights": list(model.box_coder_weights),
        "head_family": "passd",
        "output_names": list(model.export_output_names),
        "postprocess": {"score_threshold": 0.01, "iou_threshold": 0.45,
                        "pre_nms_top_k": 200, "max_detections": 100},
        "model_name": "tiny_passd",
    }
    return save_checkpoint(stem, model, config)
