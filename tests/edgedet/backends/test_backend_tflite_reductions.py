"""The tflite backend runs a file with long int8 reductions on LiteRT's own kernels.

The files are one int8 MEAN or SUM, built here with the TFLite flatbuffer schema
(``ai_edge_litert.schema_py_generated``), as a file converted before the tflite target kept
such reductions in float would hold them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SCALE, ZERO = 1 / 64, -128  # int8 input and output: [0, 3.98]


def build_reduction(path: Path, *, height: int, width: int, op: str = "MEAN",
                    int8: bool = True, computed_axes: bool = False) -> Path:
    """``images (1, 3, H, W)`` -> ``cls_logits (1, 3)``: per channel the MEAN (or SUM) over
    H x W positions, in int8 (zero point -128) or float32. With ``computed_axes`` the axes
    come from an ADD of two constants instead of a constant, so their values are unknown
    before a run."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    buffers = [fb.BufferT()]
    tensors: list = []

    def tensor(name: str, shape: tuple[int, ...], kind: int, data: np.ndarray | None = None,
               quant: bool = False) -> int:
        buffer = 0
        if data is not None:
            buffers.append(fb.BufferT(data=np.frombuffer(data.tobytes(), np.uint8).copy()))
            buffer = len(buffers) - 1
        t = fb.TensorT()
        t.name, t.type, t.buffer, t.shape = name, kind, buffer, np.array(shape, np.int32)
        if quant:
            q = fb.QuantizationParametersT()
            q.scale, q.zeroPoint = [SCALE], [ZERO]
            t.quantization = q
        tensors.append(t)
        return len(tensors) - 1

    kind = fb.TensorType.INT8 if int8 else fb.TensorType.FLOAT32
    code = getattr(fb.BuiltinOperator, op)
    codes = [code]
    images = tensor("images", (1, 3, height, width), kind, quant=int8)
    out = tensor("cls_logits", (1, 3), kind, quant=int8)
    operators = []
    if computed_axes:
        codes.append(fb.BuiltinOperator.ADD)
        axes = tensor("axes", (2,), fb.TensorType.INT32)
        halves = [tensor(f"axes{i}", (2,), fb.TensorType.INT32, np.array([1, 1 + i], np.int32))
                  for i in range(2)]
        add = fb.OperatorT()
        add.opcodeIndex, add.inputs, add.outputs = 1, halves, [axes]
        add.builtinOptionsType, add.builtinOptions = fb.BuiltinOptions.AddOptions, fb.AddOptionsT()
        operators.append(add)
    else:
        axes = tensor("axes", (2,), fb.TensorType.INT32, np.array([2, 3], np.int32))
    reduce = fb.OperatorT()
    reduce.opcodeIndex, reduce.inputs, reduce.outputs = 0, [images, axes], [out]
    options = fb.ReducerOptionsT()
    options.keepDims = False
    reduce.builtinOptionsType, reduce.builtinOptions = fb.BuiltinOptions.ReducerOptions, options
    operators.append(reduce)
    subgraph = fb.SubGraphT()
    subgraph.tensors, subgraph.operators = tensors, operators
    subgraph.inputs, subgraph.outputs = [images], [out]
    model = fb.ModelT()
    model.version, model.buffers, model.subgraphs = 3, buffers, [subgraph]
    model.operatorCodes = []
    for c in codes:
        opcode = fb.OperatorCodeT()
        opcode.builtinCode = opcode.deprecatedBuiltinCode = c
        opcode.version = 2 if c != fb.BuiltinOperator.ADD else 1
        model.operatorCodes.append(opcode)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


@pytest.fixture(scope="module")
def tflite():
    """The backend module (where LiteRT is installed)."""
    pytest.importorskip("ai_edge_litert", reason="the tflite backend needs ai-edge-litert "
                                                 "(pip install 'edgedet[tflite]')")
    from edgedet.backends import tflite

    return tflite


def _images(height: int, width: int) -> np.ndarray:
    """Values on the int8 grid, mostly near the bottom of its range (most int8 values near
    -128: the sums that went wrong)."""
    steps = np.random.default_rng(0).integers(0, 12, (1, 3, height, width))
    return (steps * SCALE).astype(np.float32)


def test_a_long_int8_mean_runs_on_litert_s_own_kernels_and_is_right(tflite, tmp_path):
    # XNNPACK itself read 3.64 for each of these means (0.085-0.086) on an AVX2 CPU.
    path = build_reduction(tmp_path / "long.tflite", height=96, width=96)  # 9 216 each
    with pytest.warns(UserWarning, match=r"int8 MEAN over 9216: XNNPACK.*own kernels"):
        backend = tflite.TFLiteBackend(path, threads=1)
    assert backend.kernels == "builtin"
    images = _images(96, 96)
    got = backend.run(images)["cls_logits"]
    np.testing.assert_allclose(got, images.mean(axis=(2, 3)), atol=SCALE / 2 + 1e-6)


def test_short_float_and_computed_reductions(tflite, tmp_path, recwarn):
    short = build_reduction(tmp_path / "short.tflite", height=64, width=128)  # 8 192
    long_float = build_reduction(tmp_path / "float.tflite", height=96, width=96, int8=False)
    long_sum = build_reduction(tmp_path / "sum.tflite", height=90, width=100, op="SUM")
    computed = build_reduction(tmp_path / "computed.tflite", height=8, width=8,
                               computed_axes=True)

    def found(path: Path) -> list[str]:
        interpreter = tflite.Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        return tflite.long_int8_reductions(interpreter)

    assert found(short) == []
    assert found(long_float) == []
    assert found(long_sum) == ["SUM over 9000"]
    assert found(computed) == ["MEAN over unknown"]  # axes not known before a run: long
    backend = tflite.TFLiteBackend(short, threads=1)
    assert backend.kernels == "xnnpack"
    assert not [w for w in recwarn if "XNNPACK" in str(w.message)]
    images = _images(64, 128)
    np.testing.assert_allclose(backend.run(images)["cls_logits"], images.mean(axis=(2, 3)),
                               atol=SCALE / 2 + 1e-6)


def test_a_runtime_without_the_choice_of_kernels_keeps_xnnpack_and_says_so(
        tflite, tmp_path, monkeypatch):
    path = build_reduction(tmp_path / "long2.tflite", height=96, width=96)
    real = tflite.Interpreter

    def without_resolver(*args, **kwargs):
        if "experimental_op_resolver_type" in kwargs:
            raise TypeError("unexpected keyword argument 'experimental_op_resolver_type'")
        return real(*args, **kwargs)

    without_resolver.__module__ = real.__module__  # where the backend finds OpResolverType
    monkeypatch.setattr(tflite, "Interpreter", without_resolver)
    with pytest.warns(UserWarning, match="cannot run without it; re-convert"):
        backend = tflite.TFLiteBackend(path, threads=1)
    assert backend.kernels == "xnnpack"
