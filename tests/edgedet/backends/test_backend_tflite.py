"""The tflite backend: its table entry anywhere; running models where LiteRT is installed.

The models are built here, at test time and without torch, with the TFLite flatbuffer schema
that ``ai-edge-litert`` ships (``ai_edge_litert.schema_py_generated`` + ``flatbuffers``):
two convolutions whose outputs are named like a detector head's, in the ways the backend
must read them (signature keys over mangled tensor names, NHWC or NCHW input, int8 I/O,
dynamic batch, no signature).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from edgedet import backends
from edgedet.backends import (
    BACKENDS,
    BackendError,
    BackendUnavailableError,
    create_backend,
    model_file_for,
)

HEIGHT, WIDTH = 9, 13  # two VALID 3x3 stride-2 taps → 4 x 6 cells
OUTPUTS = ("cls_logits", "box_deltas")  # the model's order; the signature sorts its keys
SHAPES = {"cls_logits": (48, 3), "box_deltas": (24, 4)}
IN_SCALE, IN_ZERO = 0.03, -3  # int8 input: [-3.75, 3.9]
OUT_QUANT = {"cls_logits": (0.05, -100), "box_deltas": (0.04, 5)}


# --- models -------------------------------------------------------------------------------

def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w1": rng.normal(0, 0.4, (6, 3, 3, 3)).astype(np.float32),  # OHWI
        "b1": rng.normal(0, 0.1, 6).astype(np.float32),
        "w2": rng.normal(0, 0.5, (4, 1, 1, 6)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 4).astype(np.float32),
    }


def reference(images: np.ndarray) -> dict[str, np.ndarray]:
    """What every model here computes, from ``images (N, 3, H, W)``, in numpy."""
    w = _weights()
    x = images.transpose(0, 2, 3, 1).astype(np.float64)
    patches = np.stack([np.stack([x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :] for j in range(6)],
                                 axis=1) for i in range(4)], axis=1)  # (N, 4, 6, 3, 3, 3)
    conv1 = np.maximum(np.einsum("nyxhwc,ohwc->nyxo", patches, w["w1"]) + w["b1"], 0)
    conv2 = np.einsum("nyxc,oc->nyxo", conv1, w["w2"][:, 0, 0, :]) + w["b2"]
    n = len(images)
    return {"cls_logits": conv1.reshape(n, 48, 3).astype(np.float32),
            "box_deltas": conv2.reshape(n, 24, 4).astype(np.float32)}


def build_tflite(path: Path, *, layout: str = "nhwc", signature: bool = True,
                 int8_io: bool = False, dynamic_batch: bool = False) -> Path:
    """Write a tiny detector-like ``.tflite`` computing ``reference``.

    Output tensors are named ``StatefulPartitionedCall:0`` / ``:1`` (as converters mangle
    them) and the signature maps ``cls_logits`` / ``box_deltas`` to them; without a signature
    the tensors themselves carry those names.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    weights = _weights()
    buffers = [fb.BufferT()]  # buffer 0: the empty one, by convention
    tensors: list = []

    def tensor(name: str, shape: tuple[int, ...], kind: int = fb.TensorType.FLOAT32,
               data: np.ndarray | None = None, quant: tuple[float, int] | None = None,
               batch: bool = True) -> int:
        buffer = 0
        if data is not None:
            buffers.append(fb.BufferT(data=np.frombuffer(data.tobytes(), np.uint8).copy()))
            buffer = len(buffers) - 1
        t = fb.TensorT()
        t.name, t.type, t.buffer = name, kind, buffer
        t.shape = np.array(shape, np.int32)
        if dynamic_batch and batch and data is None:
            t.shapeSignature = np.array((-1, *shape[1:]), np.int32)
        if quant is not None:
            q = fb.QuantizationParametersT()
            q.scale, q.zeroPoint = [quant[0]], [quant[1]]
            t.quantization = q
        tensors.append(t)
        return len(tensors) - 1

    codes: list[int] = []
    operators = []

    def op(code: int, inputs: list[int], outputs: list[int], options_type: int = 0,
           options: object = None) -> None:
        if code not in codes:
            codes.append(code)
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes.index(code), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        operators.append(o)

    def const_i32(name: str, values: tuple[int, ...]) -> int:
        return tensor(name, (len(values),), fb.TensorType.INT32,
                      np.array(values, np.int32), batch=False)

    nhwc = (1, HEIGHT, WIDTH, 3)
    in_shape = nhwc if layout == "nhwc" else (1, 3, HEIGHT, WIDTH)
    in_kind = fb.TensorType.INT8 if int8_io else fb.TensorType.FLOAT32
    graph_input = tensor("serving_default_images:0", in_shape, in_kind,
                         quant=(IN_SCALE, IN_ZERO) if int8_io else None)
    x = graph_input
    if int8_io:
        x_float = tensor("dequantized", in_shape)
        op(fb.BuiltinOperator.DEQUANTIZE, [x], [x_float])
        x = x_float
    if layout == "nchw":
        x_nhwc = tensor("to_nhwc", nhwc)
        op(fb.BuiltinOperator.TRANSPOSE, [x, const_i32("perm", (0, 2, 3, 1))], [x_nhwc],
           fb.BuiltinOptions.TransposeOptions, fb.TransposeOptionsT())
        x = x_nhwc

    def conv(name: str, inputs: int, w: np.ndarray, b: np.ndarray, stride: int,
             relu: bool) -> int:
        out = tensor(name, (1, 4, 6, w.shape[0]))  # 3x3 / 2 on 9 x 13, then 1x1 / 1
        options = fb.Conv2DOptionsT()
        options.padding, options.strideH, options.strideW = fb.Padding.VALID, stride, stride
        options.fusedActivationFunction = (fb.ActivationFunctionType.RELU if relu
                                           else fb.ActivationFunctionType.NONE)
        op(fb.BuiltinOperator.CONV_2D,
           [inputs, tensor(f"{name}/w", w.shape, data=w, batch=False),
            tensor(f"{name}/b", b.shape, data=b, batch=False)], [out],
           fb.BuiltinOptions.Conv2DOptions, options)
        return out

    conv1 = conv("conv1", x, weights["w1"], weights["b1"], 2, relu=True)
    conv2 = conv("conv2", conv1, weights["w2"], weights["b2"], 1, relu=False)
    graph_outputs = []
    for i, (name, source) in enumerate(zip(OUTPUTS, (conv1, conv2), strict=True)):
        tensor_name = f"StatefulPartitionedCall:{i}" if signature else name
        shape = (1, *SHAPES[name])
        flat = tensor(f"{name}/flat" if int8_io else tensor_name, shape)
        options = fb.ReshapeOptionsT()
        options.newShape = [-1, *SHAPES[name]]
        op(fb.BuiltinOperator.RESHAPE, [source, const_i32(f"{name}/shape", (-1, *SHAPES[name]))],
           [flat], fb.BuiltinOptions.ReshapeOptions, options)
        if int8_io:
            quantized = tensor(tensor_name, shape, fb.TensorType.INT8, quant=OUT_QUANT[name])
            op(fb.BuiltinOperator.QUANTIZE, [flat], [quantized])
            flat = quantized
        graph_outputs.append(flat)

    subgraph = fb.SubGraphT()
    subgraph.tensors, subgraph.operators, subgraph.name = tensors, operators, "main"
    subgraph.inputs, subgraph.outputs = [graph_input], graph_outputs
    model = fb.ModelT()
    model.version, model.description, model.buffers = 3, "edgedet test model", buffers
    model.subgraphs = [subgraph]
    model.operatorCodes = []
    for code in codes:
        opcode = fb.OperatorCodeT()
        opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, code, 1
        model.operatorCodes.append(opcode)
    if signature:
        def tensor_map(name: str, index: int) -> object:
            entry = fb.TensorMapT()
            entry.name, entry.tensorIndex = name, index
            return entry

        sig = fb.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = "serving_default", 0
        sig.inputs = [tensor_map("images", graph_input)]
        sig.outputs = [tensor_map(n, t) for n, t in zip(OUTPUTS, graph_outputs, strict=True)]
        model.signatureDefs = [sig]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("ai_edge_litert", reason="the tflite backend needs ai-edge-litert "
                                                 "(pip install 'edgedet[tflite]')")
    root = tmp_path_factory.mktemp("tflite")
    return {
        "nhwc": build_tflite(root / "nhwc.tflite"),
        "nchw": build_tflite(root / "nchw.tflite", layout="nchw"),
        "int8_io": build_tflite(root / "int8_io.tflite", int8_io=True),
        "dynamic": build_tflite(root / "dynamic.tflite", dynamic_batch=True),
        "unsigned": build_tflite(root / "unsigned.tflite", signature=False),
    }


