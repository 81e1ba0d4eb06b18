"""The one table from architecture name to builder function.

The name is the builder's own function name; it is what checkpoints and manifests store as
``architecture``, so ``MODEL_BUILDERS[config["architecture"]](**config["kwargs"])`` rebuilds
the network of any checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgedet.models.daipnet import daipnet_vgg16, daipnet_vgg16_small
from edgedet.models.dsanet import (
    dsanet_resnet18,
    dsanet_resnet18_small,
    dsanet_resnet50,
    dsanet_resnet101,
)
from edgedet.models.harnet import (
    harnet_resnet18_small,
    harnet_resnet50,
    harnet_resnet101,
    harnet_se_resnet50,
)
from edgedet.models.passd import passd_mobilenet, passd_resnet101, passd_vgg16
from edgedet.models.retinanet import retinanet_resnet18, retinanet_resnet50, retinanet_resnet101

MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    builder.__name__: builder
    for builder in (
        passd_vgg16, passd_resnet101, passd_mobilenet,
        daipnet_vgg16, daipnet_vgg16_small,
        harnet_resnet50, harnet_resnet101, harnet_se_resnet50, harnet_resnet18_small,
        dsanet_resnet18, dsanet_resnet18_small, dsanet_resnet50, dsanet_resnet101,
        retinanet_resnet18, retinanet_resnet50, retinanet_resnet101,
    )
}


def builder_of(architecture: str) -> Callable[..., nn.Module]:
    """The builder function for ``architecture``, with a clear error for unknown names."""
    try:
        return MODEL_BUILDERS[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(MODEL_BUILDERS))}"
        ) from None
