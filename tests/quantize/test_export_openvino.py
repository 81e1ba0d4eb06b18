"""OpenVINO IR: fp32 parity with PyTorch (and hence with ONNX Runtime) for each family.

The CPU plugin runs bf16 by default on CPUs that have it, so the compiled models use the
``INFERENCE_PRECISION_HINT: f32`` hint. Tolerance: per output, max |OpenVINO - torch| <=
2e-4 * max(1, max |torch|) (observed <= 4e-5 of the output scale; OpenVINO fuses more than
ONNX Runtime, so its sums are reordered more).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

openvino = pytest.importorskip("openvino")

from quantize.export_onnx import INPUT_NAME, ExportError  # noqa: E402
from quantize.export_openvino import export_openvino  # noqa: E402

PARITY_TOLERANCE = 2e-4

Exported = Callable[[str], tuple[nn.Module, tuple[int, int], Path]]
# DAIPNet (VGG-16 at 300x300, no rewritten layer) alone takes ~20 s to export: slow-marked.
FAMILIES = ["passd_mobilenet", "harnet_resnet18_small", "dsanet_resnet18",
            pytest.param("daipnet_vgg16", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", FAMILIES)
def test_openvino_fp32_parity(exported: Exported, name: str, tmp_path: Path) -> None:
    model, (width, height), onnx_path = exported(name)
    xml_path, bin_path = export_openvino(onnx_path, tmp_path / "ir")
    assert sorted(os.listdir(tmp_path / "ir")) == ["model.bin", "model.xml"]
    assert bin_path == tmp_path / "ir" / "model.bin" and bin_path.stat().st_size > 0
    # fp32 weights: no f16 constants in the IR.
    precisions = {layer.find("data").get("element_type")
                  for layer in ET.parse(xml_path).getroot().iter("layer")
                  if layer.get("type") == "Const"}
    assert "f16" not in precisions and "f32" in precisions
    compiled = openvino.Core().compile_model(str(xml_path), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    assert compiled.input(0).get_any_name() == INPUT_NAME
    assert list(compiled.input(0).get_shape()) == [1, 3, height, width]
    names = tuple(output.get_any_name() for output in compiled.outputs)
    assert names == model.export_output_names
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in model.forward_export(images)]
    result = compiled(images.numpy())
    for index, (output_name, value) in enumerate(zip(names, expected, strict=True)):
        actual = result[compiled.output(index)]
        assert actual.shape == value.shape, output_name
        limit = PARITY_TOLERANCE * max(1.0, float(np.abs(value).max()))
        diff = float(np.abs(actual - value).max())
        assert diff <= limit, f"{name}/{output_name}: max |diff| {diff:.3g} > {limit:.3g}"


def test_export_from_module_and_missing_file(tmp_path: Path) -> None:
    model = nn.Sequential()
    with pytest.raises(ExportError, match="input_size"):
        export_openvino(model, tmp_path / "a")
    with pytest.raises(ExportError, match="not found"):
        export_openvino(tmp_path / "missing.onnx", tmp_path / "b")
    assert os.listdir(tmp_path / "b") == []
