"""Frame capture for the camera apps: open a source, read it in a thread, survive its failures.

Sources: a camera index, a Jetson CSI camera (``csi://0``, through GStreamer), an RTSP/HTTP
stream URL, a video file, a named pipe (FIFO) given as a path or a ``file://`` URL, a folder of
images (or one image), or the built-in demo video (rendered once into the cache). With no
source given, camera 0 is used if it delivers a frame, else the demo video. ``open_source``
and the rest of the spec parsing live in the sibling ``sources.py`` and are re-exported here;
this file holds the settings, the frame sources and the capture thread.

``FrameGrabber`` reads a source in its own thread. For live sources (cameras, streams, FIFOs)
the latest frame wins: frames that arrive while the consumer is busy are dropped, so the
picture never lags behind. Files (videos, image folders) are delivered frame by frame, none
skipped. Every wait is bounded (``READ_TIMEOUT_S``); a live source that stalls or ends is
reconnected with backoff, then given up with a ``SourceError``.

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

# sources.demo_video calls it through this module (capture.render_synthetic_video), like all of
# capture's names, so that a test or app replaces it here.
from edgedet.data.synthetic_video import render_synthetic_video as render_synthetic_video
from edgedet.image_io import ImageReadError, quiet_opencv, read_image
from edgedet.video import declared_frame_count, early_end_problem

# isort: split
# A sibling module, not a package (see above). It uses this module's names when called, never
# while loading, so it can be imported from here, before they exist.
from sources import CSI_RANGES as CSI_RANGES
from sources import CsiCamera as CsiCamera
from sources import cache_dir as cache_dir
from sources import demo_video as demo_video
from sources import demo_video_path as demo_video_path
from sources import file_url_path as file_url_path
from sources import gstreamer_available as gstreamer_available
from sources import local_source_path as local_source_path
from sources import open_camera_or_demo as open_camera_or_demo
from sources import open_csi_camera as open_csi_camera
from sources import open_source as open_source
from sources import parse_csi as parse_csi

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# The demo video: rendered once (a few seconds) into the cache, then reused.
DEMO_FRAMES = 300
DEMO_SEED = 0
DEMO_FPS = 25.0

# No frame for READ_TIMEOUT_S: stalled. 5 s is several frame intervals of a slow (1 fps) camera
# and more than a stream's usual keyframe interval (1-4 s), yet notices a dead source quickly.
READ_TIMEOUT_S = 5.0
# Opening a live source and getting its first frame: FFmpeg probes up to 5 s of a stream
# (its analyzeduration) before open() returns, and a FIFO waits here for its writer.
OPEN_TIMEOUT_S = 10.0
# A stalled or ended live source is reconnected after 1, 2, 4 s (doubling, at most the cap),
# then given up: with the timeouts above, about 30 s after its last frame.
RECONNECT_ATTEMPTS = 3
RECONNECT_BASE_DELAY_S = 1.0
RECONNECT_MAX_DELAY_S = 8.0
# How often a waiting thread checks whether it was asked to stop.
POLL_S = 0.1
# How long closing a live source waits for its reader thread to leave OpenCV: a thread that
# returns into OpenCV while Python shuts down aborts the process ("FATAL: exception not
# rethrown", exit 134). A source that delivers frames returns from read() within one frame.
CLOSE_WAIT_S = 2.0

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
    live: bool  # a camera, stream or FIFO: drop stale frames, reconnect on loss
    fps: float | None

    def read(self, stop: threading.Event) -> np.ndarray | None:
        """The next BGR frame, or None at the end of a file (or when ``stop`` is set)."""
        ...

    def close(self) -> None: ...


def log(message: str) -> None:
    """Print ``[LOG_PREFIX] message`` to stderr at once (progress, retries, fallbacks)."""
    print(f"[{LOG_PREFIX}] {message}", file=sys.stderr, flush=True)


def backoff_delays(tries: int, base_s: float, cap_s: float) -> list[float]:
    """The waits before each of ``tries`` reconnect attempts: base, 2 base, 4 base, ... <= cap."""
    if tries < 0 or base_s < 0 or cap_s < 0:
        raise ValueError(f"backoff needs tries, base and cap >= 0, got {tries}, {base_s}, {cap_s}")
    # Doubling the capped delay (not base * 2**i) cannot overflow a float for huge ``tries``.
    delays, delay = [], base_s
    for _ in range(tries):
        delays.append(min(delay, cap_s))
        delay = min(delay * 2, cap_s)
    return delays


def frame_wait_timeout(live: bool) -> float:
    """How long the consumer waits for a frame: ``READ_TIMEOUT_S`` for a file; for a live
    source (which bounds its own waits) a backstop: its whole reconnect schedule plus a read."""
    if not live:
        return READ_TIMEOUT_S
    delays = backoff_delays(RECONNECT_ATTEMPTS, RECONNECT_BASE_DELAY_S, RECONNECT_MAX_DELAY_S)
    return 2 * READ_TIMEOUT_S + sum(delays) + RECONNECT_ATTEMPTS * OPEN_TIMEOUT_S


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

# What a connection delivers besides frames.
_ENDED = object()  # read() failed: the stream ended, the camera went away, the writer closed
_FAILED = object()  # open() failed
_STALLED = object()  # nothing within the deadline (a wait's outcome, never queued)


class _Connection(threading.Thread):
    """One ``cv2.VideoCapture`` of a live source, opened and read in this daemon thread.

    OpenCV's open() and read() cannot be interrupted and may block for good: a FIFO waits for
    a writer to open it, a read waits on a writer that stopped writing but keeps the pipe open,
    a camera driver or stream server may hang. So they run here and the owner waits on
    ``next`` with a deadline. The capture is released by this thread, when its call returns.
    """

    def __init__(self, open_capture: Callable[[], cv2.VideoCapture],
                 fifo_path: str | None) -> None:
        super().__init__(name="capture-connection", daemon=True)
        self._open_capture = open_capture
        self._fifo_path = fifo_path
        self._items: queue.Queue[object] = queue.Queue(maxsize=1)  # latest-wins: FrameGrabber
        self._closed = threading.Event()
        self._opening = True
        self.done = threading.Event()  # set before the last item (_ENDED or _FAILED)
        self.fps: float | None = None
        self.start()

    def run(self) -> None:
        capture = None
        with contextlib.suppress(cv2.error):  # e.g. a URL no backend understands
            capture = self._open_capture()
        self._opening = False
        if capture is None or not capture.isOpened():
            self.done.set()
            self._put(_FAILED)
            return
        try:
            reported_fps = capture.get(cv2.CAP_PROP_FPS)
            self.fps = reported_fps if 0 < reported_fps < 1000 else None
            while not self._closed.is_set():
                ok, frame = capture.read()
                if not ok:
                    self.done.set()
                    self._put(_ENDED)
                    return
                self._put(frame)
        finally:
            capture.release()

    def _put(self, item: object) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(queue.Full):
                self._items.put(item, timeout=POLL_S)
                return

    def next(self, timeout_s: float, stop: threading.Event) -> object:
        """A frame, ``_ENDED``, ``_FAILED``, ``_STALLED`` after ``timeout_s``, or None on stop."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _STALLED
            with contextlib.suppress(queue.Empty):
                return self._items.get(timeout=min(remaining, POLL_S))
        return None

    def close(self) -> None:
        """Stop reading; wait (``CLOSE_WAIT_S`` at most) for OpenCV's current call to return."""
        self._closed.set()
        if not (self._opening and self._fifo_path is not None):
            self.join(CLOSE_WAIT_S)
            return
        with quiet_opencv():  # its warnings about the open made to fail say nothing new
            _wake_fifo_reader(self._fifo_path)
            self.join(CLOSE_WAIT_S)


