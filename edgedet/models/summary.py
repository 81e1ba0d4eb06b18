"""Model summaries for `edgedet summary`: parameters, FLOPs and default boxes per named model.

The named configurations are the papers' own (class count, backbone, input size), so the
printed parameter counts can be checked against the papers' tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgedet.models.builders import builder_of
from edgedet.models.checkpoint import CheckpointError, build_from_checkpoint
from edgedet.models.daipnet import daipnet_vgg16, daipnet_vgg16_small
from edgedet.models.deform_conv import DeformConv2d
from edgedet.models.dsanet import dsanet_resnet18_small, dsanet_resnet50, dsanet_resnet101
from edgedet.models.harnet import (
    harnet_resnet18_small,
    harnet_resnet50,
    harnet_resnet101,
    harnet_se_resnet50,
)
from edgedet.models.passd import passd_mobilenet, passd_resnet101, passd_vgg16
from edgedet.models.retinanet import retinanet_resnet50

# The layers whose output widths a channel plan records (`edgedet summary`'s table).
WEIGHTED_LAYERS = (nn.Conv2d, nn.Linear, DeformConv2d)


@dataclass(frozen=True)
class NamedConfiguration:
    """A paper configuration: how to build it and the parameter count its paper reports."""

    name: str
    build: Callable[[], nn.Module]
    paper_params_m: float | None = None
    note: str = ""


# COCO has 80 object classes, PASCAL VOC 20 (the papers' "21 classes" include background).
PAPER_CONFIGURATIONS: tuple[NamedConfiguration, ...] = (
    NamedConfiguration("passd_vgg16_320_voc", partial(passd_vgg16, 20, 320), 24.87,
                       "PASSD Table 1"),
    NamedConfiguration("passd_vgg16_320_voc_convhead",
                       partial(passd_vgg16, 20, 320, use_pa=False), 24.82,
                       "PASSD Table 1, plain conv head"),
    NamedConfiguration("passd_vgg16_512_voc", partial(passd_vgg16, 20, 512)),
    NamedConfiguration("passd_mobilenet_320_coco", partial(passd_mobilenet, 80, 320), 6.7,
                       "PASSD Table 6"),
    NamedConfiguration("passd_resnet101_320_coco", partial(passd_resnet101, 80, 320), 47.0,
                       "PASSD Table 5"),
    NamedConfiguration("passd_resnet101_768_coco", partial(passd_resnet101, 80, 768), 48.0,
                       "PASSD Table 5"),
    NamedConfiguration("retinanet_r50_coco", partial(retinanet_resnet50, 80),
                       note="baseline of HAR-Net / DSANet"),
    NamedConfiguration("harnet_r50_coco", partial(harnet_resnet50, 80)),
    NamedConfiguration("harnet_r101_coco", partial(harnet_resnet101, 80)),
    NamedConfiguration("harnet_se_r50_coco", partial(harnet_se_resnet50, 80)),
    NamedConfiguration("harnet_r18_small_coco", partial(harnet_resnet18_small, 80),
                       note="edge / pruning configuration (not in the paper)"),
    NamedConfiguration("dsanet_r50_coco", partial(dsanet_resnet50, 80)),
    NamedConfiguration("dsanet_r50_shared_coco", partial(dsanet_resnet50, 80,
                                                         shared_attention=True)),
    NamedConfiguration("dsanet_r50_conf_coco", partial(dsanet_resnet50, 80,
                                                       with_confidence=True)),
    NamedConfiguration("dsanet_r101_coco", partial(dsanet_resnet101, 80)),
    NamedConfiguration("dsanet_r18_small_coco", partial(dsanet_resnet18_small, 80),
                       note="edge configuration (not in the paper)"),
    NamedConfiguration("daipnet_vgg16_300_coco", partial(daipnet_vgg16, 80, 300)),
    NamedConfiguration("daipnet_vgg16_512_coco", partial(daipnet_vgg16, 80, 512)),
    NamedConfiguration("daipnet_vgg16_small_300_coco", partial(daipnet_vgg16_small, 80, 300),
                       note="edge configuration (not in the paper)"),
)


@dataclass(frozen=True)
class ModelSummary:
    """One row of `edgedet summary`."""

    name: str
    params_m: float
    gflops: float | None  # None when FLOP counting was skipped
    num_boxes: int
    input_size: tuple[int, int]  # (width, height)
    paper_params_m: float | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "params_m": round(self.params_m, 3),
            "gflops": None if self.gflops is None else round(self.gflops, 2),
            "num_boxes": self.num_boxes,
            "input_size": list(self.input_size),
            "paper_params_m": self.paper_params_m,
        }


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (learned scalars; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, input_size: tuple[int, int]) -> float:
    """GFLOPs of one export forward at batch 1, counted by ``torch.utils.flop_counter``.

    The counter reports multiply-adds as 2 FLOPs and counts convolutions and matrix products
    (bilinear sampling and element-wise ops are not counted), so figures are about 2x the
    "GMACs" some papers print.
    """
    width, height = input_size
    images = torch.zeros(1, 3, height, width)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.forward_export(images)
    return counter.get_total_flops() / 1e9


def summarize(config: NamedConfiguration, with_flops: bool = True) -> ModelSummary:
    """Build one configuration and measure it."""
    model = config.build()
    img_size = model.config["kwargs"]["img_size"]  # an int (square) or (width, height)
    input_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    spec = model.anchor_spec(input_size)
    return ModelSummary(
        name=config.name,
        params_m=count_parameters(model) / 1e6,
        gflops=count_gflops(model, input_size) if with_flops else None,
        num_boxes=spec.num_anchors,
        input_size=input_size,
        paper_params_m=config.paper_params_m,
    )


@dataclass(frozen=True)
class CheckpointSummary:
    """A trained checkpoint measured; for a pruned one, the layers its channel plan narrows.

    ``narrowed`` maps each conv / linear whose output width differs from the builder's to
    ``(full width, pruned width)``.
    """

    architecture: str
    params_m: float
    full_params_m: float
    gflops: float
    full_gflops: float
    input_size: tuple[int, int]
    narrowed: dict[str, tuple[int, int]]

    def to_dict(self) -> dict:
        return {**asdict(self), "input_size": list(self.input_size),
                "narrowed": {k: list(v) for k, v in self.narrowed.items()}}

    def format(self) -> str:
        lines = [f"{self.architecture} at {self.input_size[0]}x{self.input_size[1]}: "
                 f"{self.params_m:.2f} M parameters, {self.gflops:.2f} GFLOPs"]
        if self.narrowed:
            lines[0] += (f" (pruned from {self.full_params_m:.2f} M, {self.full_gflops:.2f} "
                         f"GFLOPs: x{self.gflops / self.full_gflops:.2f})")
            width = max(len(name) for name in self.narrowed)
            lines.append(f"{'layer':<{width}}  {'full':>5}  {'kept':>5}")
            lines += [f"{name:<{width}}  {full:>5}  {kept:>5}"
                      for name, (full, kept) in self.narrowed.items()]
        return "\n".join(lines)


def summarize_checkpoint(path: str) -> CheckpointSummary:
    """Measure the model of checkpoint ``path`` against its builder's unpruned network."""
    model, config = build_from_checkpoint(path)
    full = builder_of(config["architecture"])(**config["kwargs"])
    size = config.get("preprocess", {}).get("input_size") or config["kwargs"]["img_size"]
    try:
        input_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    except (TypeError, ValueError, IndexError):
        input_size = (0, 0)
    if min(input_size) < 1:
        raise CheckpointError(f"{path}: input size {size!r} in its config is not a width and "
                              "height of at least 1 pixel")
    full_widths = {name: module.weight.shape[0] for name, module in full.named_modules()
                   if isinstance(module, WEIGHTED_LAYERS)}
    narrowed = {name: (int(full_widths[name]), int(module.weight.shape[0]))
                for name, module in model.named_modules()
                if isinstance(module, WEIGHTED_LAYERS)
                and module.weight.shape[0] != full_widths[name]}
    return CheckpointSummary(
        architecture=config["architecture"], params_m=count_parameters(model) / 1e6,
        full_params_m=count_parameters(full) / 1e6, gflops=count_gflops(model, input_size),
        full_gflops=count_gflops(full, input_size), input_size=input_size, narrowed=narrowed)
