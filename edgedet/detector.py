"""`Detector`: load an artifact (zoo name or directory) and detect objects in BGR frames.

One call of ``detect(frame)`` is::

    preprocess(frame)  → images (1, 3, H, W) float32 + the frame → input transform
    backend.run        → raw head outputs by name (e.g. cls_logits (1, A, K+1))
    decode_head_outputs→ boxes_xyxy (A, 4) in input pixels, scores (A, K)
    select_detections  → threshold, top-k, NMS (hard / soft / soft+voting)
    boxes_to_frame     → boxes in frame pixels → Detections

Only the model itself runs in the inference runtime; decoding and NMS are numpy, identical for
every backend and precision.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgedet.anchors import anchor_spec_from_dict
from edgedet.backends import (
    BACKENDS,
    BackendError,
    BackendUnavailableError,
    InferenceBackend,
    create_backend,
    is_available,
    model_file_for,
    pip_package,
)
from edgedet.detections import Detections
from edgedet.head_decoding import decode_head_outputs
from edgedet.manifest import ManifestError, load_manifest
from edgedet.postprocess import NMS_MODES, NmsMode, select_detections
from edgedet.preprocess import (
    FrameError,
    FrameTransform,
    PreprocessConfig,
    preprocess,
)
from edgedet.zoo import resolve_model


@dataclass(frozen=True)
class DetectorOptions:
    """Post-processing and runtime settings of a ``Detector``.

    A ``Detector`` starts from the artifact manifest's ``postprocess`` section (the settings
    its accuracy was measured with) and applies keyword overrides on top; the defaults here
    only fill keys a manifest leaves out.

    Attributes:
        score_threshold: detections scoring at or below it are dropped (0..1).
        iou_threshold: NMS IoU threshold (0..1].
        max_detections: at most this many detections per frame.
        nms_mode: ``hard`` (greedy NMS), ``soft`` (Gaussian Soft-NMS) or ``soft+voting``
            (Soft-NMS then box voting, HAR-Net).
        pre_nms_top_k: only the best this-many (anchor, class) candidates enter NMS
            (0 = all).
        threads: inference threads of the runtime (None = the runtime's default).
    """

    score_threshold: float = 0.05
    iou_threshold: float = 0.45
    max_detections: int = 100
    nms_mode: NmsMode = "hard"
    pre_nms_top_k: int = 1000
    threads: int | None = None

    def __post_init__(self) -> None:
        if not _is_real(self.score_threshold) or not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold!r}")
        if not _is_real(self.iou_threshold) or not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold!r}")
        if not _is_int(self.max_detections) or self.max_detections < 1:
            raise ValueError(f"max_detections must be an integer >= 1, "
                             f"got {self.max_detections!r}")
        if self.nms_mode not in NMS_MODES:
            raise ValueError(f"nms_mode must be one of {NMS_MODES}, got {self.nms_mode!r}")
        if not _is_int(self.pre_nms_top_k) or self.pre_nms_top_k < 0:
            raise ValueError(f"pre_nms_top_k must be an integer >= 0 (0 = no limit), "
                             f"got {self.pre_nms_top_k!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(f"threads must be None or an integer >= 1, got {self.threads!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_manifest(cls, manifest: Mapping, **overrides: object) -> DetectorOptions:
        """Options from ``manifest["postprocess"]`` with ``overrides`` applied on top.

        Raises:
            TypeError: an override is not an option (the message lists the valid ones).
            ValueError: a value is out of range.
        """
        valid = cls.field_names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(f"unknown Detector option(s) {unknown}; valid options: "
                            f"{', '.join(valid)}")
        from_manifest = {k: v for k, v in dict(manifest.get("postprocess") or {}).items()
                         if k in valid}
        return cls(**{**from_manifest, **overrides})  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Detector:
    """An object detector loaded from an edgedet artifact.

    ``Detector("passd_mobilenet_int8")`` loads a zoo model; ``Detector("runs/export/cpu")``
    an artifact directory. Every model file's sha256 is checked against the manifest first.

    Args:
        name_or_path: zoo model name or artifact directory.
        backend: ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (the backend the artifact
            was exported for, which must then be installed).
        options: a complete ``DetectorOptions`` (default: from the manifest).
        **overrides: individual ``DetectorOptions`` fields, e.g. ``score_threshold=0.3``.

    ``detect`` and ``detect_batch`` may be called from several threads at once.

    Raises:
        ValueError: unknown model name / directory; ``ManifestError`` (a ``ValueError``) for a
            bad manifest or a missing, corrupt or truncated model file.
        TypeError: an unknown option.
        BackendError: the backend is not installed (``BackendUnavailableError``) or cannot
            load the model file.
    """

    def __init__(self, name_or_path: str | os.PathLike[str], backend: str = "auto",
                 options: DetectorOptions | None = None, **overrides: object) -> None:
        self.artifact_dir: Path = resolve_model(name_or_path)
        self._manifest = load_manifest(self.artifact_dir)
        if options is None:
            self.options = DetectorOptions.from_manifest(self._manifest, **overrides)
        else:
            DetectorOptions.from_manifest({}, **overrides)  # rejects unknown names
            self.options = dataclasses.replace(options, **overrides)  # type: ignore[arg-type]
        self.backend_name: str = _choose_backend(backend, self._manifest)
        model_file = model_file_for(self.backend_name, list(self._manifest["files"]))
        self._backend: InferenceBackend = create_backend(
            self.backend_name, self.artifact_dir / model_file, threads=self.options.threads)
        self.class_names: tuple[str, ...] = tuple(self._manifest["class_names"])
        self.preprocess_config = PreprocessConfig.from_dict(self._manifest["preprocess"])
        self._priors_cxcywh = anchor_spec_from_dict(self._manifest["anchor_spec"]).generate()
        self._box_coder_weights = tuple(float(w) for w in self._manifest["box_coder_weights"])
        self._head_family: str = self._manifest["head_family"]
        self._output_names = tuple(o["name"] for o in self._manifest["outputs"])
        self._check_model_matches_manifest()

    def _check_model_matches_manifest(self) -> None:
        """Stop at load time, naming the file, if the model disagrees with its manifest."""
        path = self._backend.model_path
        missing = [n for n in self._output_names if n not in self._backend.output_names]
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
    def info(self) -> dict:
        """The artifact manifest (a copy: changing it changes nothing)."""
        return copy.deepcopy(self._manifest)

    @property
    def name(self) -> str:
        return str(self._manifest["name"])

    @property
    def input_size(self) -> tuple[int, int]:
        """Model input ``(width, height)``."""
        return self.preprocess_config.input_size

    def __repr__(self) -> str:
        return (f"Detector({self.name!r}, backend={self.backend_name!r}, "
                f"precision={self._manifest['precision']!r}, input={self.input_size})")

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, FrameTransform]:
        """A BGR frame → ``(images (1, 3, H, W) float32, frame→input transform)``."""
        return preprocess(frame, self.preprocess_config)

    def run_model(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Only the model: ``images (N, 3, H, W) float32`` → raw outputs by name.

        What ``detect`` does between pre- and post-processing; for benchmarks and for
        comparing a deployed model's raw outputs with its reference.
        """
        images = np.asarray(images, dtype=np.float32)
        limit = self._backend.input_shape[0]
        if limit is None or limit == len(images):
            return self._backend.run(images)
        # A model exported with a fixed batch (usually 1) runs in chunks of that size.
        chunks = [self._backend.run(images[i:i + limit]) for i in range(0, len(images), limit)]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    def detect(self, frame: np.ndarray) -> Detections:
        """Detect objects in one BGR ``uint8 (H, W, 3)`` frame of any size.

        Returns:
            ``Detections`` with boxes in this frame's pixels, best score first.

        Raises:
            FrameError: the frame is not an image (wrong type, shape, dtype, values).
        """
        images, transform = self.preprocess(frame)
        return self._postprocess(self._backend.run(images), 0, transform)

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """``detect`` for several frames (any sizes) in one model call where the model allows.

        Raises:
            FrameError: naming the index of the first bad frame.
        """
        inputs, transforms = [], []
        for index, frame in enumerate(frames):
            try:
                images, transform = self.preprocess(frame)
            except FrameError as exc:
                raise FrameError(f"frame {index}: {exc}") from exc
            inputs.append(images)
            transforms.append(transform)
        if not inputs:
            return []
        outputs = self.run_model(np.concatenate(inputs, axis=0))
        return [self._postprocess(outputs, i, t) for i, t in enumerate(transforms)]

    def _postprocess(self, outputs: Mapping[str, np.ndarray], index: int,
                     transform: FrameTransform) -> Detections:
        """Decode image ``index`` of a batch of raw outputs into frame-pixel ``Detections``."""
        one_image = {name: outputs[name][index] for name in self._output_names}
        return outputs_to_detections(one_image, self._head_family, self._priors_cxcywh,
                                     self._box_coder_weights, self.options, transform,
                                     self.class_names)


def outputs_to_detections(
    outputs: Mapping[str, np.ndarray],
    head_family: str,
    priors_cxcywh: np.ndarray,
    box_coder_weights: Sequence[float],
    options: DetectorOptions,
    transform: FrameTransform,
    class_names: Sequence[str],
) -> Detections:
    """One image's raw head outputs (``{name: (A, k)}``) → ``Detections`` in frame pixels.

    The single definition of the SDK's decoding and selection: the conversion pipeline's
    PyTorch reference uses it too, so reference and artifacts are scored identically.
    """
    boxes_xyxy, scores = decode_head_outputs(
        head_family, outputs, priors_cxcywh, tuple(box_coder_weights))  # type: ignore[arg-type]
    xyxy, kept_scores, class_ids = select_detections(
        boxes_xyxy, scores, score_threshold=options.score_threshold,
        iou_threshold=options.iou_threshold, max_detections=options.max_detections,
        pre_nms_top_k=options.pre_nms_top_k, nms_mode=options.nms_mode)
    frame_xyxy = transform.boxes_to_frame(xyxy)
    # A box lying wholly in letterbox padding or off the frame clips to zero area.
    visible = (frame_xyxy[:, 2] > frame_xyxy[:, 0]) & (frame_xyxy[:, 3] > frame_xyxy[:, 1])
    return Detections(frame_xyxy[visible], kept_scores[visible], class_ids[visible],
                      tuple(class_names))


def _choose_backend(requested: str, manifest: Mapping) -> str:
    """The backend to run ``manifest``'s artifact with (see ``Detector``'s ``backend``)."""
    if requested not in (*BACKENDS, "auto"):
        raise ValueError(f"unknown backend {requested!r}; choose one of "
                         f"{', '.join((*BACKENDS, 'auto'))}")
    if requested != "auto":
        return requested
    native = str(manifest["backend"])
    if is_available(native):
        return native
    hint = ""
    for other in BACKENDS:
        if other != native and is_available(other) and _can_read(other, manifest):
            hint = f", or pass backend={other!r} (installed, and it reads this model)"
            break
    raise BackendUnavailableError(
        f"artifact {manifest['name']!r} was exported for {native}, which is not installed: "
        f"pip install {pip_package(native)}{hint}")


def _can_read(backend: str, manifest: Mapping) -> bool:
    try:
        model_file_for(backend, list(manifest["files"]))
    except BackendError:
        return False
    return True


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
