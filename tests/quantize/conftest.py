"""Small detectors of each family with weights that make every layer matter.

The builders' initialisations (N(0, 0.01) convs, gamma = 0, zero offsets) give nearly constant
outputs, which any export would match; here every conv gets He-normal weights so activations
stay O(1) through the network, and the rewritten layers get random non-trivial weights (offsets
that really move the taps, gamma != 0). ``exported`` caches one ONNX export per detector for
the whole test session.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from edgedet.models.attention import SelfAttention2d
from edgedet.models.daipnet import daipnet_vgg16
from edgedet.models.dsanet import dsanet_resnet18
from edgedet.models.harnet import harnet_resnet18_small
from edgedet.models.passd import passd_mobilenet
from quantize.export_onnx import export_onnx


def randomise(module: nn.Module, generator: torch.Generator, std: float = 0.1) -> None:
    """Overwrite every parameter of ``module`` with N(0, std) values."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def he_normal(model: nn.Module, generator: torch.Generator) -> None:
    """He-normal weights (std sqrt(2 / fan_in)) and small random biases for every conv."""
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter) or weight.dim() != 4:
                continue
            fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
            weight.copy_(torch.randn(weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.copy_(torch.randn(bias.shape, generator=generator) * 0.1)


def small_passd() -> nn.Module:
    generator = torch.Generator().manual_seed(5)
    model = passd_mobilenet(num_classes=3, img_size=320)
    he_normal(model, generator)
    for module in (model.head.attend_cls, model.head.attend_box, model.head.propose_box):
        randomise(module, generator, std=0.05)
    return model.eval()


def small_harnet() -> nn.Module:
    generator = torch.Generator().manual_seed(6)
    model = harnet_resnet18_small(num_classes=3, img_size=(160, 128))
    he_normal(model, generator)
    for attention in model.aligned_attention.values():
        randomise(attention.offset, generator, std=0.05)
        randomise(attention.deform, generator, std=0.05)
    return model.eval()


def small_dsanet() -> nn.Module:
    generator = torch.Generator().manual_seed(7)
    model = dsanet_resnet18(num_classes=3, img_size=(160, 128))
    he_normal(model, generator)
    for module in model.modules():
        if isinstance(module, SelfAttention2d):
            randomise(module, generator, std=0.05)
            with torch.no_grad():
                module.gamma.fill_(0.5)
    return model.eval()


def small_daipnet() -> nn.Module:
    model = daipnet_vgg16(num_classes=3, img_size=300)
    he_normal(model, torch.Generator().manual_seed(8))
    return model.eval()


# name -> (builder, input (width, height))
SMALL_DETECTORS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int]]] = {
    "passd_mobilenet": (small_passd, (320, 320)),
    "harnet_resnet18_small": (small_harnet, (160, 128)),
    "dsanet_resnet18": (small_dsanet, (160, 128)),
    "daipnet_vgg16": (small_daipnet, (300, 300)),
}


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory
             ) -> Callable[[str], tuple[nn.Module, tuple[int, int], Path]]:
    """``exported(name) -> (model, (width, height), onnx_path)``, each exported once."""
    cache: dict[str, tuple[nn.Module, tuple[int, int], Path]] = {}
    root = tmp_path_factory.mktemp("onnx")

    def get(name: str) -> tuple[nn.Module, tuple[int, int], Path]:
        if name not in cache:
            build, input_size = SMALL_DETECTORS[name]
            model = build()
            cache[name] = (model, input_size,
                           export_onnx(model, root / f"{name}.onnx", input_size))
        return cache[name]

    return get
