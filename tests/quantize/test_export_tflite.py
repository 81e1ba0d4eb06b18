"""litert-torch conversion of all four rewritten detectors: raw outputs of the fp32 ``.tflite``
against PyTorch, the signature's names, the float scope found on the TFLite graph (the same
rules as on ONNX), and the errors for a missing converter or an unrewritten model."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgedet.backends.tflite import TFLiteBackend
from quantize.export_onnx import ExportError
from quantize.export_tflite import export_tflite, signature_outputs
from quantize.int8_scope import find_kept_out_nodes, onnx_scope_nodes
from quantize.ptq_tflite import TFLiteGraph
from quantize.rewrites import rewrite_for_export
from tests.quantize.conftest import SMALL_DETECTORS

pytest.importorskip("litert_torch", reason="needs edgedet[tflite-export]")

ALL = ("sampling", "sampling_reads", "attention", "masks", "head")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory
              ) -> Callable[[str], tuple[nn.Module, tuple[int, int], Path]]:
    """``converted(name) -> (rewritten model, (width, height), fp32 .tflite)``, once each."""
    cache: dict[str, tuple[nn.Module, tuple[int, int], Path]] = {}
    root = tmp_path_factory.mktemp("tflite")

    def get(name: str) -> tuple[nn.Module, tuple[int, int], Path]:
        if name not in cache:
            build, input_size = SMALL_DETECTORS[name]
            torch.manual_seed(0)  # parameters a builder leaves to the global generator
            model = rewrite_for_export(build()).eval()
            cache[name] = (model, input_size,
                           export_tflite(model, root / f"{name}.tflite", input_size))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(SMALL_DETECTORS))
def test_fp32_tflite_matches_pytorch(converted, name):
    model, (width, height), path = converted(name)
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = dict(zip(model.export_output_names, model.forward_export(images),
                            strict=True))
    got = signature_outputs(path, images.numpy())
    assert set(got) == set(model.export_output_names)  # signature keys are the output names
    for key, reference in expected.items():
        reference = reference.numpy()
        assert got[key].shape == reference.shape, key
        scale = float(np.abs(reference).max()) + 1e-6
        np.testing.assert_allclose(got[key], reference, rtol=0, atol=2e-4 * scale,
                                   err_msg=f"{name} {key}")
    # The SDK backend reads the same file, NCHW in, the manifest's names out.
    backend = TFLiteBackend(path, threads=1)
    assert backend.input_shape == (1, 3, height, width)
    assert tuple(backend.output_names) == tuple(model.export_output_names)
    np.testing.assert_allclose(backend.run(images.numpy())[model.export_output_names[0]],
                               got[model.export_output_names[0]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(SMALL_DETECTORS))
def test_float_scope_on_tflite_matches_the_onnx_one(converted, exported, name):
    # The same structural rules on both graphs keep the same kinds of ops in float.
    _, _, path = converted(name)
    graph = TFLiteGraph(path)
    kept = graph.kept_out(ALL)
    by_op = {c: Counter(graph.opcodes[n] for n in names) for c, names in kept.items()}
    onnx_model = onnx.load(str(exported(name)[2]))
    onnx_types = {node.name: node.op_type for node in onnx_model.graph.node}
    onnx_kept = {c: Counter(onnx_types[n] for n in names)
                 for c, names in find_kept_out_nodes(onnx_model, ALL).items()}
    assert by_op["attention"]["SOFTMAX"] == onnx_kept["attention"]["Softmax"]
    assert by_op["masks"]["LOGISTIC"] == onnx_kept["masks"]["Sigmoid"]
    # The sampling reads (a Gather of a computed table at computed rows) are the same ops;
    # ONNX also has Gathers that index a tensor with a constant (x[..., 0]), TFLite slices.
    nodes, constants, _ = onnx_scope_nodes(onnx_model)
    onnx_reads = [n for n in nodes if n.op_type == "Gather"
                  and not {n.inputs[0], n.inputs[1]} & constants]
    tflite_reads = [n for n in graph.nodes if n.op_type == "Gather"
                    and not {n.inputs[0], n.inputs[1]} & graph.constants]
    assert len(tflite_reads) == len(onnx_reads)
    assert {n.name for n in tflite_reads} <= set(kept["sampling_reads"])
    assert by_op["sampling_reads"]["GATHER_ND"] == onnx_kept["sampling_reads"]["Gather"]
    # Weight layers are never in the sampling, attention or mask scope; the head is made of
    # weight layers and the layout ops that flatten and join their outputs.
    for category in ("sampling", "sampling_reads", "attention", "masks"):
        assert not {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} & set(by_op[category])
    assert "CONV_2D" in by_op["head"]
    assert set(by_op["head"]) <= {"CONV_2D", "FULLY_CONNECTED", "RESHAPE", "TRANSPOSE",
                                  "CONCATENATION"}, by_op["head"]
    expected_nonempty = {"passd_mobilenet": "sampling", "harnet_resnet18_small": "masks",
                         "dsanet_resnet18": "attention", "daipnet_vgg16": "masks"}[name]
    assert kept[expected_nonempty]


def test_missing_converter_names_the_extra(monkeypatch, tmp_path):
    model = rewrite_for_export(SMALL_DETECTORS["dsanet_resnet18"][0]())
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails
    with pytest.raises(ExportError, match=r"edgedet\[tflite-export\]"):
        export_tflite(model, tmp_path / "m.tflite", (160, 128))
    assert not (tmp_path / "m.tflite").exists()


def test_unrewritten_model_is_refused(tmp_path):
    with pytest.raises(ExportError, match="rewrite_for_export"):
        export_tflite(SMALL_DETECTORS["dsanet_resnet18"][0](), tmp_path / "m.tflite", (160, 128))
