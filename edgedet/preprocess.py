"""From an OpenCV frame to a model input, and boxes from model input back to the frame.

Frames are OpenCV's BGR ``uint8 (H, W, 3)``. Grayscale ``(H, W)`` / ``(H, W, 1)`` and BGRA
``(H, W, 4)`` frames are converted; float frames are accepted when finite and on the 0..255
scale. Anything else is rejected with an error that names the problem.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np

from edgedet import kernels
from edgedet.area_resize import resize_area

ResizePolicy = Literal["stretch", "letterbox"]
ColorOrder = Literal["bgr", "rgb"]
Interpolation = Literal["area", "linear"]


class FrameError(ValueError):
    """A frame that cannot be turned into a model input."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its input (stored in the artifact manifest).

    Attributes:
        input_size: model input ``(width, height)``.
        resize: ``stretch`` (resize to the input size, aspect ratio not kept; how SSD-family
            models are trained) or ``letterbox`` (keep aspect ratio, pad the rest).
        color_order: channel order the model expects.
        mean: per-channel mean subtracted, in the model's channel order, on the 0..255 scale.
        std: per-channel divisor, same conventions.
        pad_value: letterbox padding value (0..255, before normalisation).
        interpolation: how a frame is shrunk to the input. ``area`` (OpenCV's ``INTER_AREA``,
            each input pixel the mean of the frame pixels it covers; what training did before
            the field existed, so manifests and checkpoints without it mean ``area``) or
            ``linear`` (``INTER_LINEAR``, 2x2 neighbours: about 0.2 ms instead of 1.0 for
            640x480 -> 300x300 on the 2-core CPU, at the price of aliasing that a model
            trained on such inputs learns). Enlarging is always linear.
    """

    input_size: tuple[int, int]
    resize: ResizePolicy = "stretch"
    color_order: ColorOrder = "rgb"
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    pad_value: float = 114.0
    interpolation: Interpolation = "area"

    def __post_init__(self) -> None:
        w, h = self.input_size
        if int(w) != w or int(h) != h or int(w) < 1 or int(h) < 1:
            raise ValueError(f"input_size must be positive whole (width, height), got "
                             f"{self.input_size}")
        if self.resize not in ("stretch", "letterbox"):
            raise ValueError(f"resize must be 'stretch' or 'letterbox', got {self.resize!r}")
        if self.color_order not in ("bgr", "rgb"):
            raise ValueError(f"color_order must be 'bgr' or 'rgb', got {self.color_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or not min(self.std) > 0 \
                or not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError(f"mean and std need 3 finite values each, std > 0; got mean "
                             f"{self.mean}, std {self.std}")
        if not 0 <= self.pad_value <= 255:  # also nan; a uint8 fill would wrap silently
            raise ValueError(f"pad_value must be in 0..255, got {self.pad_value}")
        if self.interpolation not in ("area", "linear"):
            raise ValueError(f"interpolation must be 'area' or 'linear', got "
                             f"{self.interpolation!r}")
        # Lists and arrays become tuples: equal configs compare and hash equal (the
        # normalisation tables are cached per config).
        object.__setattr__(self, "input_size", (int(w), int(h)))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        size = data["input_size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2:  # "320" would read as (3, 2)
            raise ValueError(f"input_size must be [width, height], got {size!r}")
        return cls(
            input_size=(int(size[0]), int(size[1])),
            resize=data.get("resize", "stretch"),
            color_order=data.get("color_order", "rgb"),
            mean=tuple(float(v) for v in data.get("mean", (0.0, 0.0, 0.0))),
            std=tuple(float(v) for v in data.get("std", (1.0, 1.0, 1.0))),
            pad_value=float(data.get("pad_value", 114.0)),
            interpolation=data.get("interpolation", "area"),
        )


@dataclass(frozen=True)
class FrameTransform:
    """The affine map from frame pixels to model-input pixels: ``x_in = x * scale_x + pad_x``.

    ``scale_x``/``scale_y`` are the *achieved* ratios after rounding the resized size, so
    ``boxes_to_frame`` is the exact inverse of ``boxes_to_input``.
    """

    frame_size: tuple[int, int]  # (width, height) of the original frame
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def boxes_to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Frame-pixel boxes ``(N, 4)`` → model-input pixels."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        scale = np.array([self.scale_x, self.scale_y] * 2, dtype=np.float32)
        pad = np.array([self.pad_x, self.pad_y] * 2, dtype=np.float32)
        return boxes * scale + pad

    def boxes_to_frame(self, boxes_xyxy: np.ndarray, clip: bool = True) -> np.ndarray:
        """Model-input boxes ``(N, 4)`` → frame pixels, clipped to the frame by default."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        scale = np.array([self.scale_x, self.scale_y] * 2, dtype=np.float32)
        pad = np.array([self.pad_x, self.pad_y] * 2, dtype=np.float32)
        out = (boxes - pad) / scale
        if clip:
            w, h = self.frame_size
            out = np.clip(out, 0.0, np.array([w, h, w, h], dtype=np.float32))
        return out


