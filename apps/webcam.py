"""Camera demo: run an edgedet detector on a camera, stream, video, folder or the demo video.

    python apps/webcam.py                          # camera 0, or the demo video if none opens
    python apps/webcam.py --source demo --headless --save out.mp4
    python apps/webcam.py --source rtsp://host/stream --model path/to/artifact

Boxes, labels and FPS are drawn on every frame; q or Esc closes the window, Ctrl-C stops any
run. Without a GUI (opencv-python-headless, or no display) the app runs headless: it prints
progress and, with --save, writes the annotated video (to a temporary file, renamed when
done).

Capture runs in its own thread. For live sources (cameras, streams) the latest frame wins:
frames that arrive while the detector is busy are dropped, so the picture never lags behind.
Files (videos, image folders) are processed frame by frame, none skipped. A source that fails
gives a message, never a hang: reads have timeouts, and streams get a few reconnect attempts.

Uses only the public edgedet API (``edgedet.Detector``, ``edgedet.draw``,
``edgedet.data.synthetic`` for the demo video).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edgedet import Detector
from edgedet.data.synthetic import render_synthetic_video
from edgedet.draw import draw_detections, draw_text_panel

DEFAULT_MODEL = "passd_mobilenet_int8"
WINDOW_NAME = "edgedet"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}

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
PROGRESS_EVERY_FRAMES = 50
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # 27: Esc
# Boxes worth showing on screen. Manifests carry the evaluation threshold (e.g. 0.05), which
# suits AP but would clutter the picture with low-confidence boxes.
DISPLAY_SCORE_THRESHOLD = 0.4


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
    print(f"[webcam] {message}", file=sys.stderr, flush=True)


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


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


class AtomicVideoWriter:
    """Writes frames to a temporary file beside ``path``; ``finish`` renames it into place."""

    def __init__(self, path: Path, fps: float) -> None:
        codec = VIDEO_CODECS.get(path.suffix.lower())
        if codec is None:
            raise ValueError(f"--save needs a {' or '.join(VIDEO_CODECS)} file, got {path}")
        self.path = path
        self.fps = fps
        self.frames = 0
        self._codec = codec
        self._writer: cv2.VideoWriter | None = None
        self._tmp_path: Path | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The temporary name keeps the extension: OpenCV picks the container from it.
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.stem}.",
                                            suffix=self.path.suffix, dir=self.path.parent)
            os.close(fd)
            self._tmp_path = Path(tmp_name)
            height, width = frame.shape[:2]
            self._writer = cv2.VideoWriter(tmp_name, cv2.VideoWriter_fourcc(*self._codec),
                                           self.fps, (width, height))
            if not self._writer.isOpened():
                self.discard()
                raise OSError(f"OpenCV cannot write {self.path} (codec {self._codec!r} "
                              "missing from this build)")
        self._writer.write(frame)
        self.frames += 1

    def finish(self) -> Path | None:
        """Close and move the video into place; None if no frame was written."""
        if self._writer is None or self._tmp_path is None:
            return None
        self._writer.release()
        self._writer = None
        # mkstemp made the file 0600; give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        self._tmp_path.chmod(0o666 & ~umask)
        os.replace(self._tmp_path, self.path)
        self._tmp_path = None
        return self.path

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp_path.unlink()
            self._tmp_path = None


class FpsMeter:
    """Frames per second over the last ``window`` frames."""

    def __init__(self, window: int = 30) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=window)

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)


def open_window() -> bool:
    """Open the display window; False when OpenCV has no GUI or there is no display."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
    except cv2.error:  # opencv-python-headless: "The function is not implemented"
        return False
    return True


def is_quit_key(key: int) -> bool:
    """q, Q or Esc (``key`` as returned by ``cv2.waitKey``; -1 when none was pressed)."""
    return key >= 0 and (key & 0xFF) in QUIT_KEYS


def window_closed() -> bool:
    try:
        return cv2.getWindowProperty(WINDOW_NAME, cv2.WND_PROP_VISIBLE) < 1
    except cv2.error:
        return True