def _images(count: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (count, 3, HEIGHT, WIDTH)).astype(np.float32)


# --- the table entry (no runtime needed) ----------------------------------------------------

def test_the_table_entry() -> None:
    spec = BACKENDS["tflite"]
    assert (spec.module, spec.pip_package, spec.implementation, spec.suffixes) == (
        "ai_edge_litert", "ai-edge-litert", "edgedet.backends.tflite:TFLiteBackend",
        (".tflite",))
    assert spec.alternative_modules == ("tflite_runtime",)
    assert spec.session_per_thread is True and spec.fallback is None
    assert spec.device_help.startswith("cpu")
    assert model_file_for("tflite", ["report.json", "model.tflite"]) == "model.tflite"
    with pytest.raises(BackendError, match=r"reads \.tflite model files"):
        model_file_for("tflite", ["model.onnx"])


@pytest.mark.parametrize("installed", [set(), {"ai_edge_litert"}, {"tflite_runtime"}])
def test_either_runtime_makes_it_available(monkeypatch: pytest.MonkeyPatch,
                                           installed: set[str]) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        if name in ("ai_edge_litert", "tflite_runtime"):
            return object() if name in installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert backends.is_available("tflite") is bool(installed)
    assert ("tflite" in backends.available_backends()) is bool(installed)
    if not installed:
        with pytest.raises(BackendUnavailableError, match=r"pip install ai-edge-litert"):
            create_backend("tflite", Path("model.tflite"))


