from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedet.backends import BackendError
from edgedet.tensorrt_config import (
    DEFAULT_WORKSPACE_MB,
    builder_flags_for,
    cuda_device_index,
    onnx_op_types,
    workspace_mb,
)
from tests.edgedet.tiny_artifacts import OUTPUT_NAMES, TinyHead, export_onnx


def _qdq_model(path: Path, in_subgraph: bool = False) -> Path:
    """images → QuantizeLinear → DequantizeLinear → Relu (int8, zero point 0), optionally
    inside the then-branch of an If node."""
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    qdq = [helper.make_node("QuantizeLinear", ["images", "scale", "zero"], ["q"]),
           helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
           helper.make_node("Relu", ["dq"], ["out"])]
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])
    if in_subgraph:
        branch = helper.make_graph(qdq, "then", [], [out])
        other = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "else", [],
                                  [out])
        cond = numpy_helper.from_array(np.array(True), "cond")
        nodes = [helper.make_node("If", ["cond"], ["out"], then_branch=branch,
                                  else_branch=other)]
        initializers = [scale, zero, cond]
    else:
        nodes, initializers = qdq, [scale, zero]
    graph = helper.make_graph(nodes, "qdq", [images], [out], initializer=initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fp") / "model.onnx"
    export_onnx(TinyHead("passd", seed=2), path, OUTPUT_NAMES["passd"])
    return path


def test_op_types_are_read_like_onnx_reads_them(float_onnx: Path) -> None:
    expected = [node.op_type for node in onnx.load(str(float_onnx)).graph.node]
    assert list(onnx_op_types(float_onnx.read_bytes())) == expected
    assert "Conv" in expected


def test_a_float_graph_builds_fp16_and_a_qdq_graph_int8_plus_fp16(float_onnx: Path,
                                                                  tmp_path: Path) -> None:
    assert builder_flags_for(float_onnx) == ("fp16",)
    assert builder_flags_for(_qdq_model(tmp_path / "qdq.onnx")) == ("fp16", "int8")
    assert builder_flags_for(_qdq_model(tmp_path / "if.onnx", in_subgraph=True)) == (
        "fp16", "int8")


@pytest.mark.parametrize("content", [b"", b"\x08\x07 not a protobuf", b"\xff" * 40,
                                     b"\x3a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"])
def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(BackendError, match=r"cannot read .*broken\.onnx as an ONNX model"):
        builder_flags_for(path)
    with pytest.raises(BackendError, match="cannot read"):
        builder_flags_for(tmp_path / "missing.onnx")


def test_workspace_from_argument_environment_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEDET_TRT_WORKSPACE_MB", raising=False)
    assert workspace_mb() == DEFAULT_WORKSPACE_MB == 1024
    monkeypatch.setenv("EDGEDET_TRT_WORKSPACE_MB", "2048")
    assert workspace_mb() == 2048 and workspace_mb(512) == 512
    monkeypatch.setenv("EDGEDET_TRT_WORKSPACE_MB", "lots")
    with pytest.raises(BackendError, match="EDGEDET_TRT_WORKSPACE_MB must be a positive"):
        workspace_mb()
    with pytest.raises(BackendError, match="--workspace must be a positive number of MB"):
        workspace_mb(0)


def test_cuda_device_index() -> None:
    assert [cuda_device_index(d) for d in (None, "cuda", "GPU", "0", "cuda:1", " 2 ", 3)] == [
        0, 0, 0, 0, 1, 2, 3]
    for bad in ("cpu", "cuda:x", "-1", "auto"):
        with pytest.raises(BackendError, match="CUDA GPU index"):
            cuda_device_index(bad)
