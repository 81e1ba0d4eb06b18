"""Reading image files for inference, with a clear error for a missing, corrupt or cut-off file.

``cv2.imread`` alone is not enough: for a truncated JPEG it returns the decoded top part of
the picture (the rest grey) and only libjpeg's "Premature end of JPEG file" on stderr, without
the file name, tells anyone. ``read_image`` first checks that a JPEG, PNG or WebP file is
complete (its structure reaches the end-of-image marker / ``IEND`` chunk / the size its RIFF
header declares), then decodes it with OpenCV; any failure raises ``ImageReadError`` naming
the file. Torch-free: numpy and OpenCV only.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

__all__ = ["ImageReadError", "image_problem", "read_image"]


class ImageReadError(ValueError):
    """An image file is missing, unreadable, corrupt or truncated.

    Attributes:
        path: the file.
        reason: what is wrong with it (the message without the file name).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A JPEG marker inside entropy-coded data: 0xFF followed by anything but a stuffed zero, a
# restart marker (RST0-7, part of the scan) or another 0xFF (fill bytes before a marker).
_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn and SOI carry no length
_JPEG_EOI, _JPEG_SOS = 0xD9, 0xDA
_TRUNCATED_JPEG = "truncated JPEG (the file ends before its end-of-image marker)"


def _jpeg_problem(data: bytes) -> str | None:
    """Walk a JPEG's segments from SOI to EOI; what is wrong, or None when it is complete.

    Bytes after EOI are allowed: cameras append thumbnails or a motion-photo video there.
    """
    pos, size = len(_JPEG_SOI), len(data)
    while True:
        # Skip to the next marker; libjpeg also tolerates stray bytes between segments.
        pos = data.find(b"\xff", pos)
        while 0 <= pos < size - 1 and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos < 0 or pos + 1 >= size:
            return _TRUNCATED_JPEG
        marker = data[pos + 1]
        if marker == _JPEG_EOI:
            return None
        if marker in _JPEG_STANDALONE or marker == 0x00:
            pos += 2
            continue
        if pos + 4 > size:
            return _TRUNCATED_JPEG
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            return f"corrupt JPEG (segment 0xFF{marker:02X} at byte {pos} has length {length})"
        pos += 2 + length
        if pos > size:
            return _TRUNCATED_JPEG
        if marker == _JPEG_SOS:
            # The compressed scan follows its header, up to the next real marker.
            found = _JPEG_MARKER_IN_SCAN.search(data, pos)
            if found is None:
                return _TRUNCATED_JPEG
            pos = found.start()


def _png_problem(data: bytes) -> str | None:
    """Walk a PNG's chunks up to ``IEND``; what is wrong, or None when it is complete."""
    view = memoryview(data)
    pos, size = len(_PNG_SIGNATURE), len(data)
    while True:
        if pos + 12 > size:
            return "truncated PNG (the file ends before its IEND chunk)"
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > size:
            return "truncated PNG (the file ends before its IEND chunk)"
        # Critical chunks (upper-case first letter) only: libpng rejects those on a bad CRC
        # but merely warns about ancillary ones (text, colour profiles, ...).
        if kind[:1].isupper():
            (crc,) = struct.unpack_from(">I", data, end - 4)
            if zlib.crc32(view[pos + 4:end - 4]) != crc:
                name = kind.decode("latin-1")
                return f"corrupt PNG (CRC mismatch in its {name} chunk at byte {pos})"
        if kind == b"IEND":
            return None
        pos = end


def _webp_problem(data: bytes) -> str | None:
    """A WebP (RIFF) file must be at least as long as its header declares."""
    if len(data) < 12:
        return "truncated WebP file"
    (declared,) = struct.unpack_from("<I", data, 4)
    if len(data) < declared + 8:
        return f"truncated WebP ({len(data)} of the {declared + 8} bytes its header declares)"
    return None


def image_problem(data: bytes) -> str | None:
    """What makes an encoded image incomplete (JPEG, PNG, WebP), or None if nothing is seen.

    Only the container structure is checked, not the compressed pixels; other formats (BMP,
    TIFF) are left to the decoder, which rejects them when they are cut short.
    """
    if not data:
        return "empty file"
    if data.startswith(_JPEG_SOI):
        return _jpeg_problem(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png_problem(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_problem(data)
    return None


def _opencv_log_level_calls() -> tuple[Callable[[], int], Callable[[int], object]] | None:
    """OpenCV's ``(get, set)`` of its log level: ``cv2.utils.logging`` from OpenCV 5,
    ``cv2.getLogLevel`` / ``cv2.setLogLevel`` in 4.x (the range the package allows), or
    ``cv2.utils.getLogLevel`` / ``setLogLevel`` (where an open OpenCV pull request would put
    them); None where a build has none of these."""
    utils = getattr(cv2, "utils", None)
    for owner in (getattr(utils, "logging", None), utils, cv2):
        get_level = getattr(owner, "getLogLevel", None)
        set_level = getattr(owner, "setLogLevel", None)
        if callable(get_level) and callable(set_level):
            return get_level, set_level
    return None


_OPENCV_LOG_SILENT = 0  # cv::utils::logging::LOG_LEVEL_SILENT in every version
# OpenCV's level is process-wide: blocks in several threads (a camera closing while an
# image decodes) share one silence, and only the last to leave restores the level; saved
# and restored per block, two blocks ending out of order left the log silent for good.
_quiet_lock = threading.Lock()
_quiet_state = {"depth": 0, "saved": 0}


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's own log silenced for the block (it is process-wide: only around calls whose
    failure we report ourselves, such as its "[ERROR] imdecode_..." lines for a bad BMP or
    TIFF, which would only repeat, without the file name, what ``ImageReadError`` says).
    Blocks may nest and overlap across threads."""
    calls = _opencv_log_level_calls()
    if calls is None:
        yield
        return
    get_level, set_level = calls
    with _quiet_lock:
        if _quiet_state["depth"] == 0:
            _quiet_state["saved"] = get_level()
            set_level(_OPENCV_LOG_SILENT)
        _quiet_state["depth"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_state["depth"] -= 1
            if _quiet_state["depth"] == 0:
                set_level(_quiet_state["saved"])


def read_image(path: str | os.PathLike[str], flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Read and decode an image file with OpenCV (BGR ``uint8 (H, W, 3)`` by default).

    Args:
        path: the image file.
        flags: ``cv2.IMREAD_*`` flags, as for ``cv2.imread`` (EXIF orientation is applied
            unless ``cv2.IMREAD_IGNORE_ORIENTATION`` is given).

    Raises:
        ImageReadError: the file is missing or unreadable, empty, truncated, corrupt, or not
            an image format OpenCV decodes. The message names the file.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as exc:
        raise ImageReadError(path, (exc.strerror or str(exc)).lower()) from None
    problem = image_problem(data)
    if problem is not None:
        # Rejected before decoding, so libjpeg/libpng print nothing of their own either.
        raise ImageReadError(path, problem)
    with quiet_opencv():
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageReadError(path, "corrupt, or not an image format OpenCV reads")
    return image
