"""``benchmarks/pa_attend_conv.py``: every attend-stage variant it times computes the training
module's function (the plain conv, the speed floor, excepted)."""

import copy

import pytest
import torch

from benchmarks.pa_attend_conv import (
    PLAIN_CONV,
    TrainingModule,
    _random_boxes,
    attend_variants,
    random_attend_conv,
)


def _head_layout(out: torch.Tensor, outputs: int) -> torch.Tensor:
    """``(N, A*O, H, W)`` or ``(N, H*W*A, O)`` -> ``(N, H*W*A, O)``."""
    if out.dim() == 4:
        out = out.permute(0, 2, 3, 1)
    return out.reshape(out.shape[0], -1, outputs)


@pytest.mark.parametrize("size", [1, 5])  # a one-cell map: every tap's corners fall outside
def test_every_variant_equals_the_training_module(size: int) -> None:
    conv = random_attend_conv(8, 5, 2).double()
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 8, size, size, generator=generator, dtype=torch.float64)
    # Boxes spread wide, so that taps reach past every edge of the map.
    boxes = _random_boxes(size, 8, 2, generator).double() * torch.tensor([1, 1, 2.5, 2.5])
    with torch.no_grad():
        expected = _head_layout(TrainingModule(copy.deepcopy(conv), 8.0)(features, boxes), 5)
        variants = attend_variants(conv, 8.0)
        assert list(variants)[-1] == PLAIN_CONV
        for name, module in variants.items():
            if name == PLAIN_CONV:
                continue
            got = module.double()(features, boxes)
            if hasattr(module, "finish"):  # its last step runs after the runtime, on numpy
                got = torch.from_numpy(module.finish([t.numpy() for t in got]))
            got = _head_layout(got, 5)
            assert got.shape == expected.shape, name
            assert torch.allclose(got, expected, atol=1e-9), name
