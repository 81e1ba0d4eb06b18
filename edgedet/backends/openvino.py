"""OpenVINO backend (``pip install openvino``): runs OpenVINO IR (``*.xml``) or ONNX on the CPU."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgedet.vendor_telemetry import quiet_vendor_telemetry

quiet_vendor_telemetry()  # before the import, which reports itself otherwise

import openvino as ov  # noqa: E402
from openvino.preprocess import ColorFormat, PrePostProcessor  # noqa: E402

from edgedet.backends import BackendError, FrameRunner  # noqa: E402
from edgedet.preprocess import PreprocessConfig  # noqa: E402

# Where an IR records the ``INFERENCE_PRECISION_HINT`` its accuracy check ran with (model
# rt_info, OpenVINO's "runtime_options"); written by ``quantize.openvino_precision``.
RUNTIME_PRECISION_OPTION = ("runtime_options", "INFERENCE_PRECISION_HINT")


def recorded_precision(model: ov.Model) -> str | None:
    """The ``INFERENCE_PRECISION_HINT`` recorded in ``model``'s rt_info, or None."""
    if not model.has_rt_info(list(RUNTIME_PRECISION_OPTION)):
        return None
    return str(model.get_rt_info(list(RUNTIME_PRECISION_OPTION)).astype(str))


class _Compiled:
    """A compiled model with one ``InferRequest`` per calling thread.

    An ``InferRequest`` must not be used by two threads at once, while the compiled model may
    create requests concurrently; a request per thread (kept in a ``threading.local``) lets
    threads run in parallel without a lock around inference.
    """

    def __init__(self, compiled: ov.CompiledModel) -> None:
        self.model = compiled
        self._ports = list(compiled.outputs)
        self.output_names: tuple[str, ...] = tuple(p.get_any_name() for p in self._ports)
        self._local = threading.local()
        self._create_lock = threading.Lock()

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            with self._create_lock:
                request = self.model.create_infer_request()
            self._local.request = request
        return request

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        # share_outputs=False: results are copied out of the request's buffers, which the
        # next call on this thread would overwrite.
        results = self._request().infer({0: inputs}, share_outputs=False)
        return {name: np.asarray(results[port])
                for name, port in zip(self.output_names, self._ports, strict=True)}


