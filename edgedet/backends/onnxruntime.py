"""ONNX Runtime backend (``pip install onnxruntime``): runs ``*.onnx``, on the CPU by default."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgedet.backends import BackendError

# Short device names → execution providers (a full provider name is taken as it is).
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


# ``device="auto"``: the fastest providers first; only those this onnxruntime build has.
AUTO_PROVIDERS: tuple[str, ...] = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def providers_for(device: str | None) -> list[str]:
    """Execution providers for ``device`` (``"cuda,cpu"``, ``"TensorrtExecutionProvider"``).

    The CPU provider is always last, so an op another provider lacks still runs. ``"auto"``
    means ``AUTO_PROVIDERS`` (TensorRT, CUDA, CPU) less those this build lacks: what a
    ``Detector`` runs a TensorRT artifact on where TensorRT itself is not installed.

    Raises:
        BackendError: a provider this onnxruntime build does not have (the message lists
            the ones it has).
    """
    if device is not None and device.strip().lower() == "auto":
        available = ort.get_available_providers()
        # CPU is kept even if a build did not list it: ORT always has it, and it is the net.
        return [p for p in AUTO_PROVIDERS
                if p in available or p == "CPUExecutionProvider"]
    names = [d.strip() for d in (device or "cpu").split(",") if d.strip()]
    if not names:  # " " or "," would have run on the CPU without a word
        raise BackendError(f"device {device!r} names no execution provider (cpu, cuda, "
                           "tensorrt, ... or auto)")
    providers = [PROVIDER_ALIASES.get(n.lower(), n) for n in names]
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise BackendError(f"onnxruntime has no {', '.join(missing)} here (device "
                           f"{device!r}); this build offers {', '.join(available)}")
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    return providers


# ONNX Runtime's worker threads spin on for tens of milliseconds after a run by default.
# Measured on the 2-core CPU (2026-12-04): a session run right after another one ran 2x slower
# for at least three calls (8.5 -> 16.4 ms), an OpenVINO model 2.2x, so the second model of
# double-scale testing and any other detector in the process paid for the first one's spin
# (double-scale detect(): 89-93 -> 52-63 ms with the spin stopped), and the spin takes the
# core from detect()'s own decoding. Stopping it at the end of each run costs a single
# session nothing measurable (detect() 11.8-12.0 ms either way for harnet_pruned_int8), and
# threads still spin within a run, between its ops.
SESSION_CONFIG: dict[str, str] = {"session.force_spinning_stop": "1"}


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The SDK's ``SessionOptions``: ``SESSION_CONFIG``, and ``threads`` intra-op threads
    with one inter-op thread when given (benchmarks build their sessions with it too)."""
    options = ort.SessionOptions()
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
              "tensor(float16)": "float16", "tensor(int64)": "int64"}


class OnnxRuntimeBackend:
    """One ``InferenceSession`` on the execution providers of ``device`` (CPU by default).

    ``InferenceSession.run`` is thread-safe, so one session serves every thread.
    """

    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int | None = None,
                 device: str | None = None, contents: Mapping[str, bytes] | None = None
                 ) -> None:
        self.model_path = Path(model_path)
        options = session_options(threads)
        providers = providers_for(device)
        # From the checked bytes (which the session keeps: one more copy of the model); a
        # model with external data loads by path, whose folder resolves it.
        model = (contents or {}).get(self.model_path.name)
        try:
            try:
                self._session = ort.InferenceSession(
                    model if model is not None else str(self.model_path), options,
                    providers=providers)
            except Exception as exc:
                if model is None or "external data" not in str(exc).lower():
                    raise
                self._session = ort.InferenceSession(str(self.model_path), options,
                                                     providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise BackendError(f"onnxruntime cannot load {self.model_path}: {exc}") from exc
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        model_input = self._session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.input_shape: tuple[int | None, ...] = tuple(
            d if isinstance(d, int) else None for d in model_input.shape
        )
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())
        # Element types by output ("float32", "uint8", ...), for checks at load time (an
        # optional attribute of a backend: edgedet.attend_tail reads it where present).
        self.output_dtypes: dict[str, str] = {
            o.name: _ORT_TYPES.get(o.type, o.type) for o in self._session.get_outputs()}

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images (N, 3, H, W) float32`` → ``{output name: array}``."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        outputs = self._session.run(list(self.output_names), {self.input_name: images})
        return dict(zip(self.output_names, outputs, strict=True))