# --- running models (ai-edge-litert) --------------------------------------------------------

def test_outputs_are_named_by_the_signature_in_model_order(models: dict[str, Path]) -> None:
    from edgedet.backends.tflite import TFLiteBackend

    backend = TFLiteBackend(models["nhwc"], threads=1)
    assert backend.name == "tflite" and backend.model_path == models["nhwc"]
    assert backend.input_name == "images"
    assert backend.output_names == OUTPUTS  # not the tensors' StatefulPartitionedCall:N
    images = _images()
    outputs = backend.run(images)
    assert list(outputs) == list(OUTPUTS)
    for name, expected in reference(images).items():
        assert outputs[name].dtype == np.float32 and outputs[name].shape == (1, *SHAPES[name])
        np.testing.assert_allclose(outputs[name], expected, rtol=1e-5, atol=1e-5)


def test_nchw_images_are_transposed_for_an_nhwc_model(models: dict[str, Path]) -> None:
    from edgedet.backends.tflite import TFLiteBackend

    nhwc = TFLiteBackend(models["nhwc"], threads=1)
    nchw = TFLiteBackend(models["nchw"], threads=1)
    assert (nhwc.layout, nchw.layout) == ("nhwc", "nchw")
    # Both report the SDK's (N, 3, H, W), whatever the file's layout.
    assert nhwc.input_shape == nchw.input_shape == (1, 3, HEIGHT, WIDTH)
    images = _images(seed=1)
    expected = reference(images)
    for backend in (nhwc, nchw):
        outputs = backend.run(images)
        for name in OUTPUTS:
            np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-5, atol=1e-5)
    with pytest.raises(BackendError, match=r"takes input of shape \[1, 3, 9, 13\], got "
                                           r"\[1, 9, 13, 3\]"):
        nhwc.run(images.transpose(0, 2, 3, 1))


def test_int8_inputs_and_outputs_are_quantized_and_dequantized(
    models: dict[str, Path]
) -> None:
    from edgedet.backends.tflite import TFLiteBackend

    backend = TFLiteBackend(models["int8_io"], threads=1)
    assert backend.output_names == OUTPUTS
    images = np.clip(_images(seed=2), -3.5, 3.5)
    outputs = backend.run(images)
    # The model sees the input rounded to its int8 grid; outputs come back float32, one
    # output step from the float result at most.
    quantized = np.round(images / IN_SCALE) * IN_SCALE
    expected = reference(quantized.astype(np.float32))
    for name in OUTPUTS:
        scale, zero = OUT_QUANT[name]
        low, high = (-128 - zero) * scale, (127 - zero) * scale
        assert outputs[name].dtype == np.float32
        np.testing.assert_allclose(outputs[name], np.clip(expected[name], low, high),
                                   atol=scale * 0.51 + 1e-6)


def test_threads_reach_the_interpreter(models: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from edgedet.backends import tflite

    made: list[int | None] = []

    class Spy(tflite.Interpreter):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            made.append(kwargs.get("num_threads"))  # type: ignore[arg-type]
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tflite, "Interpreter", Spy)
    assert tflite.TFLiteBackend(models["nhwc"], threads=3).threads == 3
    default = tflite.TFLiteBackend(models["nhwc"])
    assert made == [3, default.threads] and default.threads >= 1
    images = _images(seed=3)
    np.testing.assert_allclose(default.run(images)["cls_logits"],
                               reference(images)["cls_logits"], rtol=1e-5, atol=1e-5)


