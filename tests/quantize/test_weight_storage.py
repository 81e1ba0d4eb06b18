"""``quantize.weight_storage``: float weights stored as float16 behind casts, computed in
float32 — which tensors convert, that consumers still read the original names, and that ONNX
Runtime's outputs move only by float16's rounding of the weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantize.weight_storage import (
    FLOAT16_SUFFIX,
    MIN_ELEMENTS,
    store_file_float16,
    store_weights_float16,
)

CHANNELS = 16


def _conv_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """images (1, 16, 8, 8) -> Conv(weight (16, 16, 3, 3), bias) -> out (1, 16, 8, 8)."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w", "b"], ["out"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, CHANNELS, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, CHANNELS, 8, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = rng.normal(0, 0.1, (CHANNELS, CHANNELS, 3, 3)).astype(np.float32)
    return weight, rng.normal(0, 0.1, CHANNELS).astype(np.float32)


def _run(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def _initializer_types(model: onnx.ModelProto) -> dict[str, int]:
    return {init.name: init.data_type for init in model.graph.initializer}


def test_large_weights_become_float16_behind_a_cast_small_ones_stay():
    weight, bias = _weights()
    assert weight.size >= MIN_ELEMENTS > bias.size
    model = _conv_model(weight, bias)
    stored, converted = store_weights_float16(model)
    assert converted == 1
    assert _initializer_types(stored) == {"w" + FLOAT16_SUFFIX: TensorProto.FLOAT16,
                                          "b": TensorProto.FLOAT}
    cast = stored.graph.node[0]
    assert (cast.op_type, list(cast.input), list(cast.output)) == (
        "Cast", ["w" + FLOAT16_SUFFIX], ["w"])
    assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT
    # The conv still reads "w"; the original model is untouched.
    assert list(stored.graph.node[1].input) == ["images", "w", "b"]
    assert _initializer_types(model) == {"w": TensorProto.FLOAT, "b": TensorProto.FLOAT}
    assert stored.ByteSize() < 0.6 * model.ByteSize()


def test_outputs_equal_the_float32_model_with_float16_rounded_weights():
    weight, bias = _weights(1)
    images = np.random.default_rng(2).normal(size=(1, CHANNELS, 8, 8)).astype(np.float32)
    stored, _ = store_weights_float16(_conv_model(weight, bias))
    rounded = _conv_model(weight.astype(np.float16).astype(np.float32), bias)
    np.testing.assert_allclose(_run(stored, images), _run(rounded, images), rtol=1e-5,
                               atol=1e-5)
    # ... which is within float16's rounding of the original.
    np.testing.assert_allclose(_run(stored, images), _run(_conv_model(weight, bias), images),
                               atol=5e-3)


@pytest.mark.parametrize("bad", ["huge", "tiny", "nan"])
def test_tensors_float16_cannot_hold_stay_float32(bad):
    weight, bias = _weights(3)
    if bad == "huge":  # beyond float16's range (65504)
        weight[0, 0, 0, 0] = 1e6
    elif bad == "tiny":  # most values would flush to zero
        weight *= 1e-9
    else:
        weight[1, 2, 0, 0] = np.nan
    stored, converted = store_weights_float16(_conv_model(weight, bias))
    assert converted == 0
    assert _initializer_types(stored) == {"w": TensorProto.FLOAT, "b": TensorProto.FLOAT}
    assert not any(node.op_type == "Cast" for node in stored.graph.node)


def test_file_round_trip_is_atomic_and_loads(tmp_path):
    weight, bias = _weights(4)
    source = tmp_path / "fp32.onnx"
    onnx.save(_conv_model(weight, bias), str(source))
    out = store_file_float16(source, tmp_path / "half.onnx")
    onnx.checker.check_model(onnx.load(str(out)))
    assert out.stat().st_size < 0.6 * source.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "half.onnx"]
