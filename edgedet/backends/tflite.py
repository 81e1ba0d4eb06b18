"""TFLite / LiteRT backend (``pip install ai-edge-litert``): runs ``*.tflite`` on the CPU.

The interpreter comes from ``ai_edge_litert.interpreter`` (LiteRT), else from
``tflite_runtime.interpreter`` (the older package some boards ship; tested with
ai-edge-litert only). Its CPU kernels run through the XNNPACK delegate, which both apply by
default, on ``threads`` threads (None: the cores this process may use, like the other
backends; the interpreter's own default is one). A file with an int8 MEAN or SUM over more
than 8 192 elements, which XNNPACK can compute wrongly (``edgedet.backends.xnnpack_int8``;
the tflite conversion target keeps those in float), runs on LiteRT's own kernels instead,
with a warning that says so (right, but slower).

What a ``.tflite`` file must be for this backend (what the ``tflite`` conversion target
writes):

* **Names come from the file's signature.** The model has one signature (litert-torch calls
  it ``serving_default``). Its one input key is the image input, and its output keys are the
  manifest's output names (``cls_logits``, ``box_deltas``, for PASSD also
  ``objectness_logits`` and ``propose_deltas``): ``run`` returns ``{output key: array}``.
  The tensor names in the file are not used: converters mangle them
  (``serving_default_cls_logits_output:0``, ``StatefulPartitionedCall:0``). With litert-torch
  the keys come out right when the converted module returns a dict and takes its input by
  keyword: ``litert_torch.convert(module, sample_kwargs={"images": sample})`` where
  ``module(images)`` returns ``{name: tensor for name in export_output_names}``; a tuple
  result would give the keys ``output_0``, ``output_1``, ... and the ``Detector`` would then
  refuse the file, naming the outputs it has. ``output_names`` lists the keys in the order of
  the model's outputs (the dict's order), not the signature's alphabetical order.
* A file without a signature is read by its input and output tensor names instead.
* **Layout.** The SDK feeds ``(N, 3, H, W)`` float32. An input of shape ``(N, 3, H, W)`` is
  fed as it is; an input of shape ``(N, H, W, 3)`` (channel dim 1 not 3, last dim 3) gets the
  images transposed to NHWC here, on the host. ``input_shape`` is always reported as
  ``(N, 3, H, W)``. Outputs are returned as the model gives them (``(N, A, k)``).
* **Types.** Float32 inputs and outputs, or int8 / uint8 ones with a per-tensor scale and zero
  point, which is what INT8 conversion gives (litert-torch's PT2E path and ai-edge-quantizer's
  static recipe both make the image input and every output int8): inputs are quantized here
  (``round(x / scale) + zero_point``, clipped), outputs dequantized to float32
  (``(q - zero_point) * scale``). Float16 ones are cast.
* **Batch.** A fixed batch (usually 1; ``Detector.run_model`` runs larger batches in chunks
  of it) or a dynamic one (``-1`` in the input's shape signature; the input is resized per
  call).

An interpreter is not thread-safe: the backend table's ``session_per_thread=True`` gives each
thread its own ``TFLiteBackend``.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgedet import cpu_features
from edgedet.backends import BACKENDS, BackendError, BackendUnavailableError, xnnpack_int8


def interpreter_class() -> tuple[type, str]:
    """``(Interpreter class, its module)`` from the first runtime of the backend table's entry
    that is installed: ``module`` (LiteRT), then ``alternative_modules`` (``tflite_runtime``).

    Raises:
        BackendUnavailableError: none is installed.
    """
    spec = BACKENDS["tflite"]
    for package in (spec.module, *spec.alternative_modules):
        module_name = f"{package}.interpreter"
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return module.Interpreter, module_name
    raise BackendUnavailableError(
        f"the tflite backend needs LiteRT: pip install {spec.pip_package} (or, on a board "
        "that ships it, tflite-runtime)")


Interpreter, RUNTIME_MODULE = interpreter_class()


def long_int8_reductions(interpreter: Any) -> list[str]:
    """The int8 / uint8 MEAN and SUM ops of ``interpreter``'s model that reduce more than
    ``xnnpack_int8.INT8_REDUCTION_LIMIT`` elements (or an unknown number), as ``"MEAN over
    10236"`` strings in graph order; empty where the runtime cannot list its ops."""
    if not hasattr(interpreter, "_get_ops_details"):  # private; LiteRT and tflite-runtime have it
        return []
    ops = interpreter._get_ops_details()  # also lists DELEGATE nodes, which are not reductions
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    # Axes come from constant tensors only: nothing computes them and they are not inputs.
    computed = {int(i) for op in ops for i in op["outputs"]}
    computed |= {int(d["index"]) for d in interpreter.get_input_details()}
    found = []
    for op in ops:
        inputs = [int(i) for i in op["inputs"]]
        if op["op_name"] not in xnnpack_int8.REDUCTION_OPS or len(inputs) < 2:
            continue
        data = tensors.get(inputs[0])
        if data is None or np.dtype(data["dtype"]) not in (np.dtype(np.int8), np.dtype(np.uint8)):
            continue
        dims = data.get("shape_signature")
        if dims is None or len(dims) == 0:
            dims = data["shape"]
        axes = None if inputs[1] in computed else interpreter.get_tensor(inputs[1])
        size = xnnpack_int8.reduction_size([int(d) for d in dims], axes)
        if xnnpack_int8.is_long(size):
            found.append(f"{op['op_name']} over {size if size is not None else 'unknown'}")
    return found


