"""Browser viewer: run an edgedet detector on a camera (or any source of ``webcam.py``) and watch
the annotated video, FPS, latency, the model and a live list of detections in a web page.

    python apps/web_viewer.py                              # camera 0, else the demo video
    python apps/web_viewer.py --source demo --track        # then open http://127.0.0.1:8080/
    python apps/web_viewer.py --source csi://0 --host 0.0.0.0 --track   # a Jetson, on the LAN

For headless devices (a Jetson, a Raspberry Pi, a server): nothing to install in the browser,
nothing but aiohttp on the device (``pip install 'edgedet[web]'``; ``--track`` also needs
``edgedet[track]``). Endpoints:

    /                  the page (the video, FPS, latency, model, accuracy check, detections)
    /stream.mjpg       the annotated video as MJPEG (multipart/x-mixed-replace), for any <img>
    /snapshot.jpg      the latest annotated frame
    /api/detections    the latest frame's detections, FPS and latency (JSON)
    /api/health        200 while frames flow; 503 starting, stalled or failed (JSON says why)
    /api/info          the model: name, backend, precision, accuracy check (JSON)

A video file (or the demo) plays at most at its frame rate, once or, with ``--loop``, again
and again (tracks start afresh each time). One thread detects, tracks and draws (``pipeline.py``,
shared with ``webcam.py``) and keeps only the latest frame, as JPEG; every viewer is sent it when
a new one is made. A slow viewer gets fewer frames and never slows the detection or the other
viewers; one that leaves costs nothing. The server listens on 127.0.0.1 unless ``--host`` says
otherwise (there is no login: ``--host 0.0.0.0`` shows the camera to the network; it warns).

Capture is ``capture.py``'s, as in ``webcam.py``: a live source that stalls or ends is
reconnected, then given up. Meanwhile /api/health says "stalled" (503) and the page shows it;
once given up, "failed" (503) with the error, shown for ``--linger`` seconds, then the app exits
with status 1. At the end of a file it exits with 0 (after ``--linger``); Ctrl-C: 130.

This file is the detection thread and the CLI; the latest frame shared with the viewers
(``FrameHub``) and the aiohttp application are the sibling ``web_server.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from edgedet import Detector, FrameError
from edgedet._io import error_text

# isort: split
# Sibling modules, not a package: run as a script, this file's folder is on sys.path.
import capture
from capture import FrameGrabber, SourceError, log, open_source
from pipeline import (
    FrameStep,
    add_common_arguments,
    check_common_arguments,
    detection_records,
    interruptible,
    load_detector,
    make_tracker,
    run_as_script,
    skip_unusable_image,
)
from web_server import FrameHub, is_loopback, make_app, model_info, web

# capture's messages (retries, reconnects, the demo fallback) read as this app's own.
capture.LOG_PREFIX = "web_viewer"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
JPEG_QUALITY = 80
PROGRESS_EVERY_FRAMES = 100
# Open connections (a stream a viewer keeps reading) get this long to finish at shutdown.
SHUTDOWN_TIMEOUT_S = 2.0
# How long the detection thread gets to notice a stop before the app exits without it (it is a
# daemon: a read stuck inside OpenCV cannot keep the process alive).
WORKER_JOIN_S = 3.0


# ---------------------------------------------------------------------------------------------
# Detection thread
# ---------------------------------------------------------------------------------------------


class DetectionLoop(threading.Thread):
    """Takes frames from ``source`` (in a ``FrameGrabber``), detects, tracks and draws them
    (``step``) and publishes each to ``hub`` as JPEG, until the source ends or fails,
    ``max_frames`` frames or ``stop``. A daemon, like the grabber.

    A file source plays at most at its frame rate (when it has one), and with ``reopen``
    (--loop) is opened again at its end. Live sources are taken as they come (the latest
    frame).
    """

    def __init__(self, source: capture.FrameSource, step: FrameStep, hub: FrameHub,
                 max_frames: int | None,
                 reopen: Callable[[], capture.FrameSource] | None = None) -> None:
        super().__init__(name="detection-loop", daemon=True)
        self.step, self.hub, self.max_frames, self.reopen = step, hub, max_frames, reopen
        self.frames = 0
        self.dropped = 0  # stale live frames the grabbers replaced
        self.error: str | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()  # guards self.grabber against stop() while swapping
        self.grabber = FrameGrabber(source)

    def run(self) -> None:
        try:
            self._play()
        except SourceError as exc:  # the source given up
            self.error = str(exc)
        except Exception as exc:  # a frame the model cannot take, a backend failure: say so
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._end_grabber()
        self.hub.finish(self.error)

    def _end_grabber(self) -> None:
        """Stop the grabber (it closes its source), or close the source of one never started."""
        if self.grabber.ident is None:
            self.grabber.source.close()
            return
        self.grabber.stop()
        self.dropped += self.grabber.dropped

    def _play(self) -> None:
        with self._lock:
            if self._stop_event.is_set():
                return
            self.grabber.start()
        while self.max_frames is None or self.frames < self.max_frames:
            source = self.grabber.source
            pace_s = 1.0 / source.fps if source.fps and not source.live else 0.0
            started, played, published = time.monotonic(), 0, 0
            while self.max_frames is None or self.frames < self.max_frames:
                frame = self.grabber.get()  # bounded: a dead source raises SourceError
                if frame is None or self._stop_event.is_set():
                    break
                try:
                    self._publish(frame)
                    published += 1
                except FrameError as exc:
                    skip_unusable_image(source, frame, exc)
                played += 1
                # A file at its own pace: wait until the next frame is due.
                if self._stop_event.wait(max(0.0, started + played * pace_s - time.monotonic())):
                    return
            if frame is not None or self.reopen is None or self._stop_event.is_set():
                return
            if published == 0:  # nothing usable in a whole pass: looping would spin forever
                raise SourceError(f"no frame could be read from {source.description}")
            # --loop: the file ended; play it again from the start, with new tracks.
            self._end_grabber()
            with self._lock:
                if self._stop_event.is_set():
                    return
                self.grabber = FrameGrabber(self.reopen())
                self.grabber.start()
            self.step.reset()

    def _publish(self, frame: np.ndarray) -> None:
        result = self.step(frame)
        ok, jpeg = cv2.imencode(".jpg", result.canvas, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not encode the frame as JPEG")
        self.frames += 1
        height, width = result.canvas.shape[:2]
        self.hub.publish(jpeg.tobytes(), {
            "width": width, "height": height, "fps": round(result.fps, 2),
            "detect_ms": round(result.detect_s * 1000, 2),
            "tracking": self.step.tracker is not None,
            "detections": detection_records(result.detections),
        })
        if self.frames % PROGRESS_EVERY_FRAMES == 0:
            log(f"{self.frames} frames, {result.fps:.1f} FPS, {self.hub.viewers} viewers")

    def stop(self) -> None:
        """Ask the thread to end (from any thread); it closes its source."""
        self._stop_event.set()
        with self._lock:
            grabber = self.grabber
        if grabber.is_alive():
            grabber.stop()


async def serve(args: argparse.Namespace, detector: Detector, step: FrameStep,
                source: capture.FrameSource, stop: threading.Event | None = None) -> int:
    """Serve until the source ends or fails (then ``--linger`` more seconds), ``stop`` is set
    (from another thread) or the task is cancelled (Ctrl-C); returns the exit status."""
    loop = asyncio.get_running_loop()
    hub = FrameHub(loop)
    info = model_info(detector, source.description, step.tracker is not None)
    runner = web.AppRunner(make_app(hub, info), access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
    except OSError as exc:
        log(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        source.close()
        await runner.cleanup()
        return 1
    reopen = (lambda: open_source(args.source)) if args.loop and not source.live else None
    worker = DetectionLoop(source, step, hub, args.max_frames, reopen)
    stopped = asyncio.Event()
    if stop is not None:  # a thread that turns the caller's stop into an event on this loop
        threading.Thread(target=_forward_stop, args=(stop, loop, stopped), name="stop-watch",
                         daemon=True).start()
    try:
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        log(f"{detector!r} on {source.description}" + (", tracking" if step.tracker else "")
            + (", looping" if reopen else ""))
        log(f"serving on http://{shown}:{port}/ (stream /stream.mjpg, JSON /api/detections, "
            "/api/health); Ctrl-C stops")
        worker.start()
        await _first_of(hub.done.wait(), stopped.wait())
        if stopped.is_set():
            log("stopped")
            return 0
        if worker.error is not None:
            log(f"error: {worker.error}")
        elif worker.frames == 0:  # e.g. a folder of unreadable images: no last frame to serve
            log(f"error: no frame could be read from {source.description}")
            return 1
        if args.linger > 0:
            served = "the error" if worker.frames == 0 else "the last frame"
            log(f"{'source lost' if worker.error else 'done'} after {worker.frames} frames; "
                f"serving {served} for {args.linger:g} s more")
            await _first_of(asyncio.sleep(args.linger), stopped.wait())
        log(f"{worker.frames} frames" + (f", {worker.dropped} stale frames dropped"
                                         if source.live else ""))
        return 1 if worker.error is not None else 0
    finally:
        worker.stop()
        hub.finish(worker.error)  # viewers still streaming stop waiting for frames
        await runner.cleanup()
        if worker.is_alive():
            await asyncio.to_thread(worker.join, WORKER_JOIN_S)


def _forward_stop(stop: threading.Event, loop: asyncio.AbstractEventLoop,
                  stopped: asyncio.Event) -> None:
    stop.wait()
    with contextlib.suppress(RuntimeError):  # the loop is closed: serve() ended already
        loop.call_soon_threadsafe(stopped.set)


async def _first_of(*awaitables: Any) -> None:
    """Wait until the first of ``awaitables`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run an edgedet detector on a camera, stream, video, image folder or the "
        "built-in demo video and watch it in a browser: the annotated video (MJPEG), FPS, "
        "latency, the model and its accuracy check, and the detections, live. For headless "
        "devices: open http://HOST:PORT/ from any browser. JSON: /api/detections, "
        "/api/health (503 while the source is stalled or lost), /api/info. Ctrl-C stops.")
    add_common_arguments(parser)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s, this machine only; "
                        "0.0.0.0 for every network interface: anyone on the network can "
                        "watch, there is no login)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (default: %(default)s; 0 picks a free one)")
    parser.add_argument("--loop", action="store_true",
                        help="play a video file, image folder or the demo again when it ends "
                        "(no effect on cameras and streams)")
    parser.add_argument("--linger", type=float, default=10.0, metavar="SECONDS",
                        help="after the source ends or is given up, keep serving the last frame "
                        "and the error this long before exiting (default: %(default)s)")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    if not args.linger >= 0:  # nan too (inf: until Ctrl-C)
        parser.error(f"--linger must be a number of seconds >= 0, got {args.linger}")
    return args


def run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """The app; returns the exit status (0 done or ``stop`` set, 1 error, 130 interrupted)."""
    if web is None:
        log("error: the web viewer needs the optional 'web' extra: pip install 'edgedet[web]' "
            "(aiohttp)")
        return 1
    if not is_loopback(args.host):
        log(f"warning: listening on {args.host}: anyone who can reach this machine on port "
            f"{args.port} can watch the video (there is no login)")
    try:
        detector = load_detector(args)
        step = FrameStep(detector, make_tracker(args))
        source = open_source(args.source)
    # a bad model / backend / source, or --track without the track extra
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        log(f"error: {error_text(exc)}")
        return 1
    try:
        return asyncio.run(serve(args, detector, step, source, stop))
    except KeyboardInterrupt:  # asyncio.run cancelled serve (which cleaned up), then re-raised
        log("interrupted")
        return 130


def main(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    """The CLI; ``stop`` (set from another thread) ends it like Ctrl-C, with status 0."""
    return interruptible(lambda: run(parse_args(argv), stop))


if __name__ == "__main__":
    run_as_script(main)
