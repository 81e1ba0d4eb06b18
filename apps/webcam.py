"""Camera demo: run an edgedet detector on a camera, stream, video, FIFO, folder or demo video.

    python apps/webcam.py                          # camera 0, or the demo video if none opens
    python apps/webcam.py --source demo --headless --save out.mp4
    python apps/webcam.py --source rtsp://host/stream --model path/to/artifact
    python apps/webcam.py --source /tmp/cam.fifo   # a named pipe another process writes into
    python apps/webcam.py --source csi://0         # a Jetson CSI camera (OpenCV with GStreamer)
    python apps/webcam.py --source "csi://0?width=1920&height=1080&fps=30&flip=2"
    python apps/webcam.py --source demo --track    # ids that follow objects (edgedet[track])

Boxes, labels and FPS are drawn on every frame; q or Esc closes the window, Ctrl-C stops any
run. Without a GUI (opencv-python-headless, or no display) the app runs headless: it prints
progress and, with --save, writes the annotated video (to a temporary file, renamed when
done).

Capture (sources, the capture thread, reconnects) lives in the sibling module ``capture.py``
(its ``open_source`` is the spec parsing of ``sources.py``): for live sources the latest frame
wins, files are processed frame by frame, and a source that fails gives a message, never a
hang: a live source that stalls (no frame for a few seconds) or ends is reconnected with
backoff, then given up (exit status 1, the recording kept). The per-frame detect/track/draw
step and the options shared with ``web_viewer.py`` are the sibling ``pipeline.py``; this file
is the CLI and the show/save loop.

Uses only the public edgedet API (``edgedet.Detector``, ``edgedet.draw``, ``edgedet.track``,
``edgedet.video``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import cv2
import numpy as np

from edgedet import FrameError
from edgedet._io import error_text
from edgedet.cli_common import path_argument
from edgedet.video import AtomicVideoWriter, save_video_problem

# isort: split
# Sibling modules, not a package: run as a script, this file's folder is on sys.path.
import capture
from capture import DEMO_FPS, FrameGrabber, SourceError, log, open_source
from pipeline import (
    FrameStep,
    add_common_arguments,
    check_common_arguments,
    interruptible,
    load_detector,
    make_tracker,
    run_as_script,
    skip_unusable_image,
)

# capture's messages (retries, reconnects, the demo fallback) read as this app's own.
capture.LOG_PREFIX = "webcam"

WINDOW_NAME = "edgedet"
PROGRESS_EVERY_FRAMES = 50
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # 27: Esc


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


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
    add_common_arguments(parser)
    parser.add_argument("--headless", action="store_true",
                        help="no window (automatic when OpenCV has no GUI or there is no "
                        "display)")
    parser.add_argument("--save", type=path_argument, metavar="OUT.mp4",
                        help="write the annotated video (.mp4 or .avi)")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.save is not None and (
            problem := save_video_problem(args.save, capture.local_source_path(args.source))):
        parser.error(problem)
    return args


def run(args: argparse.Namespace) -> int:
    """The app; returns the exit status (0 done, 1 error, 130 interrupted)."""
    try:
        detector = load_detector(args)
        tracker = make_tracker(args)
        source = open_source(args.source)
    # a bad model / backend / source, or --track without the track extra
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        log(f"error: {error_text(exc)}")
        return 1
    show = not args.headless and open_window()
    if not show and not args.headless:
        log("no GUI available (opencv-python-headless or no display): running headless")
    writer = AtomicVideoWriter(args.save, source.fps or DEMO_FPS) if args.save else None
    grabber = FrameGrabber(source)
    log(f"{detector!r} on {source.description}" + (", tracking" if tracker else "")
        + (f", saving to {args.save}" if writer else ""))
    grabber.start()
    step = FrameStep(detector, tracker)
    latencies_s: list[float] = []
    status = 0
    started = time.perf_counter()
    try:
        while args.max_frames is None or len(latencies_s) < args.max_frames:
            frame = grabber.get()  # bounded: a dead source raises SourceError
            if frame is None:
                break
            try:
                result = step(frame)
            except FrameError as exc:
                skip_unusable_image(source, frame, exc)
                continue
            latencies_s.append(result.detect_s)
            fps, canvas = result.fps, result.canvas
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
    # source given up, the video cannot be written, or a model whose outputs do not fit
    except (SourceError, OSError, ValueError) as exc:
        log(f"error: {error_text(exc)}")
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
    if not latencies_s and status == 0:  # e.g. a folder of unreadable images
        log(f"error: no frame could be read from {source.description}")
        status = 1
    if latencies_s:
        log(f"{len(latencies_s)} frames in {elapsed:.1f} s ({len(latencies_s) / elapsed:.1f} FPS),"
            f" detect p50 {np.percentile(latencies_s, 50) * 1000:.1f} ms"
            + (f", {grabber.dropped} stale frames dropped" if source.live else ""))
    if saved is not None:
        log(f"saved {saved}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return interruptible(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    run_as_script(main)