def _layout(shape: tuple[int, ...], path: Path) -> str:
    """``"nchw"`` or ``"nhwc"`` for a model input of ``shape`` (-1 for a dynamic dim)."""
    if len(shape) == 4 and shape[1] == 3:
        return "nchw"
    if len(shape) == 4 and shape[3] == 3:
        return "nhwc"
    raise BackendError(f"{path}: input of shape {list(shape)} is neither (N, 3, H, W) nor "
                       "(N, H, W, 3)")


def _quantization(details: dict[str, Any]) -> tuple[float, int]:
    """Per-tensor ``(scale, zero_point)`` of an int8 / uint8 / int16 tensor."""
    params = details.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", ()), dtype=np.float64).ravel()
    zero_points = np.asarray(params.get("zero_points", ()), dtype=np.int64).ravel()
    if scales.size == 1 and zero_points.size == 1 and scales[0] > 0:
        return float(scales[0]), int(zero_points[0])
    scale, zero_point = details.get("quantization", (0.0, 0))
    if scale > 0:
        return float(scale), int(zero_point)
    raise BackendError(f"tensor {details.get('name')!r} is {np.dtype(details['dtype']).name} "
                       "without a per-tensor scale; the tflite backend feeds and reads float "
                       "or per-tensor quantized tensors")


# Integer tensor types carrying a per-tensor scale and zero point (int16: LiteRT's 16-bit
# activation mode, int16 activations with int8 weights).
_QUANTIZED = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))


def _to_model_type(values: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Float32 ``values`` as the input tensor's type (quantized for int8 / uint8 / int16)."""
    dtype = np.dtype(details["dtype"])
    if dtype == np.float32:
        return values
    if dtype in _QUANTIZED:
        scale, zero_point = _quantization(details)
        info = np.iinfo(dtype)
        quantized = np.round(values / scale) + zero_point
        return np.clip(quantized, info.min, info.max).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    raise BackendError(f"input tensor {details.get('name')!r} is {dtype.name}; the tflite "
                       "backend feeds float32, float16, int8, uint8 or int16 inputs")


def _to_float(values: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """An output as float32 (dequantized for int8 / uint8 / int16)."""
    dtype = np.dtype(details["dtype"])
    if dtype in _QUANTIZED:
        scale, zero_point = _quantization(details)
        return ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale))
    if np.issubdtype(dtype, np.floating):
        return values.astype(np.float32, copy=False)
    return values