def _wake_fifo_reader(path: str) -> None:
    """Make an open() blocked on the FIFO ``path`` return (a writer comes and goes: OpenCV
    sees end-of-file and fails), so that no forgotten reader takes a later writer's data."""
    # ENXIO: no reader is waiting after all. O_NONBLOCK: never wait here.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | getattr(os, "O_NONBLOCK", 0)))


class LiveSource:
    """A camera, stream or FIFO through ``cv2.VideoCapture``, with every wait bounded.

    ``kind`` is "camera" (``target``: its index), "CSI camera" (a GStreamer pipeline, see
    ``sources.CsiCamera``), "stream" (a URL) or "FIFO" (a path); ``description`` names the
    source in messages (default: kind and target). A source that stalls (no frame for
    ``READ_TIMEOUT_S``) or ends is reconnected after each of ``backoff_delays``, then given up
    with a ``SourceError``. CSI cameras, streams and FIFOs that do not open are retried the
    same way; a camera is not (the camera-or-demo fallback wants a quick answer).

    Raises:
        SourceError: the source cannot be opened or delivers no first frame.
    """

    live = True

    def __init__(self, target: int | str, kind: str, description: str | None = None) -> None:
        self.target = target
        self.kind = kind
        self.description = description or f"{kind} {target}"
        self._connection = self._connect()
        tries = 0 if kind == "camera" else RECONNECT_ATTEMPTS
        # The first frame proves the source works; it is handed out by the first read. Waiting
        # in slices (not inside OpenCV) keeps Ctrl-C working while a source is opened.
        try:
            self._first: np.ndarray | None = self._wait(threading.Event(), OPEN_TIMEOUT_S,
                                                        tries, opening=True)
        except BaseException:  # SourceError or Ctrl-C: no thread left waiting on a FIFO
            self._connection.close()
            raise
        self.fps = self._connection.fps

    def _open_capture(self) -> cv2.VideoCapture:
        if self.kind == "stream":
            # FFmpeg's own timeouts end a call blocked on a dead server, so that the
            # connection's thread ends too (the deadlines in ``_wait`` hold either way).
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(OPEN_TIMEOUT_S * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(READ_TIMEOUT_S * 1000)]
            return cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
        if self.kind == "FIFO":
            # Only FFmpeg reads a pipe (the others seek); CAP_ANY would try the others too,
            # each one blocking in open() again until a writer comes.
            return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG)
        if self.kind == "CSI camera":
            # A GStreamer pipeline: only GStreamer reads it (FFmpeg would take it for a file).
            return cv2.VideoCapture(self.target, cv2.CAP_GSTREAMER)
        return cv2.VideoCapture(self.target)

    def _connect(self) -> _Connection:
        return _Connection(self._open_capture, str(self.target) if self.kind == "FIFO" else None)

    def _why(self, outcome: object, timeout_s: float) -> str:
        """What went wrong, for messages."""
        if outcome is _STALLED:
            return f"no frame for {timeout_s:g} s"
        if outcome is _FAILED:
            return "cannot open it"
        return "its writer closed it" if self.kind == "FIFO" else "it ended"

    def _wait(self, stop: threading.Event, timeout_s: float, tries: int,
              opening: bool = False) -> np.ndarray | None:
        """The next frame within ``timeout_s``, else after up to ``tries`` reconnects; None
        when ``stop`` is set.

        Raises:
            SourceError: no frame after the last attempt.
        """
        delays = backoff_delays(tries, RECONNECT_BASE_DELAY_S, RECONNECT_MAX_DELAY_S)
        started = time.monotonic()
        first_reason = reason = ""
        for attempt in range(tries + 1):
            if attempt:
                action = "retrying" if opening else "reconnecting"
                log(f"{self.description}: {reason}; {action} in {delays[attempt - 1]:g} s "
                    f"({attempt}/{tries})")
                if stop.wait(delays[attempt - 1]):
                    return None
                # A connection still blocked inside OpenCV (a FIFO waiting for a writer, a read
                # that may yet return) is kept and waited on for a frame: a second open would
                # compete with it for the camera or the pipe's data. A new one gets time to open.
                timeout_s = READ_TIMEOUT_S
                if self._connection.done.is_set():
                    self._connection.close()
                    self._connection = self._connect()
                    timeout_s = OPEN_TIMEOUT_S
            outcome = self._connection.next(timeout_s, stop)
            if outcome is None:
                return None
            if isinstance(outcome, np.ndarray):
                if attempt and not opening:
                    log(f"{self.description} delivers frames again")
                return outcome
            reason = self._why(outcome, timeout_s)
            first_reason = first_reason or reason
        elapsed = f"{time.monotonic() - started:.0f} s"
        if opening:
            why = "" if outcome is _FAILED else f": {reason}"
            retried = f" (retried {tries} time{'s' * (tries > 1)} over {elapsed})" if tries else ""
            raise SourceError(f"cannot open {self.description}{why}{retried}")
        gave_up = (f"; gave up after {tries} reconnect attempt{'s' * (tries > 1)} over "
                   f"{elapsed} (last: {reason})") if tries else ""
        raise SourceError(f"lost {self.description}: {first_reason}{gave_up}")

    def read(self, stop: threading.Event) -> np.ndarray | None:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._wait(stop, READ_TIMEOUT_S, RECONNECT_ATTEMPTS)

    def close(self) -> None:
        self._connection.close()


