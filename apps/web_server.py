"""The web viewer's server side: the latest frame shared by the detection thread and every
viewer (``FrameHub``), and the aiohttp application that serves it (the page, the MJPEG stream,
a snapshot, the JSON endpoints). ``web_viewer.py`` is the CLI and the detection thread.

apps/ is not a package: ``web_viewer.py`` imports this file as ``import web_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import threading
import time
from pathlib import Path
from typing import Any

from edgedet import Detector

try:  # the optional 'web' extra: without it, web_viewer.py's --help works and run() says so
    from aiohttp import web
except ModuleNotFoundError:
    web = None  # type: ignore[assignment]

# isort: split
# A sibling module, not a package: run as a script, the app's folder is on sys.path.
import capture

PAGE = Path(__file__).with_name("web_viewer.html")
BOUNDARY = "frame"
# A viewer waits this long for a new frame before it checks again whether the run ended.
VIEWER_WAIT_S = 1.0

# ---------------------------------------------------------------------------------------------
# The latest frame, shared by the detection thread and every viewer
# ---------------------------------------------------------------------------------------------


class FrameHub:
    """The latest annotated JPEG and its detections: written by the detection thread, read by
    the server's handlers on the event loop ``loop``.

    Only one frame is kept (bounded memory whatever the number of viewers); a viewer waiting in
    ``next_frame`` is woken by an ``asyncio.Event`` that ``publish`` sets on the loop (thread-
    safely) and replaces for the next frame.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._changed = asyncio.Event()  # set (and replaced) on the loop only
        self.seq = 0  # frames published so far
        self.jpeg: bytes | None = None
        self.frame: dict[str, Any] = {}  # the latest frame's detections, FPS, latency, size
        self.status = "starting"  # then "running", "ended" or "failed"
        self.error: str | None = None
        self.last_frame_time: float | None = None  # time.monotonic() of the latest frame
        self.viewers = 0  # open /stream.mjpg connections (changed on the loop only)
        self.done = asyncio.Event()  # the detection thread finished (set on the loop)

    def publish(self, jpeg: bytes, frame: dict[str, Any]) -> None:
        """A new frame (detection thread)."""
        with self._lock:
            self.seq += 1
            self.jpeg, self.frame = jpeg, {"frame": self.seq, **frame}
            self.status, self.last_frame_time = "running", time.monotonic()
        self._call_soon(self._wake)

    def finish(self, error: str | None) -> None:
        """The detection thread ends: the source ended (``error`` None) or failed."""
        with self._lock:
            self.status, self.error = ("ended", None) if error is None else ("failed", error)
        self._call_soon(self._wake)
        self._call_soon(self.done.set)

    def _call_soon(self, callback: Any) -> None:
        # RuntimeError: the loop is closed; the app is exiting and nobody is waiting.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def next_frame(self, after: int) -> tuple[int, bytes] | None:
        """The latest frame once it is newer than frame ``after`` (at once if it is); None when
        the run has ended and no newer frame will come."""
        while True:
            # The check and taking the event happen on the loop with no await between them, and
            # _wake runs on the loop: a frame published meanwhile cannot be missed.
            with self._lock:
                if self.seq > after and self.jpeg is not None:
                    return self.seq, self.jpeg
                if self.status in ("ended", "failed"):
                    return None
            changed = self._changed
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError from 3.11 on
                await asyncio.wait_for(changed.wait(), VIEWER_WAIT_S)

    def latest(self) -> tuple[bytes | None, dict[str, Any]]:
        """The latest JPEG (None before the first frame) and its detections, FPS, latency."""
        with self._lock:
            return self.jpeg, dict(self.frame)

    def state(self) -> dict[str, Any]:
        """Status for /api/health and the page: ``ok`` while frames flow, ``stalled`` when none
        came for ``capture.READ_TIMEOUT_S`` (the source is being reconnected), ``starting``,
        ``ended`` or ``failed`` (with the error)."""
        with self._lock:
            status, error, last = self.status, self.error, self.last_frame_time
            frame = dict(self.frame)
        age = None if last is None else time.monotonic() - last
        if status == "running":
            status = "ok"
            if age is not None and age > capture.READ_TIMEOUT_S:
                status = "stalled"
                error = f"no frame for {age:.0f} s: the source is being reconnected"
        return {"status": status, "error": error, "frames": frame.get("frame", 0),
                "fps": frame.get("fps"), "detect_ms": frame.get("detect_ms"),
                "last_frame_age_s": None if age is None else round(age, 2),
                "viewers": self.viewers}


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def model_info(detector: Detector, source: str, tracking: bool) -> dict[str, Any]:
    """What the page and /api/info say about the model (from ``Detector.info``, the
    manifest)."""
    manifest = detector.info
    return {"model": detector.name, "backend": detector.backend_name,
            "fallback_reason": detector.fallback_reason,
            "precision": manifest.get("precision"), "architecture": manifest.get("architecture"),
            "input_size": list(detector.input_size), "check": detector.check,
            "score_threshold": detector.options.score_threshold,
            "classes": list(detector.class_names), "source": source, "tracking": tracking}