class TFLiteBackend:
    """One TFLite interpreter (XNNPACK, ``threads`` threads) on the CPU.

    Not thread-safe: the backend table gives each thread its own instance.

    Attributes:
        threads: the interpreter's threads.
        layout: ``"nchw"`` or ``"nhwc"``, the model's input layout (NHWC inputs are transposed
            here).
        runtime: the module the interpreter came from (``ai_edge_litert.interpreter`` or
            ``tflite_runtime.interpreter``).
        kernels: ``"xnnpack"`` (the default delegate) or ``"builtin"`` (LiteRT's own kernels,
            for a file with long int8 reductions).

    Raises:
        BackendError: ``device`` is not the CPU, or the file cannot be loaded (naming it), or
            its input is not one image tensor.
    """

    name = "tflite"

    def __init__(self, model_path: Path, threads: int | None = None,
                 device: str | None = None, contents: Mapping[str, bytes] | None = None
                 ) -> None:
        self.model_path = Path(model_path)
        # The interpreter reads the model from this memory for as long as it runs.
        self._model_content = (contents or {}).get(self.model_path.name)
        if device is not None and device.strip().lower() != "cpu":
            raise BackendError(f"the tflite backend runs on the CPU only (device 'cpu'), not "
                               f"{device!r}")
        self.threads = int(threads) if threads is not None else cpu_features.usable_cores()
        if self.threads < 1:
            raise BackendError(f"threads must be None or >= 1, got {threads!r}")
        self.runtime = RUNTIME_MODULE
        self.kernels = "xnnpack"
        try:
            self._interpreter = self._open(builtin_kernels=False)
            long_reductions = long_int8_reductions(self._interpreter)
            if long_reductions:
                self._interpreter = self._fall_back_to_builtin_kernels(long_reductions)
            signatures = self._interpreter.get_signature_list()
            self._runner = None
            if signatures:
                if len(signatures) != 1:
                    raise BackendError(f"{self.model_path} has {len(signatures)} signatures "
                                       f"({', '.join(signatures)}); the tflite backend runs "
                                       "a model with one")
                self._runner = self._interpreter.get_signature_runner(next(iter(signatures)))
                inputs = self._runner.get_input_details()
                outputs = self._runner.get_output_details()
                # The model's own output order (the signature's keys come sorted).
                order = {d["index"]: i for i, d
                         in enumerate(self._interpreter.get_output_details())}
                outputs = dict(sorted(outputs.items(),
                                      key=lambda item: order.get(item[1]["index"], len(order))))
            else:
                inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
                outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        except BackendError:
            raise
        except Exception as exc:  # the runtimes raise ValueError / RuntimeError for bad files
            raise BackendError(f"tflite cannot load {self.model_path}: {exc}") from exc
        if len(inputs) != 1:
            raise BackendError(f"{self.model_path} has {len(inputs)} inputs "
                               f"({', '.join(inputs)}); detectors take one")
        (self.input_name, self._input), = inputs.items()
        self._outputs = outputs
        self.output_names: tuple[str, ...] = tuple(outputs)
        signature = self._input.get("shape_signature")
        if signature is None or len(signature) == 0:
            signature = self._input["shape"]
        model_shape = tuple(int(d) for d in signature)
        self.layout = _layout(model_shape, self.model_path)
        nchw = model_shape if self.layout == "nchw" else (
            model_shape[0], model_shape[3], model_shape[1], model_shape[2])
        self.input_shape: tuple[int | None, ...] = tuple(d if d >= 0 else None for d in nchw)

    def _open(self, builtin_kernels: bool) -> Any:
        """The file's interpreter, tensors allocated (so that ops this runtime lacks surface
        here rather than at the first run); on LiteRT's own kernels if ``builtin_kernels``
        (else its default, XNNPACK)."""
        extra = {}
        if builtin_kernels:
            resolver = sys.modules[Interpreter.__module__].OpResolverType
            extra["experimental_op_resolver_type"] = \
                resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        source = ({"model_content": self._model_content} if self._model_content is not None
                  else {"model_path": str(self.model_path)})
        interpreter = Interpreter(**source, num_threads=self.threads, **extra)
        interpreter.allocate_tensors()
        return interpreter

    def _fall_back_to_builtin_kernels(self, long_reductions: list[str]) -> Any:
        """An interpreter that computes ``long_reductions`` right (module docstring)."""
        ops = ", ".join(long_reductions)
        try:
            interpreter = self._open(builtin_kernels=True)
        except (AttributeError, TypeError):  # a runtime without the resolver choice
            warnings.warn(f"{self.model_path}: int8 {ops}: XNNPACK, LiteRT's default CPU "
                          f"kernels, can compute int8 reductions over more than "
                          f"{xnnpack_int8.INT8_REDUCTION_LIMIT} elements wrongly, and "
                          f"{self.runtime} cannot run without it; re-convert the file with "
                          "'quantize/run.py --target tflite', which keeps them in float",
                          stacklevel=4)
            return self._interpreter
        warnings.warn(f"{self.model_path}: int8 {ops}: XNNPACK, LiteRT's default CPU kernels, "
                      f"can compute int8 reductions over more than "
                      f"{xnnpack_int8.INT8_REDUCTION_LIMIT} elements wrongly, so this file runs "
                      "on LiteRT's own kernels (right, but about 3x slower on HAR-Net); "
                      "re-convert it with 'quantize/run.py --target tflite', which keeps them in "
                      "float", stacklevel=4)
        self.kernels = "builtin"
        return interpreter

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` → ``{output name: float32 array}`` (new arrays)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or any(
            want is not None and got != want
            for got, want in zip(images.shape, self.input_shape, strict=True)
        ):
            raise BackendError(f"{self.model_path} takes input of shape "
                               f"{[d if d is not None else 'N' for d in self.input_shape]}, "
                               f"got {list(images.shape)}")
        if self.layout == "nhwc":
            images = images.transpose(0, 2, 3, 1)
        feed = np.ascontiguousarray(_to_model_type(images, self._input))
        if self._runner is not None:
            raw = self._runner(**{self.input_name: feed})
        else:
            raw = self._invoke(feed)
        return {name: _to_float(raw[name], self._outputs[name]) for name in self.output_names}

    def _invoke(self, feed: np.ndarray) -> dict[str, np.ndarray]:
        """Run a model without a signature (resizing a dynamic input to ``feed``'s shape)."""
        index = self._input["index"]
        interpreter = self._interpreter
        current = tuple(int(d) for d in interpreter.get_input_details()[0]["shape"])
        if current != feed.shape:
            interpreter.resize_tensor_input(index, list(feed.shape), strict=True)
            interpreter.allocate_tensors()
        interpreter.set_tensor(index, feed)
        interpreter.invoke()
        return {name: interpreter.get_tensor(d["index"]) for name, d in self._outputs.items()}