class OpenVinoBackend:
    """An OpenVINO model, compiled for the input it is given: normalised float images
    (``run``, compiled at its first call) or resized uint8 frames (``frame_runner``, which
    ``Detector`` compiles at load time). Each compile costs about as long as reading the
    model, so a detector that only runs frames does not pay for the float one."""

    name = "openvino"

    def __init__(self, model_path: Path, threads: int | None = None,
                 device: str | None = None, contents: Mapping[str, bytes] | None = None
                 ) -> None:
        self.model_path = Path(model_path)
        # OpenVINO names devices in capitals ("CPU", "GPU.1", "AUTO:GPU,CPU"); "cpu" is the
        # same request.
        device = (device or "CPU").strip().upper()
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        self._core = ov.Core()
        # (read_model copies the weights: the bytes are not needed after it)
        self._model = model = self._read_model(contents or {})
        # OpenVINO's CPU plugin runs float ops in bf16 where the CPU supports it. Keep them f32
        # unless the IR asks otherwise: in fp32 artifacts bf16 moves boxes and scores away
        # from the exported reference, and in INT8 artifacts the ops kept out of INT8 (P&A
        # sampling coordinates and bilinear weights, attention, masks) are exactly the ones
        # too sensitive for 8 bits — bf16's 8-bit mantissa puts a sampling point at x ~ 40 on
        # a 0.25-pixel grid (the zoo PASSD's NNCF INT8 IR: ΔAP -14.4 with its float ops in
        # bf16). An INT8 IR built with ``--float-precision bf16`` keeps its coordinates f32
        # op by op and records the hint it was checked with (``quantize.openvino_precision``).
        config["INFERENCE_PRECISION_HINT"] = recorded_precision(model) or "f32"
        self.device = device
        if threads is not None and device == "CPU":  # a CPU-plugin setting only
            config["INFERENCE_NUM_THREADS"] = int(threads)
        elif threads is not None and "CPU" in self._core.available_devices:
            # AUTO / MULTI / HETERO refuse the key but run their CPU part with the CPU
            # plugin's own setting, which this backend's Core holds alone (measured: AUTO:CPU
            # with 1 thread used one core's time, without it two).
            self._core.set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})
        known = [*self._core.available_devices, "AUTO", "MULTI", "HETERO", "BATCH"]
        if not device or device.split(":")[0].split(".")[0] not in known:
            raise BackendError(f"openvino has no device {device!r} here; available: "
                               f"{', '.join(self._core.available_devices)} (or AUTO)")
        self._config = config
        model_input = model.inputs[0]
        self.input_name: str = model_input.get_any_name()
        self.input_shape: tuple[int | None, ...] = tuple(
            d.get_length() if d.is_static else None for d in model_input.get_partial_shape()
        )
        self.output_names: tuple[str, ...] = tuple(o.get_any_name() for o in model.outputs)
        # Element types by output (as numpy names), for checks at load time (optional:
        # edgedet.attend_tail reads it where present).
        self.output_dtypes: dict[str, str] = {
            o.get_any_name(): o.get_element_type().to_dtype().name for o in model.outputs}
        self._float: _Compiled | None = None
        self._float_lock = threading.Lock()

    def _read_model(self, contents: Mapping[str, bytes]) -> ov.Model:
        """The model from the checked ``contents`` (an IR's weights beside it), else from
        the file."""
        model = contents.get(self.model_path.name)
        weights = contents.get(self.model_path.with_suffix(".bin").name)
        try:
            if model is None:
                return self._core.read_model(str(self.model_path))
            if self.model_path.suffix.lower() == ".xml":  # an IR: its weights beside it
                if weights is None:
                    raise BackendError(f"openvino cannot load {self.model_path}: its weights "
                                       f"{self.model_path.with_suffix('.bin').name} are not "
                                       "among the artifact's files")
                return self._core.read_model(model, ov.Tensor(np.frombuffer(weights, np.uint8)))
            return self._core.read_model(model)
        except BackendError:
            raise
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"openvino cannot load {self.model_path}: {exc}") from exc

    def _compile(self, model: ov.Model) -> _Compiled:
        try:
            return _Compiled(self._core.compile_model(model, self.device, self._config))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"openvino cannot load {self.model_path}: {exc}") from exc

    def _float_model(self) -> _Compiled:
        """The model compiled for normalised float input, on first use."""
        with self._float_lock:
            if self._float is None:
                self._float = self._compile(self._model)
            return self._float

    @property
    def inference_precision(self) -> str:
        """The precision the CPU plugin actually computes in (e.g. ``f32``, ``bf16``)."""
        compiled = self._float_model().model
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` → ``{output name: array}`` (copies, not views)."""
        return self._float_model()(np.ascontiguousarray(images, dtype=np.float32))

    def frame_runner(self, config: PreprocessConfig) -> FrameRunner:
        """``run`` for frames as ``resize_to_input`` makes them: ``(N, H, W, 3)`` BGR uint8.

        A second compiled model whose PrePostProcessor does ``normalize_to_nchw``'s work
        inside OpenVINO: u8 to f32, the channel order, ``(x - mean) / std`` and the NHWC to
        NCHW transpose. The CPU plugin folds it into the model's first layer, so the model
        takes about as long as with a float input (passd_mobilenet_int8_openvino: 12.67
        against 12.69 ms, the same outputs to the bit) and ``detect()`` drops the numpy step:
        0.0-0.3 ms per frame over the zoo, measured interleaved. ``run`` compiles its own.
        """
        ppp = PrePostProcessor(self._model.clone())
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(
            ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
        if config.color_order == "rgb":
            steps.convert_color(ColorFormat.RGB)
        steps.mean(list(config.mean)).scale(list(config.std))
        compiled = self._compile(ppp.build())

        def run_frames(frames_bgr: np.ndarray) -> dict[str, np.ndarray]:
            return compiled(np.ascontiguousarray(frames_bgr, dtype=np.uint8))

        return run_frames