# ---------------------------------------------------------------------------------------------
# Main loop
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run an edgedet detector on a camera, stream, video, image folder or the "
        "built-in demo video, drawing boxes, labels and FPS. q / Esc / Ctrl-C quit.")
    parser.add_argument("--source", default=None,
                        help="0 (camera index), a video file, rtsp://... / http://... stream, "
                        "a folder of images, or 'demo' (default: camera 0, else the demo video)")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="zoo model name or artifact directory (default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino"),
                        help="inference runtime (default: the artifact's own)")
    parser.add_argument("--headless", action="store_true",
                        help="no window (automatic when OpenCV has no GUI or there is no "
                        "display)")
    parser.add_argument("--save", type=Path, metavar="OUT.mp4",
                        help="write the annotated video (.mp4 or .avi)")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames")
    parser.add_argument("--score-threshold", type=float, default=DISPLAY_SCORE_THRESHOLD,
                        help="minimum score to draw (default: %(default)s; the manifest's own "
                        "threshold is the low one used for measuring AP)")
    args = parser.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be >= 1")
    if args.save is not None and args.save.suffix.lower() not in VIDEO_CODECS:
        parser.error(f"--save needs a {' or '.join(VIDEO_CODECS)} file, got {args.save}")
    return args


def run(args: argparse.Namespace) -> int:
    """The app; returns the exit status (0 done, 1 error, 130 interrupted)."""
    try:
        detector = Detector(args.model, backend=args.backend, score_threshold=args.score_threshold)
        source = open_source(args.source)
    except (ValueError, RuntimeError, OSError) as exc:  # bad model / backend / source
        log(f"error: {exc}")
        return 1
    show = not args.headless and open_window()
    if not show and not args.headless:
        log("no GUI available (opencv-python-headless or no display): running headless")
    writer = AtomicVideoWriter(args.save, source.fps or DEMO_FPS) if args.save else None
    grabber = FrameGrabber(source)
    log(f"{detector!r} on {source.description}" + (f", saving to {args.save}" if writer else ""))
    grabber.start()
    fps_meter = FpsMeter()
    latencies_s: list[float] = []
    status = 0
    started = time.perf_counter()
    try:
        while args.max_frames is None or len(latencies_s) < args.max_frames:
            frame = grabber.get(frame_wait_timeout())
            if frame is None:
                break
            detect_start = time.perf_counter()
            detections = detector.detect(frame)
            latencies_s.append(time.perf_counter() - detect_start)
            fps = fps_meter.tick()
            canvas = draw_text_panel(draw_detections(frame, detections), [
                f"{detector.name} ({detector.backend_name})",
                f"{fps:.1f} FPS",
                f"{len(detections)} objects",
            ])
            if writer is not None:
                writer.write(canvas)
            if show:
                cv2.imshow(WINDOW_NAME, canvas)
                if is_quit_key(cv2.waitKey(1)) or window_closed():
                    break
            elif len(latencies_s) % PROGRESS_EVERY_FRAMES == 0:
                log(f"{len(latencies_s)} frames, {fps:.1f} FPS")
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    except (SourceError, OSError) as exc:  # source lost, or the video cannot be written
        log(f"error: {exc}")
        status = 1
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    finally:
        grabber.stop()
        if show:
            cv2.destroyAllWindows()
    # What was recorded before a quit, Ctrl-C or a lost source is a complete video: keep it.
    saved = writer.finish() if writer is not None else None
    elapsed = time.perf_counter() - started
    if latencies_s:
        log(f"{len(latencies_s)} frames in {elapsed:.1f} s ({len(latencies_s) / elapsed:.1f} FPS),"
            f" detect p50 {np.percentile(latencies_s, 50) * 1000:.1f} ms"
            + (f", {grabber.dropped} stale frames dropped" if source.live else ""))
    if saved is not None:
        log(f"saved {saved}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:  # Ctrl-C while loading the model or rendering the demo
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
