"""INT8 QDQ ONNX from ``quantize.ptq_onnx``: quantized where it should be, float where kept out,
and close to the fp32 model on calibration-like inputs."""

from __future__ import annotations

import logging

import onnx
import onnxruntime as ort
import pytest

from quantize.calibration import CALIBRATION_SEED, EVAL_SEED
from quantize.int8_scope import find_kept_out_nodes, flatten
from quantize.ptq_onnx import quantize_onnx, quantized_tensor_names
from tests.quantize.ptq_helpers import cosine, synthetic_inputs


@pytest.fixture(scope="module")
def passd_int8(exported, tmp_path_factory):
    _, input_size, fp32_path = exported("passd_mobilenet")
    kept = find_kept_out_nodes(onnx.load(str(fp32_path)))
    out = tmp_path_factory.mktemp("ptq") / "passd_int8.onnx"
    quantize_onnx(fp32_path, out, synthetic_inputs(input_size, 8, CALIBRATION_SEED),
                  flatten(kept))
    return fp32_path, out, kept, input_size


def test_qdq_nodes_present_and_kept_out_nodes_stay_float(passd_int8):
    _, int8_path, kept, _ = passd_int8
    model = onnx.load(str(int8_path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    quantized = quantized_tensor_names(model)
    outputs_of = {n.name: set(n.output) for n in model.graph.node}
    assert any("/backbone/" in name for name in quantized)
    # Nothing the sampling math, Gathers and tap sums of the P&A head compute is INT8.
    sampling = set(kept["sampling"])
    assert {n for n in sampling if "Gather" in n}
    assert not quantized & set().union(*(outputs_of[n] for n in sampling))
    # The 1x1 projection of the attend stage (the conv it replaces) is quantized.
    assert any(name.endswith("/MatMul_output_0") and "/attend" in name for name in quantized)
    graph_outputs = {o.name for o in model.graph.output}
    assert not quantized & graph_outputs


def test_int8_outputs_close_to_fp32_on_unseen_images(passd_int8):
    fp32_path, int8_path, _, input_size = passd_int8
    fp32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    for images in synthetic_inputs(input_size, 2, EVAL_SEED):
        names = [o.name for o in fp32.get_outputs()]
        for name, a, b in zip(names, fp32.run(None, {"images": images}),
                              int8.run(None, {"images": images}), strict=True):
            assert cosine(a, b) > 0.99, name


def test_rejects_unknown_excluded_node_and_empty_calibration(exported, tmp_path):
    _, input_size, fp32_path = exported("passd_mobilenet")
    images = synthetic_inputs(input_size, 1, CALIBRATION_SEED)
    with pytest.raises(ValueError, match="not in the graph"):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", images, ["/no/such/node"])
    with pytest.raises(ValueError, match="at least one image"):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", [], [])


def test_quantizer_advice_is_silenced_but_other_warnings_pass(exported, tmp_path, caplog):
    _, input_size, fp32_path = exported("passd_mobilenet")
    images = synthetic_inputs(input_size, 1, CALIBRATION_SEED)
    with caplog.at_level(logging.WARNING):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", images, [])
        logging.getLogger().warning("an unrelated warning")
    messages = [record.getMessage() for record in caplog.records]
    assert not any("pre-processing" in m for m in messages), messages
    assert "an unrelated warning" in messages