class VideoFileSource:
    """A video file through ``cv2.VideoCapture``, read in the caller's thread (a file's reads
    do not wait on anyone; the consumer's ``READ_TIMEOUT_S`` covers a hung disk)."""

    live = False

    def __init__(self, path: str | os.PathLike[str], description: str) -> None:
        self.description = description
        self._capture = cv2.VideoCapture(str(path))
        if not self._capture.isOpened():
            raise SourceError(f"cannot open {description}")
        reported_fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = reported_fps if 0 < reported_fps < 1000 else None
        self._declared_frames = declared_frame_count(self._capture, path)
        self._frames_read = 0

    def read(self, stop: threading.Event) -> np.ndarray | None:
        """The next frame; None at the end of the file.

        Raises:
            SourceError: the reads stopped well before the frame count the file declares.
        """
        ok, frame = self._capture.read()
        if not ok:
            problem = early_end_problem(self.description, self._frames_read,
                                        self._declared_frames)
            if problem is not None:
                raise SourceError(problem)
            return None
        self._frames_read += 1
        return frame

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

    @property
    def count(self) -> int:
        """How many images the source plays."""
        return len(self._paths)

    def read(self, stop: threading.Event) -> np.ndarray | None:
        while self._next < len(self._paths) and not stop.is_set():
            path = self._paths[self._next]
            self._next += 1
            try:  # the SDK's reader: also refuses truncated files, naming the problem
                return read_image(path)
            except ImageReadError as exc:
                log(f"skipping unreadable image: {exc}")
        return None

    def close(self) -> None:
        pass


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
                self._frames.put(item, timeout=POLL_S)
                return

    def get(self, timeout_s: float | None = None) -> np.ndarray | None:
        """The next frame, or None at the end of the source; ``timeout_s`` defaults to
        ``frame_wait_timeout`` for the source.

        Raises:
            SourceError: the source failed, or no frame came within ``timeout_s``.
        """
        if timeout_s is None:
            timeout_s = frame_wait_timeout(self.source.live)
        try:
            item = self._frames.get(timeout=timeout_s)
        except queue.Empty:
            raise SourceError(f"no frame from {self.source.description} within "
                              f"{timeout_s:g} s; giving up") from None
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