def require_bgr_frame(frame: object, what: str) -> None:
    """Refuse anything but a non-empty BGR ``uint8 (H, W, 3)`` frame, for the steps that
    write into one or into a file (drawing, video) and so convert nothing.

    Raises:
        FrameError: ``"{what} must be a BGR uint8 (H, W, 3) frame, got ..."``.
    """
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3
            and frame.shape[2] == 3 and frame.size):
        raise FrameError(f"{what} must be a BGR uint8 (H, W, 3) frame, got "
                         + (f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray)
                            else type(frame).__name__))


def validate_frame(frame: object) -> np.ndarray:
    """Check a frame and return it as BGR ``uint8 (H, W, 3)`` (converting gray / BGRA).

    Raises:
        FrameError: not an array, empty, wrong rank or channel count, unsupported dtype,
            NaN/inf values, or float values outside 0..255 or all within 0..1 (a frame on
            the 0..1 scale, which would read as black).
    """
    if not isinstance(frame, np.ndarray):
        raise FrameError(
            f"frame must be a numpy array (OpenCV BGR image), got {type(frame).__name__}"
        )
    if frame.size == 0:
        raise FrameError(f"frame is empty (shape {frame.shape})")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise FrameError(
            f"frame must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {frame.shape}"
        )
    if frame.dtype != np.uint8:
        if frame.dtype.kind != "f":
            raise FrameError(
                f"frame dtype must be uint8 (or float on the 0..255 scale), got {frame.dtype}"
            )
        if not np.all(np.isfinite(frame)):
            raise FrameError("frame contains NaN or infinite values")
        lo, hi = float(frame.min()), float(frame.max())
        if lo < 0.0 or hi > 255.0:
            raise FrameError(f"float frame values must lie in 0..255, got {lo:.3g}..{hi:.3g}")
        if 0.0 < hi <= 1.0:  # read on 0..255 it would be a black frame: no detections
            raise FrameError(f"float frame values lie in 0..1 ({lo:.3g}..{hi:.3g}); float frames "
                             "are read on OpenCV's 0..255 scale: multiply by 255 or pass uint8")
        frame = np.round(frame).astype(np.uint8)
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def compute_transform(frame_size: tuple[int, int], config: PreprocessConfig) -> FrameTransform:
    """The frame → input map for a frame of ``(width, height)`` under ``config``."""
    fw, fh = frame_size
    iw, ih = config.input_size
    if config.resize == "stretch":
        return FrameTransform((fw, fh), iw / fw, ih / fh, 0.0, 0.0)
    scale = min(iw / fw, ih / fh)
    nw, nh = max(1, round(fw * scale)), max(1, round(fh * scale))
    return FrameTransform((fw, fh), nw / fw, nh / fh, float((iw - nw) // 2),
                          float((ih - nh) // 2))


def preprocess(frame: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, FrameTransform]:
    """One frame → ``(input (1, 3, H, W) float32, transform)``: ``resize_to_input`` then
    ``normalize_to_nchw``, the same bits.

    Where the frame shrinks by area to half its size (a 640x480 camera frame into HAR-Net's
    and DSANet's 320x256 letterbox), both steps run as one pass (``kernels.halve_to_nchw``,
    OpenCV's arithmetic for 2 x 2 blocks): the shrunk frame is never written out and read
    again. With the caches cold after an inference, HAR-Net's 640x480 -> 320x256 took 0.43
    -0.64 ms against 0.52-0.82 for the two steps (four interleaved runs). (The same pass
    for larger whole factors was slower than OpenCV's vectorised blocks: 4 x 4, 1280x720 ->
    320x180, 1.66 against 1.53 ms.) Each frame size and config is first checked against the
    two steps on a random frame of that size (``_one_pass_agrees``); a mismatch, which
    another OpenCV's arithmetic could cause, keeps the two steps.
    """
    frame, transform, one_pass = _one_pass_plan(frame, config)
    if one_pass:
        return _one_pass(frame, config, transform), transform
    return normalize_to_nchw(_resized(frame, config, transform), config), transform


def runs_in_one_pass(frame: np.ndarray, config: PreprocessConfig) -> bool:
    """Whether ``preprocess`` resizes and normalises ``frame`` in one pass (for the
    benchmarks that time ``detect()``'s steps)."""
    return _one_pass_plan(frame, config)[2]


def _one_pass_plan(frame: np.ndarray, config: PreprocessConfig
                   ) -> tuple[np.ndarray, FrameTransform, bool]:
    """``(the checked frame, its transform, whether preprocess takes the one pass)``. Not
    for a view with gaps or a read-only frame (the compiled pass would compile again for
    those array types, on their first frame)."""
    if not isinstance(config, PreprocessConfig):
        raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    frame = validate_frame(frame)
    fh, fw = frame.shape[:2]
    transform = compute_transform((fw, fh), config)
    one_pass = (_halves(frame.shape, config, transform) and frame.flags.c_contiguous
                and frame.flags.writeable and _one_pass_agrees((fw, fh), config))
    return frame, transform, one_pass


def _halves(shape: tuple[int, ...], config: PreprocessConfig, transform: FrameTransform
            ) -> bool:
    """Whether ``resize_to_input`` shrinks a frame of ``shape`` (``transform`` its
    ``compute_transform``) by OpenCV's area path to exactly half its width and height."""
    fh, fw = shape[:2]
    nw, nh = round(fw * transform.scale_x), round(fh * transform.scale_y)
    return config.interpolation == "area" and (fw, fh) == (2 * nw, 2 * nh)


def _one_pass(frame: np.ndarray, config: PreprocessConfig,
              transform: FrameTransform) -> np.ndarray:
    """``kernels.halve_to_nchw`` of a C-contiguous frame that halves into the input."""
    tables, sources = _channel_tables(config)
    width, height = config.input_size
    return kernels.halve_to_nchw(frame, tables, sources, height, width, int(transform.pad_y),
                                 int(transform.pad_x), _pad_level(config.pad_value))


@functools.lru_cache(maxsize=16)
def _pad_level(pad_value: float) -> int:
    """The uint8 level of the letterbox padding (a uint8 assignment truncates, as
    ``resize_to_input``'s canvas does)."""
    level = np.empty((), np.uint8)
    level[...] = pad_value
    return int(level)


@functools.lru_cache(maxsize=64)
def _one_pass_agrees(frame_size: tuple[int, int], config: PreprocessConfig) -> bool:
    """Whether ``_one_pass`` gives the two steps' bits for frames of ``frame_size``, on one
    random frame of that size (once per size and config)."""
    fw, fh = frame_size
    probe = np.random.default_rng(0).integers(0, 256, (fh, fw, 3), dtype=np.uint8)
    resized, transform = resize_to_input(probe, config)
    expected = normalize_to_nchw(resized, config)
    return bool(np.array_equal(_one_pass(probe, config, transform).view(np.uint32),
                               expected.view(np.uint32)))


def resize_to_input(frame: np.ndarray, config: PreprocessConfig
                    ) -> tuple[np.ndarray, FrameTransform]:
    """``preprocess`` up to normalisation: the checked frame resized (and letterboxed) to the
    input size, ``(BGR uint8 (H, W, 3), transform)``."""
    if not isinstance(config, PreprocessConfig):
        raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    frame = validate_frame(frame)
    transform = compute_transform((frame.shape[1], frame.shape[0]), config)
    return _resized(frame, config, transform), transform


def _resized(frame: np.ndarray, config: PreprocessConfig, transform: FrameTransform
             ) -> np.ndarray:
    """``resize_to_input``'s image of a checked ``frame`` whose ``compute_transform`` is
    ``transform``."""
    fh, fw = frame.shape[:2]
    iw, ih = config.input_size
    nw, nh = round(fw * transform.scale_x), round(fh * transform.scale_y)
    if (nw, nh) == (iw, ih):
        return _resize(frame, (nw, nh), config.interpolation, None)
    # Letterbox: the frame resized straight into the canvas, only the padding filled (a
    # resized copy pasted into a filled canvas wrote the middle twice: 0.14 -> 0.11 ms for
    # HAR-Net's 640x480 -> 320x256 with the caches cold after an inference).
    canvas = np.empty((ih, iw, 3), dtype=np.uint8)
    px, py = int(transform.pad_x), int(transform.pad_y)
    pad = config.pad_value  # uint8 assignment truncates it, as np.full does
    canvas[:py], canvas[py + nh:] = pad, pad
    canvas[py:py + nh, :px], canvas[py:py + nh, px + nw:] = pad, pad
    _resize(frame, (nw, nh), config.interpolation, canvas[py:py + nh, px:px + nw])
    return canvas


def _resize(frame: np.ndarray, size: tuple[int, int], interpolation: Interpolation,
            dst: np.ndarray | None) -> np.ndarray:
    """``frame`` at ``size`` ``(width, height)``, into ``dst`` where given: area shrinking
    where asked and both sides shrink, else linear (enlarging is always linear)."""
    fh, fw = frame.shape[:2]
    if size == (fw, fh):
        if dst is None:
            return frame
        dst[...] = frame
        return dst
    if size[0] < fw and size[1] < fh and interpolation == "area":
        return resize_area(frame, size, dst)
    return cv2.resize(frame, size, dst=dst, interpolation=cv2.INTER_LINEAR)


def normalize_to_nchw(image_bgr: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """A resized BGR ``uint8 (H, W, 3)`` image → ``(1, 3, H, W) float32``, in the config's
    colour order, ``(x - mean) / std`` per channel.

    A uint8 pixel has 256 values, so each channel's result is read from a 256-entry table
    (``_channel_tables``: ``(float32(v) - mean) * (1 / std)``, the float32 operations this
    function did per pixel before, so the same bits), by one compiled loop
    (``kernels.table_to_nchw``). Broadcasting a 3-vector over ``(H, W, 3)`` runs numpy's inner
    loop 3 elements long (1.5 ms on a 320x320 input); with the caches cold after an inference
    numpy on the planes (convert, subtract, multiply) took 0.18-0.20 ms, OpenCV's ``split``
    and a ``LUT`` per plane 0.12-0.15, the compiled loop 0.08-0.10.
    """
    if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise FrameError(f"normalize_to_nchw takes a resized BGR uint8 (H, W, 3) image "
                         f"(resize_to_input's), got {image_bgr.dtype} {image_bgr.shape}")
    tables, sources = _channel_tables(config)
    return kernels.table_to_nchw(np.ascontiguousarray(image_bgr), tables, sources)


@functools.lru_cache(maxsize=16)
def _channel_tables(config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """``normalize_to_nchw``'s value of each uint8 level, per channel of the model's order:
    ``(tables (3, 256) float32, sources (3,) int64)``, ``sources`` the frame channel each
    model channel reads."""
    mean = np.asarray(config.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(config.std, dtype=np.float32)
    levels = np.arange(256, dtype=np.float32)
    tables = np.stack([(levels - mean[c]) * inv_std[c] for c in range(3)])
    sources = np.array((2, 1, 0) if config.color_order == "rgb" else (0, 1, 2), np.int64)
    for array in (tables, sources):
        array.flags.writeable = False  # shared by every call with this config
    return tables, sources


def preprocess_batch(
    frames: Sequence[np.ndarray], config: PreprocessConfig
) -> tuple[np.ndarray, list[FrameTransform]]:
    """Several frames (any sizes) → ``(inputs (N, 3, H, W) float32, transforms)``."""
    if len(frames) == 0:
        raise FrameError("preprocess_batch needs at least one frame")
    inputs, transforms = zip(*(preprocess(f, config) for f in frames), strict=True)
    return np.concatenate(inputs, axis=0), list(transforms)
