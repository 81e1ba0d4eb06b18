"""Helpers for the apps' tests: paths, a fake camera, a writer that streams video into a FIFO."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "apps"
WEBCAM_PY = APPS / "webcam.py"

FIFO_SIZE = (64, 48)  # width, height of the frames a FifoFeeder writes
FIFO_FPS = 25


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def frame_number(frame: np.ndarray) -> int:
    """The number a FakeLiveSource wrote into pixels (0, 0) and (0, 1)."""
    return int(frame[0, 0, 0]) * 256 + int(frame[0, 1, 0])


class FakeLiveSource:
    """A camera delivering frames numbered in pixels (0, 0) and (0, 1) every ``period_s``,
    that fails (raises capture's ``SourceError``) or stalls after some frames."""

    live = True
    fps = 30.0
    description = "fake camera"

    def __init__(self, capture, period_s: float = 0.001, fail_after: int | None = None,
                 stall_after: int | None = None) -> None:
        self.error = capture.SourceError
        self.period_s, self.fail_after, self.stall_after = period_s, fail_after, stall_after
        self.produced = 0
        self.closed = threading.Event()

    def read(self, stop: threading.Event) -> np.ndarray | None:
        if self.fail_after is not None and self.produced >= self.fail_after:
            raise self.error("fake camera stopped delivering frames")
        if self.stall_after is not None and self.produced >= self.stall_after:
            stop.wait(60)  # a read that hangs inside the driver
            return None
        time.sleep(self.period_s)
        frame = np.full((48, 64, 3), 128, np.uint8)
        frame[0, 0, 0], frame[0, 1, 0] = divmod(self.produced, 256)
        self.produced += 1
        return frame

    def close(self) -> None:
        self.closed.set()


class FifoFeeder(threading.Thread):
    """Writes a YUV4MPEG2 video into the FIFO ``path``, as a camera pipeline would.

    Writes ``frames`` frames (None: until stopped), one per ``period_s``, pausing after
    ``pause_after`` frames until ``resume`` is set; then ``then``: "close" its end of the pipe
    (the writer died) or "hold" it open without writing (the writer hangs) until ``stop``.
    A reader that goes away ends it (BrokenPipeError). Frame i is gray level 16 + i % 200.
    """

    def __init__(self, path: Path, frames: int | None = None, period_s: float = 0.01,
                 then: str = "close", pause_after: int | None = None) -> None:
        super().__init__(name="fifo-feeder", daemon=True)
        self.path, self.frames, self.period_s, self.then = path, frames, period_s, then
        self.pause_after = pause_after
        self.written = 0
        self.resume = threading.Event()
        self.finished_writing = threading.Event()  # all frames written (or the reader left)
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the pipe
        except OSError:
            return
        width, height = FIFO_SIZE
        try:
            os.write(fd, f"YUV4MPEG2 W{width} H{height} F{FIFO_FPS}:1 Ip A1:1 C420jpeg\n".encode())
            while self.frames is None or self.written < self.frames:
                if self.written == self.pause_after:
                    self.resume.wait()
                if self._stop_event.wait(self.period_s):
                    break
                gray = np.full((height, width, 3), 16 + self.written % 200, np.uint8)
                os.write(fd, b"FRAME\n" + cv2.cvtColor(gray, cv2.COLOR_BGR2YUV_I420).tobytes())
                self.written += 1
            self.finished_writing.set()
            if self.then == "hold":
                self._stop_event.wait()
        except BrokenPipeError:  # the reader went away
            self.finished_writing.set()
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stop_event.set()
        self.resume.set()
        # A writer still blocked in open() (no reader came): a reader that comes and goes
        # lets it return, and its first write then fails (EPIPE).
        with contextlib.suppress(OSError):
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
        self.join(10)


def write_gray_images(folder: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    """``folder`` with one flat gray image per ``{file name: (height, width)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        cv2.imwrite(str(folder / name), np.full((*size, 3), 30, np.uint8))
    return folder
