"""`Detector`: load an artifact (zoo name or directory) and detect objects in BGR frames.

One call of ``detect(frame)`` is::

    resize_to_input    → the frame resized to the input, BGR uint8 (1, H, W, 3) + the frame →
                         input transform
    normalize_to_nchw  → images (1, 3, H, W) float32, unless the backend normalises inside
                         its runtime (``FrameInputBackend``: OpenVINO's PrePostProcessor);
                         both steps in one pass where the frame shrinks by area to half
                         its size (``preprocess``: the same bits)
    backend.run        → raw head outputs by name (e.g. cls_logits (1, A, K+1))
    HeadDecoder        → decode against the anchors, threshold, top-k, NMS, boxes in frame
                         pixels → Detections

With ``double_scale=True`` (HAR-Net's double-scale testing) the frame also runs through the
artifact's 2x model and the raw outputs are merged (``edgedet.double_scale``) before decoding.
With ``tiles=n`` (tiled inference, for small objects) the frame also runs as an ``n x n`` grid
of overlapping crops, each as above, and the detections are merged (``edgedet.tiling``).

Only the model itself runs in the inference runtime; decoding and NMS are the SDK's own
(numpy and compiled kernels, ``edgedet.decoder``), identical for every backend and
precision. The backend is any ``InferenceBackend``: one of the table in ``edgedet.backends``
by name, or an instance (the conversion pipeline passes its PyTorch reference this way, so
the reference is scored by exactly this code).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgedet.artifact import (
    Artifact,
    ManifestError,
    check_summary,
    double_scale_files,
    main_model_files,
    require_passed_check,
)
from edgedet.attend_tail import AttendTail, attend_tail_for
from edgedet.backend_choice import choose_backend
from edgedet.backends import (
    BackendError,
    FrameInputBackend,
    FrameRunner,
    InferenceBackend,
    create_backend,
    model_file_for,
)
from edgedet.decoder import HeadDecoder
from edgedet.detections import Detections
from edgedet.double_scale import SecondScale
from edgedet.options import SETTINGS, DetectorOptions
from edgedet.preprocess import (
    FrameError,
    FrameTransform,
    PreprocessConfig,
    normalize_to_nchw,
    preprocess,
    resize_to_input,
    validate_frame,
)
from edgedet.run_gate import ClosedBackend, RunGate
from edgedet.tiling import merge_tiles, tile_grid
from edgedet.zoo import resolve_model


def _check_arguments(name_or_path: object, backend: object, options: object,
                     allow_unchecked: object, settings: object) -> None:
    """``Detector``'s arguments of the wrong kind, as one clear ``TypeError`` / ``ValueError``
    (they failed later as an AttributeError, or loaded the current folder for ``""``)."""
    if isinstance(name_or_path, str) and not name_or_path:
        raise ValueError("Detector needs a zoo model name or an artifact folder, got ''")
    if not isinstance(backend, str) and not hasattr(backend, "run"):
        raise TypeError(f"backend must be a backend name ('auto', 'onnxruntime', ...) or a "
                        f"loaded backend, got {backend!r}")
    if options is not None and not isinstance(options, DetectorOptions):
        raise TypeError(f"options must be a DetectorOptions (or pass options as keyword "
                        f"arguments: Detector(name, tiles=2)), got {type(options).__name__}")
    if not isinstance(allow_unchecked, bool | np.bool_):
        raise TypeError(f"allow_unchecked must be True or False, got {allow_unchecked!r}")
    if settings not in SETTINGS:
        raise ValueError(f"settings must be one of {SETTINGS}, got {settings!r}")
    if options is not None and settings != "application":
        raise ValueError(f"settings={settings!r} picks the manifest's settings, which "
                         "options= replaces: pass one or the other")


class Detector:
    """An object detector loaded from an edgedet artifact.

    ``Detector("passd_mobilenet_int8")`` loads a zoo model; ``Detector("runs/export/cpu")``
    an artifact directory. Every model file's sha256 is checked against the manifest first.

    Args:
        name_or_path: zoo model name, artifact directory, or an ``Artifact`` (e.g. one the
            conversion pipeline staged and is checking).
        backend: a name from ``edgedet.backends.BACKENDS`` (``"onnxruntime"``,
            ``"openvino"``, ``"tensorrt"``, ...), ``"auto"`` (the backend the artifact was
            exported for; where that is not installed, its table entry's ``fallback`` if that
            is installed and reads the model, e.g. ONNX Runtime on its best providers for a
            TensorRT artifact; else an error saying what to install), or a loaded
            ``InferenceBackend`` to run instead. With a zoo name, a backend the zoo has a
            build of its own for picks that build: ``Detector("passd_mobilenet_int8",
            backend="openvino")`` loads ``passd_mobilenet_int8_openvino``.
        options: a complete ``DetectorOptions`` (default: from the manifest).
        settings: ``"application"`` (default): the manifest's post-processing with its
            application score threshold (``manifest["application"]``, what the camera app
            draws); ``"evaluation"``: the papers' evaluation settings the accuracy check used
            (``manifest["postprocess"]``: score threshold 0.01 or 0.05 by family, for AP).
            Not with ``options``, which replaces them.
        allow_unchecked: load an artifact whose accuracy check failed or never ran (refused by
            default: ``UncheckedArtifactError``, a ``ManifestError``).
        double_scale_backend: with a loaded ``backend`` and ``double_scale=True``, the loaded
            2x model (with a backend name, the artifact's 2x model file is loaded by it).
        **overrides: individual ``DetectorOptions`` fields, e.g. ``score_threshold=0.3``,
            ``device="GPU"`` or ``double_scale=True``.

    ``detect`` and ``detect_batch`` may be called from several threads at once. ``close()``
    (or a ``with`` block) releases the runtimes' sessions at once rather than when the
    Detector is collected.

    Attributes:
        backend_name: the runtime the model runs on.
        fallback_reason: why ``backend_name`` is not the artifact's own backend (e.g.
            ``"tensorrt not installed"``), or None.

    Raises:
        ValueError: unknown model name / directory; ``ManifestError`` (a ``ValueError``) for a
            bad manifest, a missing, corrupt or truncated model file, or an accuracy check that
            failed or never ran; ``DoubleScaleError`` (a ``ValueError``) for
            ``double_scale=True`` on an artifact without a 2x model.
        TypeError: an unknown option.
        BackendError: the backend is not installed (``BackendUnavailableError``) or cannot
            load the model file or use the device.
    """

    def __init__(self, name_or_path: str | os.PathLike[str] | Artifact,
                 backend: str | InferenceBackend = "auto",
                 options: DetectorOptions | None = None, allow_unchecked: bool = False,
                 settings: str = "application",
                 double_scale_backend: InferenceBackend | None = None,
                 **overrides: object) -> None:
        _check_arguments(name_or_path, backend, options, allow_unchecked, settings)
        if isinstance(name_or_path, Artifact):
            artifact = name_or_path  # (verified when it was loaded, or now: a staged one)
            contents = artifact.contents or artifact.verify_files()
        else:
            artifact = Artifact.load(resolve_model(
                name_or_path, backend if isinstance(backend, str) and backend != "auto" else None))
            contents = artifact.contents
        if not allow_unchecked:
            require_passed_check(artifact.manifest, str(artifact.directory))
        self.artifact_dir: Path = artifact.directory
        self._manifest = dict(artifact.manifest)
        if options is None:
            self._options = DetectorOptions.from_manifest(self._manifest, settings, **overrides)
        else:
            DetectorOptions.from_manifest({}, **overrides)  # rejects unknown names
            self._options = dataclasses.replace(options, **overrides)  # type: ignore[arg-type]
        self.fallback_reason: str | None = None
        self._gate = RunGate(str(self._manifest.get("name", self.artifact_dir)))
        self._own_backends: list[InferenceBackend] = []  # made here, so closed by close()
        if isinstance(backend, str):
            name, self.fallback_reason = choose_backend(backend, self._manifest)
            self.backend_name: str = name
            device = self.options.device
            if self.fallback_reason is not None and device is None:
                device = "auto"  # the fallback's best devices, as the native runtime's GPU
            model_file = model_file_for(self.backend_name, main_model_files(self._manifest))
            try:
                # The runtimes load the bytes just checked, not the files again.
                self._backend: InferenceBackend = create_backend(
                    self.backend_name, self.artifact_dir / model_file,
                    threads=self.options.threads, device=device, contents=contents)
                self._own_backends.append(self._backend)
                if self.options.double_scale and self._manifest.get("double_scale"):
                    double_scale_backend = create_backend(
                        self.backend_name, self.artifact_dir / model_file_for(
                            self.backend_name, double_scale_files(self._manifest)),
                        threads=self.options.threads, device=device, contents=contents)
                    self._own_backends.append(double_scale_backend)
            except BackendError as error:
                if self.fallback_reason is None:
                    raise
                # Else the error names a runtime the user never asked for (a TensorRT
                # artifact's device "cuda:0" refused by ONNX Runtime, its fallback).
                raise type(error)(f"{self._manifest['backend']} is not used here "
                                  f"({self.fallback_reason}), so {self.backend_name} runs "
                                  f"this model, and: {error}") from error
        else:
            self.backend_name = backend.name
            self._backend = backend
        self.class_names: tuple[str, ...] = tuple(self._manifest["class_names"])
        self.preprocess_config = PreprocessConfig.from_dict(self._manifest["preprocess"])
        self.decoder = HeadDecoder.from_manifest(self._manifest, self.options)
        try:
            self._attend_tail: AttendTail | None = attend_tail_for(
                self._manifest, self._backend.output_names, self.options.threads,
                getattr(self._backend, "output_dtypes", None), self.decoder.priors_cxcywh)
        except ValueError as error:
            raise ManifestError(f"{self._backend.model_path}: {error}") from None
        self._check_model_matches_manifest()
        # Compiled here, so that a backend that cannot do it fails at load time, not mid-stream.
        self._frame_runner: FrameRunner | None = (
            self._backend.frame_runner(self.preprocess_config)
            if isinstance(self._backend, FrameInputBackend) else None)
        self._second_scale: SecondScale | None = None
        if self.options.double_scale:
            self._second_scale = self._load_second_scale(double_scale_backend, allow_unchecked)

    def _load_second_scale(self, backend_2x: InferenceBackend | None,
                           allow_unchecked: bool) -> SecondScale:
        """The 2x half of double-scale testing; the decoder then decodes the merged outputs
        against the merged anchors."""
        if backend_2x is None and self._manifest.get("double_scale"):
            raise TypeError("double_scale=True with a loaded backend needs "
                            "double_scale_backend=, the loaded 2x model")
        second = SecondScale.from_manifest(self._manifest, backend_2x,  # type: ignore[arg-type]
                                           self.options.threads)
        if not allow_unchecked:
            require_passed_check({"name": f"{self.name} (double-scale testing)",
                                  "accuracy": self._manifest["double_scale"].get("accuracy")},
                                 str(self.artifact_dir))
        self.decoder = HeadDecoder(self.decoder.head_family, second.layout.priors_cxcywh,
                                   self.decoder.box_coder_weights, self.decoder.output_names,
                                   self.class_names, self.options)
        return second

    def _check_model_matches_manifest(self) -> None:
        """Stop at load time, naming the file, if the model disagrees with its manifest."""
        path = self._backend.model_path
        made = (self._attend_tail.outputs_after(self._backend.output_names)
                if self._attend_tail is not None else set(self._backend.output_names))
        missing = [n for n in self.decoder.output_names if n not in made]
        if missing:
            raise ManifestError(f"{path} has outputs {list(self._backend.output_names)} but "
                                f"the manifest lists {missing} too")
        width, height = self.preprocess_config.input_size
        shape = self._backend.input_shape
        if len(shape) != 4 or shape[1] not in (3, None) or shape[2] not in (height, None) or (
            shape[3] not in (width, None)
        ):
            raise ManifestError(f"{path} takes input of shape {list(shape)} but the manifest's "
                                f"preprocess makes (N, 3, {height}, {width})")

    @property
    def options(self) -> DetectorOptions:
        """The options in force (read-only: the decoder and backends were built from them;
        load another ``Detector`` for others)."""
        return self._options

    @property
    def info(self) -> dict:
        """The artifact manifest (a copy: changing it changes nothing)."""
        return copy.deepcopy(self._manifest)

    @property
    def backend(self) -> InferenceBackend:
        """The loaded inference backend (its runtime objects are the backend's own)."""
        return self._backend

    @property
    def name(self) -> str:
        return str(self._manifest["name"])

    @property
    def input_size(self) -> tuple[int, int]:
        """Model input ``(width, height)``."""
        return self.preprocess_config.input_size

    def __repr__(self) -> str:
        backend = repr(self.backend_name)
        if self.fallback_reason is not None:
            providers = getattr(self._backend, "providers", None)
            on = f"; providers {', '.join(providers)}" if providers else ""
            backend += f" (fallback: {self.fallback_reason}{on})"
        scales = " + 2x (double-scale testing)" if self._second_scale is not None else ""
        if self.options.tiles > 1:
            scales += f", tiled {self.options.tiles}x{self.options.tiles}"
        return (f"Detector({self.name!r}, backend={backend}, "
                f"precision={self._manifest['precision']!r}, input={self.input_size}{scales}, "
                f"check={self.check!r})")

    @property
    def check(self) -> str:
        """The artifact's accuracy check in one line (``edgedet.artifact.check_summary``)."""
        return check_summary(self._manifest)

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, FrameTransform]:
        """A BGR frame → ``(images (1, 3, H, W) float32, frame→input transform)``."""
        return preprocess(frame, self.preprocess_config)

    def run_model(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Only the model: ``images (N, 3, H, W) float32`` → raw outputs by name.

        What ``detect`` does between pre- and post-processing; for benchmarks and for
        comparing a deployed model's raw outputs with its reference.
        """
        images = np.asarray(images, dtype=np.float32)
        width, height = self.input_size
        if images.ndim != 4 or images.shape[0] == 0 or images.shape[1:] != (3, height, width):
            # (The runtimes' own errors for a wrong shape are their exception types, worded
            # in their terms.)
            raise ValueError(f"run_model takes images (N, 3, {height}, {width}) with N >= 1 "
                             f"(preprocess's output), got shape {images.shape}")
        return self._in_model_batches(self._backend.run, images)

    @property
    def normalizes_in_runtime(self) -> bool:
        """Whether ``detect`` hands the backend resized uint8 frames and the runtime
        normalises them (``FrameInputBackend``), instead of ``normalize_to_nchw``."""
        return self._frame_runner is not None

    def run_frames(self, frames_bgr: np.ndarray) -> dict[str, np.ndarray]:
        """The model on resized frames: as ``detect`` runs it where the runtime normalises;
        elsewhere ``normalize_to_nchw`` then ``run_model`` (``detect`` may do both steps'
        work in one pass, ``preprocess``: the same input).

        Args:
            frames_bgr: ``(N, H, W, 3)`` BGR uint8 at the input size (``resize_to_input``'s
                output, stacked).

        Returns:
            The raw outputs by name, as ``run_model(normalize_to_nchw(...))`` gives them.

        Raises:
            FrameError: not one or more uint8 frames of the input size.
        """
        frames_bgr = np.asarray(frames_bgr)
        width, height = self.input_size
        if (frames_bgr.dtype != np.uint8 or frames_bgr.shape[1:] != (height, width, 3)
                or len(frames_bgr) == 0):
            raise FrameError(f"run_frames takes resized frames (N, {height}, {width}, 3) uint8 "
                             f"(resize_to_input's output), got {frames_bgr.shape} "
                             f"{frames_bgr.dtype}")
        if self._frame_runner is not None:
            return self._in_model_batches(self._frame_runner, frames_bgr)
        parts = [normalize_to_nchw(f, self.preprocess_config) for f in frames_bgr]
        # One frame (detect()) goes as it is: a concatenation would copy it once more.
        return self.run_model(parts[0] if len(parts) == 1 else np.concatenate(parts))

    def runtime_call(self, frame: np.ndarray) -> Callable[[], dict[str, np.ndarray]]:
        """The model alone on ``frame``, fed exactly as ``detect`` feeds it (the resized uint8
        frame where the runtime normalises, the normalised float input elsewhere), as a call
        to time: what the benchmarks and ``edgedet bench`` call runtime-only."""
        resized = resize_to_input(frame, self.preprocess_config)[0][None]
        if self._frame_runner is not None:
            return lambda: self.run_frames(resized)
        images = normalize_to_nchw(resized[0], self.preprocess_config)
        return lambda: self.run_model(images)

    def _in_model_batches(self, run: Callable[[np.ndarray], dict[str, np.ndarray]],
                          inputs: np.ndarray) -> dict[str, np.ndarray]:
        """``run(inputs)``, in chunks of the model's batch where it was exported with a fixed
        one (usually 1)."""
        finish = self._attend_tail or (lambda outputs: outputs)
        with self._gate.running():  # (every run of the model comes through here)
            limit = self._backend.input_shape[0]
            if limit is None or limit == len(inputs):
                return finish(run(inputs))
            chunks = [finish(run(inputs[i:i + limit])) for i in range(0, len(inputs), limit)]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    def close(self) -> None:
        """Release the runtime sessions this Detector made (GPU memory, a TensorRT context,
        the 2x model's too) now; calls after it raise ``RuntimeError``. A backend given as an
        object stays open: it is the caller's. Closing twice does nothing more. Runs other
        threads have in progress finish first (their next one raises)."""
        if not self._gate.close():
            return
        self._frame_runner = None
        for backend in self._own_backends:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
        self._own_backends.clear()
        if self._attend_tail is not None:
            self._attend_tail.close()
        self._backend = ClosedBackend(self._backend)
        if self._second_scale is not None:
            self._second_scale.backend = ClosedBackend(self._second_scale.backend)
            if self._second_scale.attend_tail is not None:
                self._second_scale.attend_tail.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def detect(self, frame: np.ndarray) -> Detections:
        """Detect objects in one BGR ``uint8 (H, W, 3)`` frame of any size.

        Returns:
            ``Detections`` with boxes in this frame's pixels, best score first.

        Raises:
            FrameError: the frame is not an image (wrong type, shape, dtype, values).
        """
        if self.options.tiles > 1:
            return self._detect_tiled(frame)
        return self._detect_once(frame)

    def _detect_tiled(self, frame: np.ndarray) -> Detections:
        """``detect`` with tiled inference: the frame, then each crop, merged."""
        frame = validate_frame(frame)
        height, width = frame.shape[:2]
        options = self.options
        try:
            tiles = tile_grid((width, height), options.tiles, options.tile_overlap)
        except ValueError as exc:  # a frame of a few pixels
            raise FrameError(str(exc)) from exc
        parts = [(tile, self._detect_once(tile.crop(frame))) for tile in tiles]
        return merge_tiles(self._detect_once(frame), parts, (width, height),
                           options.iou_threshold, options.max_detections)

    def _detect_once(self, frame: np.ndarray) -> Detections:
        """``detect`` of the frame as it is (no tiling)."""
        if self._frame_runner is None:
            # (preprocess: the resize and normalisation in one pass where it can.)
            images, transform = preprocess(frame, self.preprocess_config)
            outputs = self.run_model(images)
        else:
            resized, transform = resize_to_input(frame, self.preprocess_config)
            outputs = self.run_frames(resized[None])
        if self._second_scale is not None:
            with self._gate.running():
                outputs = self._second_scale.merge(frame, outputs)
        return self.decoder(outputs, transform)

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """``detect`` for several frames (any sizes) in one model call where the model allows.

        Raises:
            FrameError: naming the index of the first bad frame.
        """
        if isinstance(frames, np.ndarray) and (frames.ndim == 2 or (
                frames.ndim == 3 and frames.shape[-1] in (1, 3, 4))):
            # Iterating one frame would detect on each of its rows as a gray frame.
            raise FrameError(f"detect_batch takes a sequence of frames, got one frame of shape "
                             f"{frames.shape}: use detect(frame) or detect_batch([frame])")
        several_runs = self._second_scale is not None or self.options.tiles > 1
        inputs, transforms, checked = [], [], []
        for index, frame in enumerate(frames):
            try:
                if several_runs:  # each frame is detect()-ed on its own: only check it here
                    checked.append(validate_frame(frame))
                    continue
                resized, transform = resize_to_input(frame, self.preprocess_config)
            except FrameError as exc:
                raise FrameError(f"frame {index}: {exc}") from exc
            inputs.append(resized)
            transforms.append(transform)
        if several_runs:
            results = []
            for index, frame in enumerate(checked):
                try:
                    results.append(self.detect(frame))
                except FrameError as exc:  # e.g. a frame too small for the tiles
                    raise FrameError(f"frame {index}: {exc}") from exc
            return results
        if not inputs:
            return []
        outputs = self.run_frames(np.stack(inputs))
        return self.decoder.decode_batch(outputs, transforms)
