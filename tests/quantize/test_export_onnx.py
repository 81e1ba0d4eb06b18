"""ONNX export: static graph with the contract's names, and parity with PyTorch in ONNX Runtime.

Tolerance: per output, max |ORT - torch| <= 1e-4 * max(1, max |torch|) in fp32 (the graphs
reorder float sums; observed <= 4e-5 of the output scale, DSANet's large logits included).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from edgedet.anchors import GridAnchorSpec
from edgedet.artifact import INPUT_NAME
from quantize.export_onnx import ExportError, export_onnx

PARITY_TOLERANCE = 1e-4

Exported = Callable[[str], tuple[nn.Module, tuple[int, int], Path]]
# DAIPNet (VGG-16 at 300x300, no rewritten layer) alone takes ~20 s to export: slow-marked.
FAMILIES = ["passd_mobilenet", "harnet_resnet18_small", "dsanet_resnet18",
            pytest.param("daipnet_vgg16", marks=pytest.mark.slow)]


def assert_parity(actual: list[np.ndarray], expected: list[np.ndarray], names: tuple[str, ...],
                  tolerance: float) -> None:
    for name, a, e in zip(names, actual, expected, strict=True):
        assert a.shape == e.shape, name
        limit = tolerance * max(1.0, float(np.abs(e).max()))
        diff = float(np.abs(a - e).max())
        assert diff <= limit, f"{name}: max |diff| {diff:.3g} > {limit:.3g}"


@pytest.mark.parametrize("name", FAMILIES)
def test_graph_interface_and_ort_parity(exported: Exported, name: str) -> None:
    model, (width, height), path = exported(name)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version == 17
    # Standard ops only: no DeformConv, no einsum, no custom domains.
    op_types = {node.op_type for node in graph.graph.node}
    assert not op_types & {"DeformConv", "Einsum"}, op_types
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["edgedet.simplifier"].startswith("onnxsim")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert (graph_input.name, graph_input.shape) == (INPUT_NAME, [1, 3, height, width])
    assert tuple(o.name for o in session.get_outputs()) == model.export_output_names
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in model.forward_export(images)]
    for output, value in zip(session.get_outputs(), expected, strict=True):
        assert output.shape == list(value.shape)  # static shapes
    actual = session.run(None, {INPUT_NAME: images.numpy()})
    assert_parity(actual, expected, model.export_output_names, PARITY_TOLERANCE)


class _Tiny(nn.Module):
    """The smallest ``DetectionModel``: one anchor per pixel, an SSD-style head."""

    head_family = "ssd"
    box_coder_weights = (1.0, 1.0, 1.0, 1.0)
    export_output_names = ("cls_logits", "box_deltas")
    default_nms_mode = "hard"

    def __init__(self) -> None:
        super().__init__()
        self.config = {"architecture": "tiny", "kwargs": {}}
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.export_output_names, self.forward_export(images), strict=True))

    def forward_export(self, images: Tensor) -> tuple[Tensor, ...]:
        maps = self.conv(images).permute(0, 2, 3, 1).reshape(images.shape[0], -1, 6)
        return maps[..., :2].contiguous(), maps[..., 2:].contiguous()

    def anchor_spec(self, image_size: tuple[int, int]) -> GridAnchorSpec:
        width, height = image_size
        return GridAnchorSpec((width, height), ((height, width),), (1,), (1.0,))


class _Broken(_Tiny):
    def forward_export(self, images: Tensor) -> tuple[Tensor, ...]:
        raise RuntimeError("broken on purpose")


def test_non_square_input_size_is_width_height(tmp_path: Path) -> None:
    path = export_onnx(_Tiny(), tmp_path / "tiny.onnx", (12, 8))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 8, 12]
    assert [o.shape for o in session.get_outputs()] == [[1, 96, 2], [1, 96, 4]]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["edgedet.architecture"] == "tiny"


def test_failed_export_leaves_previous_file(tmp_path: Path) -> None:
    path = export_onnx(_Tiny(), tmp_path / "model.onnx", (8, 8))
    good = path.read_bytes()
    with pytest.raises(ExportError, match="broken on purpose"):
        export_onnx(_Broken(), path, (8, 8))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.onnx"]  # no temporary leftovers


def test_model_without_export_interface_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"cannot export Conv2d: .*forward_export"):
        export_onnx(nn.Conv2d(3, 3, 1), tmp_path / "x.onnx", (8, 8))
    assert not (tmp_path / "x.onnx").exists()
