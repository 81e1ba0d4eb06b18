"""OpenVINO backend (``pip install openvino``): runs OpenVINO IR (``*.xml``) or ONNX on the CPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edgedet.vendor_telemetry import quiet_vendor_telemetry

quiet_vendor_telemetry()  # before the import, which reports itself otherwise

import openvino as ov  # noqa: E402

from edgedet.backends import BackendError  # noqa: E402

# Where an IR records the ``INFERENCE_PRECISION_HINT`` its accuracy check ran with (model
# rt_info, OpenVINO's "runtime_options"); written by ``quantize.openvino_precision``.
RUNTIME_PRECISION_OPTION = ("runtime_options", "INFERENCE_PRECISION_HINT")


def recorded_precision(model: ov.Model) -> str | None:
    """The ``INFERENCE_PRECISION_HINT`` recorded in ``model``'s rt_info, or None."""
    if not model.has_rt_info(list(RUNTIME_PRECISION_OPTION)):
        return None
    return str(model.get_rt_info(list(RUNTIME_PRECISION_OPTION)).astype(str))


class OpenVinoBackend:
    """One compiled model; one ``InferRequest`` per calling thread.

    An ``InferRequest`` must not be used by two threads at once, while the compiled model may
    create requests concurrently; a request per thread (kept in a ``threading.local``) lets
    threads run in parallel without a lock around inference.
    """

    name = "openvino"

    def __init__(self, model_path: Path, threads: int | None = None,
                 device: str | None = None) -> None:
        self.model_path = Path(model_path)
        device = device or "CPU"
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        core = ov.Core()
        try:
            model = core.read_model(str(self.model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"openvino cannot load {self.model_path}: {exc}") from exc
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
        known = [*core.available_devices, "AUTO", "MULTI", "HETERO", "BATCH"]
        if device.split(":")[0].split(".")[0] not in known:
            raise BackendError(f"openvino has no device {device!r} here; available: "
                               f"{', '.join(core.available_devices)} (or AUTO)")
        try:
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BackendError(f"openvino cannot load {self.model_path}: {exc}") from exc
        model_input = self._compiled.inputs[0]
        self.input_name: str = model_input.get_any_name()
        self.input_shape: tuple[int | None, ...] = tuple(
            d.get_length() if d.is_static else None for d in model_input.get_partial_shape()
        )
        self._output_ports = list(self._compiled.outputs)
        self.output_names: tuple[str, ...] = tuple(p.get_any_name() for p in self._output_ports)
        self._local = threading.local()
        self._create_lock = threading.Lock()

    @property
    def inference_precision(self) -> str:
        """The precision the CPU plugin actually computes in (e.g. ``f32``, ``bf16``)."""
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            with self._create_lock:
                request = self._compiled.create_infer_request()
            self._local.request = request
        return request

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` → ``{output name: array}`` (copies, not views)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        # share_outputs=False: results are copied out of the request's buffers, which the
        # next call on this thread would overwrite.
        results = self._request().infer({0: images}, share_outputs=False)
        return {name: np.asarray(results[port])
                for name, port in zip(self.output_names, self._output_ports, strict=True)}
