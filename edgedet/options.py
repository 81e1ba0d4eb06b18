"""``DetectorOptions``: the post-processing and runtime settings of a ``Detector``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgedet.postprocess import NMS_MODES, NmsMode

# What detect() keeps by default in an application, and what the camera demo draws. The
# manifest's ``postprocess`` section holds the papers' evaluation settings (score threshold
# 0.01, so that AP sees the whole precision-recall curve); on a camera frame those keep a
# dozen near-zero-score boxes even on a black frame. Manifests carry this value in their
# ``application`` section; older manifests without one get it from here.
APPLICATION_SCORE_THRESHOLD = 0.4
SETTINGS = ("application", "evaluation")
# Tiled inference runs tiles**2 + 1 models per frame; beyond 8x8 a crop of a camera frame is
# smaller than the model's input.
MAX_TILES = 8
# More inference threads than this is a typo, not a machine: 10**6 made ONNX Runtime start a
# million threads.
MAX_THREADS = 512


@dataclass(frozen=True)
class DetectorOptions:
    """Post-processing and runtime settings of a ``Detector``.

    A ``Detector`` starts from the artifact manifest's ``postprocess`` section (the settings
    its accuracy was measured with), then, unless asked for the evaluation settings, its
    ``application`` section (a score threshold fit for drawing boxes on frames), then keyword
    overrides; the defaults here only fill keys a manifest leaves out.

    Attributes:
        score_threshold: detections scoring at or below it are dropped (0..1).
        iou_threshold: NMS IoU threshold (0..1].
        max_detections: at most this many detections per frame.
        nms_mode: ``hard`` (greedy NMS), ``soft`` (Gaussian Soft-NMS) or ``soft+voting``
            (Soft-NMS then box voting, HAR-Net).
        pre_nms_top_k: only the best this-many (anchor, class) candidates enter NMS
            (0 = all).
        threads: inference threads of the runtime (None = the runtime's default).
        device: where the runtime runs the model (None = its CPU): an OpenVINO device
            (``"GPU"``, ``"NPU"``, ``"AUTO"``) or ONNX Runtime execution providers
            (``"cuda"``, ``"tensorrt,cuda"``); see ``edgedet.backends.BACKENDS``.
        double_scale: HAR-Net's double-scale testing (``edgedet.double_scale``): each frame
            also runs through the artifact's 2x model and the two runs' outputs are merged
            before decoding. Needs an artifact converted with ``quantize/run.py
            --double-scale``; slower (the 2x run has 4x the pixels), better on small objects.
        tiles: tiled inference (``edgedet.tiling``): with ``n > 1`` each frame also runs as
            an ``n x n`` grid of overlapping crops and the detections are merged; objects
            reach the model about ``n`` times larger, at ``n * n + 1`` model runs per frame.
            1 (the default) runs the frame once.
        tile_overlap: how much neighbouring crops overlap, as a fraction of a crop's side
            (an object smaller than the overlap lies wholly inside some crop).
    """

    score_threshold: float = 0.05
    iou_threshold: float = 0.45
    max_detections: int = 100
    nms_mode: NmsMode = "hard"
    pre_nms_top_k: int = 1000
    threads: int | None = None
    device: str | None = None
    double_scale: bool = False
    tiles: int = 1
    tile_overlap: float = 0.25

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
        if self.threads is not None and (not _is_int(self.threads)
                                         or not 1 <= self.threads <= MAX_THREADS):
            raise ValueError(f"threads must be None or an integer from 1 to {MAX_THREADS}, "
                             f"got {self.threads!r}")
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            raise ValueError(f"device must be None or a non-empty string, got {self.device!r}")
        if not isinstance(self.double_scale, bool | np.bool_):
            raise ValueError(f"double_scale must be True or False, got {self.double_scale!r}")
        if not _is_int(self.tiles) or not 1 <= self.tiles <= MAX_TILES:
            raise ValueError(f"tiles must be an integer from 1 to {MAX_TILES}, got "
                             f"{self.tiles!r}")
        if not _is_real(self.tile_overlap) or not 0.0 <= self.tile_overlap <= 0.75:
            raise ValueError(f"tile_overlap must be from 0 to 0.75, got {self.tile_overlap!r}")
        # numpy scalars (np.float32(0.5), np.int64(3)) pass the checks; store Python numbers,
        # which JSON, the manifests and the runtimes take.
        for name in ("score_threshold", "iou_threshold", "tile_overlap"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("max_detections", "pre_nms_top_k", "tiles"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.threads is not None:
            object.__setattr__(self, "threads", int(self.threads))
        object.__setattr__(self, "double_scale", bool(self.double_scale))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_manifest(cls, manifest: Mapping, settings: str = "application",
                      **overrides: object) -> DetectorOptions:
        """Options from ``manifest["postprocess"]`` with ``overrides`` applied on top.

        ``settings="application"`` (the default) also applies ``manifest["application"]``
        (``{"score_threshold": APPLICATION_SCORE_THRESHOLD}`` when the manifest has none);
        ``"evaluation"`` keeps the ``postprocess`` section as it is, as the accuracy check does.

        Raises:
            TypeError: an override is not an option (the message lists the valid ones).
            ValueError: a value is out of range, or ``settings`` is neither of ``SETTINGS``.
        """
        if settings not in SETTINGS:
            raise ValueError(f"settings must be one of {SETTINGS}, got {settings!r}")
        valid = cls.field_names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(f"unknown Detector option(s) {unknown}; valid options: "
                            f"{', '.join(valid)}")
        from_manifest = {k: v for k, v in dict(manifest.get("postprocess") or {}).items()
                         if k in valid}
        if settings == "application":
            application = manifest.get("application") or {
                "score_threshold": APPLICATION_SCORE_THRESHOLD}
            from_manifest.update({k: v for k, v in dict(application).items() if k in valid})
        return cls(**{**from_manifest, **overrides})  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_real(value: object) -> bool:
    return (isinstance(value, int | float | np.integer | np.floating)
            and not isinstance(value, bool | np.bool_))


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