def render_page(info: dict[str, Any]) -> str:
    """The page (``web_viewer.html``) with the model's facts filled in, HTML-escaped."""
    rows = [("model", info["model"]),
            ("backend", info["backend"] + (f" (fallback: {info['fallback_reason']})"
                                           if info["fallback_reason"] else "")),
            ("precision", info["precision"]), ("accuracy check", info["check"]),
            ("input", "x".join(str(v) for v in info["input_size"])),
            ("score threshold", info["score_threshold"]), ("source", info["source"]),
            ("tracking", "ByteTrack" if info["tracking"] else "off")]
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                      for k, v in rows)
    return (PAGE.read_text(encoding="utf-8").replace("<!--INFO-->", table)
            .replace("<!--TITLE-->", html.escape(f"edgedet: {info['model']}")))


def make_app(hub: FrameHub, info: dict[str, Any]) -> web.Application:
    """The aiohttp application: the page, the MJPEG stream, a snapshot, the JSON endpoints."""
    page = render_page(info)
    no_store = {"Cache-Control": "no-store"}

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", headers=no_store)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            **no_store, "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}"})
        await response.prepare(request)
        hub.viewers += 1
        try:
            await response.write(f"--{BOUNDARY}\r\n".encode())
            seq = 0
            while (item := await hub.next_frame(seq)) is not None:
                seq, jpeg = item
                # Each part is followed by the next boundary at once: browsers show a part
                # when they see the boundary that ends it, not when its last byte arrives.
                # write() waits while this viewer's socket is full: a slow viewer skips frames.
                await response.write(
                    b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%b\r\n--%b\r\n"
                    % (len(jpeg), jpeg, BOUNDARY.encode()))
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            pass  # the viewer left
        finally:
            hub.viewers -= 1
        return response

    async def snapshot(request: web.Request) -> web.Response:
        jpeg, _ = hub.latest()
        if jpeg is None:
            return web.json_response({"error": "no frame yet"}, status=503, headers=no_store)
        return web.Response(body=jpeg, content_type="image/jpeg", headers=no_store)

    async def detections(request: web.Request) -> web.Response:
        _, frame = hub.latest()
        state = hub.state()
        return web.json_response({**frame, "status": state["status"], "error": state["error"],
                                  "viewers": state["viewers"]}, headers=no_store)

    async def health(request: web.Request) -> web.Response:
        state = hub.state()
        return web.json_response(state, status=200 if state["status"] in ("ok", "ended") else 503,
                                 headers=no_store)

    async def model(request: web.Request) -> web.Response:
        return web.json_response(info, headers=no_store)

    app = web.Application()
    app.add_routes([web.get("/", index), web.get("/stream.mjpg", stream),
                    web.get("/snapshot.jpg", snapshot), web.get("/api/detections", detections),
                    web.get("/api/health", health), web.get("/api/info", model)])
    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.x, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it may be reachable from elsewhere
        return False
