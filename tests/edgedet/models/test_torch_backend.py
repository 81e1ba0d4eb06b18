"""``TorchBackend``: the reference runs on its own device without moving the caller's model."""

from __future__ import annotations

import numpy as np
import torch

from edgedet.models.passd import passd_mobilenet
from edgedet.models.torch_backend import TorchBackend


def test_another_device_gets_a_copy_and_the_caller_s_model_stays_put() -> None:
    # The conversion pipeline checks the fp32 reference on CUDA where there is one, then
    # exports and calibrates the same model on the CPU: moving it broke the INT8 build.
    model = passd_mobilenet(num_classes=2, img_size=320, width_mult=0.25).eval()
    backend = TorchBackend(model, (320, 320), device="meta")  # stands in for "cuda"
    assert next(model.parameters()).device.type == "cpu"
    assert next(backend.model.parameters()).device.type == "meta"
    same = TorchBackend(model, (320, 320), device="cpu")  # already there: no copy
    assert same.model is model
    images = np.random.default_rng(0).normal(0, 1, (1, 3, 320, 320)).astype(np.float32)
    with torch.no_grad():
        expected = model.forward_export(torch.from_numpy(images))
    got = same.run(images)
    for name, tensor in zip(same.output_names, expected, strict=True):
        np.testing.assert_allclose(got[name], tensor.numpy(), rtol=1e-5, atol=1e-5)
