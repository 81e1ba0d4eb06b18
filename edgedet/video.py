"""Writing video files: the codec table and an atomic writer (torch-free, OpenCV only).

Every video edgedet writes (``edgedet detect --save``, ``edgedet synth --video``, the camera
app's ``--save``) goes through :class:`AtomicVideoWriter`, so a crash, Ctrl-C or a codec that
turns out to be missing never leaves a half-written file where the video should be.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from edgedet._io import current_umask, folder_problem
from edgedet.preprocess import PreprocessConfig, require_bgr_frame, resize_to_input

# File suffix (lower case) -> FourCC codes to try, in order. OpenCV picks the container from
# the suffix and the codec from the FourCC; these two ship with every OpenCV build's FFmpeg
# (or its built-in MJPEG writer), unlike H.264, which depends on how OpenCV was built.
VIDEO_CODECS: dict[str, tuple[str, ...]] = {".mp4": ("mp4v",), ".avi": ("MJPG",)}
# Frame rates outside these are no camera's; a writer that fails to open at one is blamed on
# it (FFmpeg's encoders refuse a time base from about 0.005 fps down and 65536 fps up).
_MIN_COMMON_FPS, _MAX_COMMON_FPS = 0.01, 1000.0


def save_video_problem(path: Path, source: str | os.PathLike[str] | None = None) -> str | None:
    """Why ``path`` cannot take an annotated video (a ``--save``), or None: a suffix with no
    codec here, a folder, or the ``source`` video itself (the copy would replace it). Checked
    before a model loads, by every command that writes one."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_CODECS:
        return f"--save needs a {' or '.join(VIDEO_CODECS)} file, got {path}"
    if path.is_dir():
        return f"--save {path} is a folder; give the video file to write"
    if problem := folder_problem(path.parent):  # else a bare "File exists" after the run
        return f"--save {path}: its folder {path.parent} {problem}"
    if source is not None and path.exists() and Path(source).exists() \
            and os.path.samefile(source, path):  # links and hard links too
        return f"--save {path} is the source: the annotated video would replace it"
    return None


class VideoWriteError(OSError):
    """OpenCV cannot write a (usable) video file: no codec for its suffix works here."""