def test_eight_threads_at_once_get_the_single_thread_results(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgedet.backends import tflite

    owners: list[int] = []

    class Counted(tflite.TFLiteBackend):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            owners.append(threading.get_ident())

    monkeypatch.setattr(tflite, "TFLiteBackend", Counted)
    backend = create_backend("tflite", models["nhwc"], threads=2)
    assert backend.output_names == OUTPUTS and backend.input_shape == (1, 3, HEIGHT, WIDTH)
    inputs = [_images(seed=10 + i) for i in range(8)]
    expected = [backend.run(images) for images in inputs]  # one thread, one after another
    results: dict[int, list[dict[str, np.ndarray]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            start.wait()
            results[i] = [backend.run(inputs[(i + k) % 8]) for k in range(5)]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, runs in results.items():
        for k, outputs in enumerate(runs):
            for name in OUTPUTS:
                np.testing.assert_array_equal(outputs[name], expected[(i + k) % 8][name])
    assert len(owners) == 9 and len(set(owners)) == 9  # one interpreter per thread


def test_device_is_cpu_only(models: dict[str, Path]) -> None:
    for device in (None, "cpu", "CPU"):
        assert create_backend("tflite", models["nhwc"], device=device).name == "tflite"
    with pytest.raises(BackendError, match=r"tflite backend runs on the CPU only.*'cuda'"):
        create_backend("tflite", models["nhwc"], device="cuda")


def test_a_corrupt_or_missing_file_names_the_file(models: dict[str, Path],
                                                  tmp_path: Path) -> None:
    from edgedet.backends.tflite import TFLiteBackend

    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x1c\x00\x00\x00TFL3 not really a model" * 4)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(models["nhwc"].read_bytes()[:300])
    for path in (garbage, truncated, tmp_path / "missing.tflite"):
        with pytest.raises(BackendError, match=rf"tflite cannot load .*{path.name}"):
            TFLiteBackend(path)
        with pytest.raises(BackendError, match=rf"tflite cannot load .*{path.name}"):
            create_backend("tflite", path)


def test_a_dynamic_batch_is_resized_a_fixed_one_is_refused(models: dict[str, Path]) -> None:
    from edgedet.backends.tflite import TFLiteBackend

    dynamic = TFLiteBackend(models["dynamic"], threads=1)
    assert dynamic.input_shape == (None, 3, HEIGHT, WIDTH)
    for count in (3, 1):
        images = _images(count, seed=count)
        outputs = dynamic.run(images)
        for name, expected in reference(images).items():
            np.testing.assert_allclose(outputs[name], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(BackendError, match=r"takes input of shape \[1, 3, 9, 13\], got "
                                           r"\[2, 3, 9, 13\]"):
        TFLiteBackend(models["nhwc"]).run(_images(2))


def test_a_model_without_signature_is_read_by_tensor_names(models: dict[str, Path]) -> None:
    from edgedet.backends.tflite import TFLiteBackend

    backend = TFLiteBackend(models["unsigned"], threads=1)
    assert backend.input_name == "serving_default_images:0"
    assert backend.output_names == OUTPUTS
    images = _images(seed=5)
    for name, expected in reference(images).items():
        np.testing.assert_allclose(backend.run(images)[name], expected, rtol=1e-5, atol=1e-5)


def test_tflite_runtime_is_the_fallback_interpreter(models: dict[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edgedet.backends import tflite

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    assert tflite.interpreter_class() == (Interpreter, "tflite_runtime.interpreter")
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install ai-edge-litert"):
        tflite.interpreter_class()


def test_int16_tensors_are_quantized_and_dequantized() -> None:
    # LiteRT's 16-bit activation mode: int16 tensors, symmetric, scale per tensor.
    from edgedet.backends.tflite import _to_float, _to_model_type

    details = {"name": "images", "dtype": np.int16, "quantization": (0.5, 0)}
    values = np.array([-1.0, 0.26, 1.74, 20000.0], dtype=np.float32)
    quantized = _to_model_type(values, details)
    assert quantized.dtype == np.int16
    assert quantized.tolist() == [-2, 1, 3, 32767]  # rounded to the grid, clipped to int16
    np.testing.assert_array_equal(_to_float(quantized, details),
                                  np.array([-1.0, 0.5, 1.5, 16383.5], dtype=np.float32))
    with pytest.raises(BackendError, match="int16"):
        _to_model_type(values, {"name": "x", "dtype": np.int32, "quantization": (1.0, 0)})


def test_checked_contents_are_what_runs_in_every_thread(models: dict[str, Path],
                                                         tmp_path: Path) -> None:
    # Detector hands the backend the artifact's bytes as checked; each thread's interpreter
    # is built from them, not from the file, which may have changed since.
    copy = tmp_path / "model.tflite"
    copy.write_bytes(models["nhwc"].read_bytes())
    backend = create_backend("tflite", copy, contents={copy.name: copy.read_bytes()})
    images = _images(seed=3)
    expected = backend.run(images)
    copy.write_bytes(b"not a model any more")
    results: list[dict[str, np.ndarray]] = []
    other = threading.Thread(target=lambda: results.append(backend.run(images)))
    other.start()
    other.join()
    assert len(results) == 1
    for name in expected:
        np.testing.assert_array_equal(results[0][name], expected[name])
