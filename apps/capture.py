"""Frame capture for the camera apps: open a source, read it in a thread, survive its failures.

Sources (``open_source``): a camera index, an RTSP/HTTP stream URL, a video file, a folder of
images (or one image), or the built-in demo video (rendered once into the cache). With no
source given, camera 0 is used if it delivers a frame, else the demo video.

``FrameGrabber`` reads a source in its own thread. For live sources (cameras, streams) the
latest frame wins: frames that arrive while the consumer is busy are dropped, so the picture
never lags behind. Files (videos, image folders) are delivered frame by frame, none skipped. A
source that fails gives a ``SourceError``, never a hang: reads have timeouts, and streams get a
few reconnect attempts.

apps/ is not a package: an app next to this file imports it as ``import capture`` (a script's
own folder is on ``sys.path``). Uses only the public edgedet API
(``edgedet.data.synthetic_video`` for the demo video).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edgedet.data.synthetic_video import render_synthetic_video

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# The demo video: rendered once (a few seconds) into the cache, then reused.
DEMO_FRAMES = 300
DEMO_SEED = 0
DEMO_FPS = 25.0

# How long opening a source or reading one frame may block, and the stream reconnect policy.
READ_TIMEOUT_S = 10.0
RECONNECT_ATTEMPTS = 3
RECONNECT_DELAY_S = 1.0

# Frames buffered between capture and detection for files (live sources keep only the latest).
FILE_QUEUE_FRAMES = 4

# The "[name]" that starts every message printed to stderr; the importing app sets its own
# name so that capture's messages (retries, reconnects, fallbacks) read like the app's.
LOG_PREFIX = "capture"


class SourceError(RuntimeError):
    """A source that cannot be opened or stopped delivering frames."""


class FrameSource(Protocol):
    """Where frames come from; ``read`` runs in the capture thread only."""

    description: str
    live: bool  # a camera or stream: drop stale frames, reconnect on loss
    fps: float | None

    def read(self, stop: threading.Event) -> np.ndarray | None:
        """The next BGR frame, or None at the end of a file (or when ``stop`` is set)."""
        ...

    def close(self) -> None: ...


def log(message: str) -> None:
    """Print ``[LOG_PREFIX] message`` to stderr at once (progress, retries, fallbacks)."""
    print(f"[{LOG_PREFIX}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


class VideoCaptureSource:
    """A camera index, stream URL or video file through ``cv2.VideoCapture``."""

    def __init__(self, target: int | str, live: bool, description: str) -> None:
        self.target = target
        self.live = live
        self.description = description
        attempts = RECONNECT_ATTEMPTS if isinstance(target, str) and live else 0
        self._capture = self._open()
        for attempt in range(1, attempts + 1):
            if self._capture.isOpened():
                break
            log(f"cannot open {description}; retrying ({attempt}/{attempts})")
            time.sleep(RECONNECT_DELAY_S)
            self._capture = self._open()
        if not self._capture.isOpened():
            raise SourceError(f"cannot open {description}")
        reported_fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = reported_fps if 0 < reported_fps < 1000 else None

    def _open(self) -> cv2.VideoCapture:
        timeout_ms = int(READ_TIMEOUT_S * 1000)
        # Without these a dead RTSP server blocks open() / read() for minutes (FFmpeg backend).
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        return cv2.VideoCapture(self.target, cv2.CAP_ANY, params)

    def read(self, stop: threading.Event) -> np.ndarray | None:
        ok, frame = self._capture.read()
        if ok:
            return frame
        if not self.live:
            return None  # end of the file
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            log(f"lost {self.description}; reconnecting ({attempt}/{RECONNECT_ATTEMPTS})")
            if stop.wait(RECONNECT_DELAY_S):
                return None
            self._capture.release()
            self._capture = self._open()
            if self._capture.isOpened():
                ok, frame = self._capture.read()
                if ok:
                    log(f"reconnected to {self.description}")
                    return frame
        raise SourceError(f"{self.description} stopped delivering frames "
                          f"(gave up after {RECONNECT_ATTEMPTS} reconnect attempts)")

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource:
    """The images of a folder in name order (or one image file)."""

    live = False
    fps: float | None = None

    def __init__(self, paths: Sequence[Path], description: str) -> None:
        if not paths:
            raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {description}")
        self._paths = list(paths)
        self._next = 0
        self.description = description

    def read(self, stop: threading.Event) -> np.ndarray | None:
        while self._next < len(self._paths) and not stop.is_set():
            path = self._paths[self._next]
            self._next += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            log(f"skipping unreadable image {path}")
        return None

    def close(self) -> None:
        pass


def cache_dir() -> Path:
    """``$EDGEDET_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgedet``, else ``~/.cache/edgedet``."""
    if os.environ.get("EDGEDET_CACHE_DIR"):
        return Path(os.environ["EDGEDET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgedet"


def demo_video() -> Path:
    """The built-in demo video, rendered into the cache on first use."""
    path = cache_dir() / f"demo_seed{DEMO_SEED}_{DEMO_FRAMES}frames.mp4"
    if not path.is_file():
        log(f"rendering the demo video once ({DEMO_FRAMES} frames) into {path}")
        render_synthetic_video(path, num_frames=DEMO_FRAMES, seed=DEMO_SEED, fps=DEMO_FPS,
                               progress=False)
    return path


def open_camera_or_demo() -> FrameSource:
    """Camera 0 if one opens and delivers a frame; otherwise the demo video."""
    # OpenCV logs a warning per backend it tries for a missing camera; the fallback says it all.
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        camera = VideoCaptureSource(0, live=True, description="camera 0")
    except SourceError:
        camera = None
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if camera is not None:
        return camera
    log("no camera found: running on the built-in demo video")
    return VideoCaptureSource(str(demo_video()), live=False, description="the demo video")


def open_source(spec: str | None) -> FrameSource:
    """``--source``: None (camera 0, else demo), ``demo``, a camera index, a stream URL, a
    folder of images, an image or a video file.

    Raises:
        SourceError: the source does not exist or cannot be opened.
    """
    if spec is None:
        return open_camera_or_demo()
    if spec == "demo":
        return VideoCaptureSource(str(demo_video()), live=False, description="the demo video")
    if spec.isdigit():
        return VideoCaptureSource(int(spec), live=True, description=f"camera {spec}")
    if "://" in spec:
        return VideoCaptureSource(spec, live=True, description=f"stream {spec}")
    path = Path(spec)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return ImageFolderSource(images, f"folder {path}")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFolderSource([path], f"image {path}")
        return VideoCaptureSource(str(path), live=False, description=f"video {path}")
    raise SourceError(f"source {spec!r} not found: give a camera index (0), a stream URL "
                      "(rtsp://...), a video file, a folder of images, or 'demo'")


# ---------------------------------------------------------------------------------------------
# Capture thread
# ---------------------------------------------------------------------------------------------

_END = object()  # the capture thread's "no more frames" marker


class FrameGrabber(threading.Thread):
    """Reads ``source`` in its own thread and hands frames to ``get``.

    Live sources keep a queue of one: a new frame replaces one not yet taken (counted in
    ``dropped``). File sources block the reader until the consumer takes each frame. The
    thread is a daemon, so a read stuck inside OpenCV can never keep the process alive.
    """

    def __init__(self, source: FrameSource) -> None:
        super().__init__(name="frame-grabber", daemon=True)
        self.source = source
        self.dropped = 0
        self._frames: queue.Queue[object] = queue.Queue(
            maxsize=1 if source.live else FILE_QUEUE_FRAMES)
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                frame = self.source.read(self._stop_event)
                if frame is None:
                    self._put(_END)
                    return
                self._put(frame)
        except Exception as exc:  # handed to the consumer, which reports it
            self._put(exc)
        finally:
            self.source.close()

    def _put(self, item: object) -> None:
        if self.source.live:
            with contextlib.suppress(queue.Empty):
                self._frames.get_nowait()  # the stale frame nobody took yet
                self.dropped += 1
            self._frames.put_nowait(item)  # we are the only producer: there is room now
            return
        while not self._stop_event.is_set():
            with contextlib.suppress(queue.Full):
                self._frames.put(item, timeout=0.1)
                return

    def get(self, timeout_s: float) -> np.ndarray | None:
        """The next frame, or None at the end of the source.

        Raises:
            SourceError: the source failed, or no frame came within ``timeout_s``.
        """
        try:
            item = self._frames.get(timeout=timeout_s)
        except queue.Empty:
            raise SourceError(f"no frame from {self.source.description} within "
                              f"{timeout_s:.0f} s; giving up") from None
        if item is _END:
            return None
        if isinstance(item, Exception):
            if isinstance(item, SourceError):
                raise item
            raise SourceError(f"reading {self.source.description} failed: {item}") from item
        return item  # type: ignore[return-value]

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop_event.set()
        self.join(timeout=timeout_s)


def frame_wait_timeout() -> float:
    """How long the consumer waits for a frame: a blocked read plus every reconnect attempt."""
    return READ_TIMEOUT_S * (2 + 2 * RECONNECT_ATTEMPTS) + RECONNECT_DELAY_S * RECONNECT_ATTEMPTS