def video_codecs(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The FourCC candidates for ``path``'s suffix.

    Raises:
        ValueError: the suffix is not in :data:`VIDEO_CODECS` (the message names ``path``).
    """
    codecs = VIDEO_CODECS.get(Path(path).suffix.lower())
    if codecs is None:
        raise ValueError(f"{path}: video extension must be one of {sorted(VIDEO_CODECS)}")
    return codecs


# Containers whose frame count comes from an index of the frames. Elsewhere (WebM, MKV, GIF)
# OpenCV estimates it as duration x nominal frame rate, far above the frames of a
# variable-frame-rate file (a browser or screen recording), so a short read proves nothing.
INDEXED_VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi")


def declared_frame_count(capture: cv2.VideoCapture, path: str | os.PathLike[str]
                         ) -> int | None:
    """The number of frames the opened video file ``path``'s index declares, or None where
    it declares none (a stream, a camera, a container without an index)."""
    if Path(path).suffix.lower() not in INDEXED_VIDEO_SUFFIXES:
        return None
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if math.isfinite(count) and count > 0 else None


def early_end_problem(description: str, frames_read: int, declared: int | None) -> str | None:
    """Why a video file whose reads stopped after ``frames_read`` frames looks truncated or
    corrupt, or None where that many is its end.

    OpenCV's ``read()`` fails alike at the end of a file and at a frame it cannot decode, so a
    file cut short would otherwise pass for a shorter video. 2% (at least two frames) are let
    through, for an index that counts a frame OpenCV skips.
    """
    if declared is None or frames_read >= declared - max(2, declared // 50):
        return None
    return (f"{description} ended after {frames_read} of the {declared} frames its header "
            f"declares: the file is truncated or corrupt (or its header's count is wrong)")


def count_video_frames(path: str | os.PathLike[str]) -> int:
    """Frames OpenCV can read back from the video at ``path`` (0 if it cannot open it)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return 0
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def read_video_frames(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Every frame OpenCV reads from the video at ``path``, BGR ``uint8 (H, W, 3)`` each
    (empty if it cannot open it); for checks and tests on short clips."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return frames
            frames.append(frame)
    finally:
        capture.release()


class AtomicVideoWriter:
    """Writes BGR frames to a temporary file beside ``path``; ``finish`` renames it into place.

    The file is opened on the first ``write`` (its frame size is the first frame's), so a
    writer that never gets a frame leaves nothing behind. ``discard`` (or an exception inside
    a ``with`` block) deletes the temporary file and leaves ``path`` untouched.

    Args:
        path: the video to write; its suffix picks the container and codecs (``.mp4``, ``.avi``).
        fps: frame rate stored in the file, frames per second (> 0).
        verify: on ``finish``, decode the file again and fail unless every written frame reads
            back (costs a full decode; catches codecs that "open" but write nothing usable).

    Raises:
        ValueError: unknown suffix, or ``fps`` not > 0.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, verify: bool = False) -> None:
        self.path = Path(path)
        self._codecs = video_codecs(self.path)
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
        self.fps = float(fps)
        self.verify = verify
        self.frames = 0
        self.codec: str | None = None  # the FourCC in use once the file is open
        self._writer: cv2.VideoWriter | None = None
        self._tmp_path: Path | None = None
        self._size: tuple[int, int] = (0, 0)  # (width, height) of the file, from frame one

    def __enter__(self) -> AtomicVideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            try:
                self.finish()
            except BaseException:
                self.discard()  # a failed rename must not leave the temporary file behind
                raise
        else:
            self.discard()

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp_name = str(self._create_temporary())
        for codec in self._codecs:
            writer = cv2.VideoWriter(
                tmp_name, cv2.VideoWriter_fourcc(*codec), self.fps, (width, height)
            )
            if writer.isOpened():
                self._writer, self.codec = writer, codec
                return
            writer.release()
        self.discard()
        if not _MIN_COMMON_FPS <= self.fps <= _MAX_COMMON_FPS:  # not a missing codec
            raise VideoWriteError(
                f"OpenCV cannot write {self.path} at {self.fps:g} fps; give a frame rate "
                f"from {_MIN_COMMON_FPS:g} to {_MAX_COMMON_FPS:g}")
        others = [suffix for suffix in VIDEO_CODECS if suffix != self.path.suffix.lower()]
        raise VideoWriteError(
            f"OpenCV cannot write {self.path}: no {self.path.suffix} codec "
            f"({', '.join(self._codecs)}) in this OpenCV build; try {' or '.join(others)}"
        )

    def _create_temporary(self) -> Path:
        """An empty hidden file beside ``path`` (mode 0600), named before it is made.

        The name goes into ``_tmp_path`` before the file exists, so that ``discard`` removes
        it whenever an interrupt lands (a SIGTERM is a KeyboardInterrupt in the CLI):
        ``tempfile.mkstemp`` creates the file first, and an interrupt between that and
        recording its name left the file behind. The name keeps the extension: OpenCV picks
        the container from it. 16 random hex digits: a name that already exists is skipped,
        never removed (``discard`` would only meet it if an interrupt hit that retry).
        """
        for _ in range(100):
            candidate = self.path.parent / (
                f".{self.path.stem}.{secrets.token_hex(8)}{self.path.suffix}")
            self._tmp_path = candidate
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._tmp_path = None
                continue
            os.close(fd)
            return candidate
        raise VideoWriteError(f"no free temporary name beside {self.path}")

    def write(self, frame: np.ndarray) -> None:
        """Append ``frame`` (BGR ``uint8 (H, W, 3)``). A video has one frame size, the first
        frame's: a frame of another size is scaled to fit it, letterboxed in black (OpenCV
        would drop it without an error).

        Raises:
            ValueError: not a non-empty BGR uint8 frame.
            VideoWriteError: no codec for the suffix works (the temporary file is removed).
        """
        require_bgr_frame(frame, "a video frame")
        height, width = frame.shape[:2]
        if self._writer is None:
            self._open(width, height)
            self._size = (width, height)
        elif (width, height) != self._size:  # the SDK's own letterbox, on black
            frame = resize_to_input(frame, PreprocessConfig(self._size, resize="letterbox",
                                                            pad_value=0.0))[0]
        assert self._writer is not None
        self._writer.write(frame)
        self.frames += 1

    def finish(self) -> Path | None:
        """Close the file and move it to ``path``; None (and no file) if no frame was written.

        Raises:
            VideoWriteError: with ``verify``, OpenCV reads back fewer or more frames than were
                written (the temporary file is removed, ``path`` untouched).
        """
        if self._writer is None or self._tmp_path is None:
            return None
        self._writer.release()
        self._writer = None
        if self.verify:
            written = count_video_frames(self._tmp_path)
            if written != self.frames:
                self.discard()
                raise VideoWriteError(
                    f"{self.path}: wrote {self.frames} frames but OpenCV reads back {written} "
                    f"(codec {self.codec!r})"
                )
        # The temporary file was made 0600; give it the permissions a plain open() would have.
        self._tmp_path.chmod(0o666 & ~current_umask())
        # On disk before the rename, as atomic_open does: after a power cut the name must not
        # point at a file whose data never reached the disk.
        with open(self._tmp_path, "r+b") as written_file:  # (Windows syncs writable ones)
            os.fsync(written_file.fileno())
        os.replace(self._tmp_path, self.path)
        self._tmp_path = None
        return self.path

    def discard(self) -> None:
        """Close and delete the temporary file; ``path`` is left as it was. Idempotent."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp_path.unlink()
            self._tmp_path = None
