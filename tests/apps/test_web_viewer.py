"""apps/web_viewer.py: the page, the MJPEG stream and the JSON endpoints, served while the
detector runs on the demo video or a fake camera; several viewers, viewers that leave or stop
reading, a source that dies, Ctrl-C, and the page in headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.apps.helpers import APPS, REPO, FakeLiveSource, write_gray_images

pytest.importorskip("aiohttp", reason="the 'web' extra (aiohttp) is not installed")

WEB_VIEWER_PY = APPS / "web_viewer.py"
# Generous: the tests wait for events (a frame, a status), never for a duration.
WAIT_S = 60.0
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture
def viewer(capture):
    """A fresh apps/web_viewer.py module (it imports ``capture`` and ``pipeline``, found
    through the capture fixture's path)."""
    spec = importlib.util.spec_from_file_location("web_viewer_app", WEB_VIEWER_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@dataclass
class RunningViewer:
    """The app's ``main`` running in a thread, and a client for it."""

    url: str
    stop: threading.Event
    thread: threading.Thread
    status: list[int] = field(default_factory=list)  # main's return value, once it returned

    def get(self, path: str) -> tuple[int, bytes, str]:
        """``(HTTP status, body, content type)`` of a GET; 5xx answers too."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=WAIT_S) as response:
                return response.status, response.read(), response.headers["Content-Type"]
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers["Content-Type"]

    def json(self, path: str) -> tuple[int, dict]:
        status, body, content_type = self.get(path)
        assert content_type.startswith("application/json"), content_type
        return status, json.loads(body)

    def up(self) -> bool:
        try:
            self.get("/api/health")
        except OSError:
            return False
        return True

    def exit_status(self) -> int:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the viewer did not exit"
        return self.status[0]


@contextlib.contextmanager
def running(viewer, argv: list[str]) -> Iterator[RunningViewer]:
    """Runs the viewer with ``argv`` on a free port until the block ends (then stops it)."""
    port = free_port()
    stop = threading.Event()
    status: list[int] = []
    thread = threading.Thread(
        target=lambda: status.append(viewer.main([*argv, "--port", str(port)], stop)),
        name="web-viewer-under-test", daemon=True)
    running_viewer = RunningViewer(f"http://127.0.0.1:{port}", stop, thread, status)
    thread.start()
    wait_for(lambda: running_viewer.up() or status, "the server to listen")
    assert not status, f"the viewer exited with {status}"
    try:
        yield running_viewer
    finally:
        stop.set()
        thread.join(WAIT_S)
    assert not thread.is_alive(), "the viewer did not stop"


class MjpegClient:
    """Reads ``/stream.mjpg`` part by part, like a browser's <img>."""

    def __init__(self, url: str, receive_buffer: int | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
        if receive_buffer is not None:  # a viewer on a slow link: its socket fills up quickly
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.settimeout(WAIT_S)
            sock.connect((host, int(port)))
            self.connection.sock = sock
        self.connection.request("GET", "/stream.mjpg")
        self.response = self.connection.getresponse()
        content_type = self.response.headers["Content-Type"]
        assert self.response.status == 200
        assert content_type == "multipart/x-mixed-replace; boundary=frame", content_type
        assert self.response.readline() == b"--frame\r\n"

    def next_part(self) -> bytes:
        """The next JPEG, as sent (headers checked, then the boundary that ends it)."""
        headers = {}
        while (line := self.response.readline()) != b"\r\n":
            assert line, "the stream ended"
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"] == "image/jpeg"
        jpeg = self.response.read(int(headers["content-length"]))
        assert self.response.readline() == b"\r\n"
        assert self.response.readline() == b"--frame\r\n"
        return jpeg

    def next_frame(self) -> np.ndarray:
        frame = cv2.imdecode(np.frombuffer(self.next_part(), np.uint8), cv2.IMREAD_COLOR)
        assert frame is not None, "a part that is not a JPEG"
        return frame

    def close(self) -> None:
        self.connection.close()


def demo_args(models: dict[str, Path], *extra: str) -> list[str]:
    return ["--source", "demo", "--model", str(models["planted"]), "--loop", "--track", *extra]


def test_endpoints_page_and_stream_on_the_demo(viewer, models: dict[str, Path]) -> None:
    with running(viewer, demo_args(models)) as app:
        health = wait_for(lambda: app.json("/api/health")[0] == 200 and app.json("/api/health"),
                          "health 200")[1]
        assert health["status"] == "ok" and health["error"] is None and health["frames"] >= 1
        status, info = app.json("/api/info")
        assert status == 200 and info["model"] == "tiny" and info["backend"] == "onnxruntime"
        assert info["precision"] == "fp32" and info["check"].startswith("passed: AP")
        assert info["tracking"] is True and info["source"] == "the demo video"
        status, latest = app.json("/api/detections")
        assert status == 200 and latest["width"] == 640 and latest["height"] == 480
        assert latest["tracking"] and latest["fps"] >= 0 and latest["detect_ms"] > 0
        # The planted object: input box (7.2, 2.4, 55.2, 34.4) at 640/64 = 10x, one track.
        (detection,) = latest["detections"]
        assert detection["label"] == "square" and detection["track_id"] >= 1
        np.testing.assert_allclose(detection["box_xyxy"], [72, 24, 552, 344], atol=1)
        status, page, content_type = app.get("/")
        assert status == 200 and content_type.startswith("text/html")
        assert b"passed: AP 0.00 vs reference 0.00, \xce\x94AP +0.00" in page  # the check
        assert b'src="stream.mjpg"' in page and b"<!--INFO-->" not in page
        status, jpeg, content_type = app.get("/snapshot.jpg")
        assert status == 200 and content_type == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
        stream = MjpegClient(app.url)
        frames = [stream.next_frame() for _ in range(3)]
        assert all(frame.shape == (480, 640, 3) for frame in frames)
        stream.close()
    assert app.exit_status() == 0


def test_several_viewers_and_ones_that_leave_or_stop_reading(viewer,
                                                            models: dict[str, Path]) -> None:
    with running(viewer, demo_args(models)) as app:
        first, second = MjpegClient(app.url), MjpegClient(app.url)
        for _ in range(2):  # both get frames, interleaved
            assert first.next_frame().shape == second.next_frame().shape == (480, 640, 3)
        wait_for(lambda: app.json("/api/health")[1]["viewers"] == 2, "two viewers")
        # One leaves in the middle of a part: the server notices, the other one streams on.
        first.response.read(100)
        first.close()
        wait_for(lambda: app.json("/api/health")[1]["viewers"] == 1, "the viewer that left")
        # One stops reading (a tiny socket buffer fills at once): neither the detection nor
        # the other viewer waits for it.
        stalled = MjpegClient(app.url, receive_buffer=4096)
        frames_before = app.json("/api/health")[1]["frames"]
        for _ in range(10):
            second.next_part()
        wait_for(lambda: app.json("/api/health")[1]["frames"] >= frames_before + 10,
                 "detection going on")
        stalled.close()
        second.close()
        wait_for(lambda: app.json("/api/health")[1]["viewers"] == 0, "no viewers left")
        assert app.json("/api/health")[0] == 200
    assert app.exit_status() == 0


def test_a_source_that_dies_is_reported_and_the_app_exits_with_an_error(
    viewer, capture, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(viewer, "open_source",
                        lambda spec: FakeLiveSource(capture, 0.01, fail_after=20))
    args = ["--source", "0", "--model", str(models["planted"]), "--linger", "600"]
    with running(viewer, args) as app:
        status, health = wait_for(lambda: app.json("/api/health")[1]["status"] == "failed"
                                  and app.json("/api/health"), "health: failed")
        assert status == 503 and health["error"] == "fake camera stopped delivering frames"
        assert 1 <= health["frames"] <= 20  # a live source: frames may be dropped
        latest = app.json("/api/detections")[1]
        assert latest["status"] == "failed" and latest["error"] == health["error"]
        # The page shows the error (the last frame stays; the stream of a new viewer ends).
        stream = MjpegClient(app.url)
        assert stream.next_frame().shape == (48, 64, 3)
        assert stream.response.readline() == b""
        stream.close()
        if chromium() is not None:
            dom = dump_dom(app.url)
            assert "Source problem: fake camera stopped delivering frames" in dom, dom
    # Stopped while it lingers: the exit status is still the source's failure.
    assert app.exit_status() == 1
    assert "error: fake camera stopped delivering frames" in capsys.readouterr().err


def test_a_stalled_source_is_unhealthy_then_given_up(viewer, capture, models: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The grabber's read hangs after 3 frames; capture's timeouts are shrunk so that it gives
    # up soon (they are only what the test waits for, never asserted).
    monkeypatch.setattr(capture, "READ_TIMEOUT_S", 0.2)
    monkeypatch.setattr(capture, "OPEN_TIMEOUT_S", 0.2)
    monkeypatch.setattr(viewer, "open_source", lambda spec: FakeLiveSource(capture, stall_after=3))
    with running(viewer, ["--source", "0", "--model", str(models["tiny"]), "--linger", "600"]
                 ) as app:
        health = wait_for(lambda: app.json("/api/health")[1]["status"] == "failed"
                          and app.json("/api/health")[1], "health: failed")
        assert "no frame from fake camera within" in health["error"]
    assert app.exit_status() == 1


def test_a_frame_older_than_the_read_timeout_means_stalled(viewer, capture) -> None:
    # While capture reconnects a live source, no frame comes: /api/health says "stalled" (503).
    hub = viewer.FrameHub(_closed_loop())
    assert hub.state()["status"] == "starting"
    hub.publish(b"jpeg", {"fps": 25.0})
    assert hub.state()["status"] == "ok"
    hub.last_frame_time -= capture.READ_TIMEOUT_S + 1
    state = hub.state()
    assert state["status"] == "stalled" and "being reconnected" in state["error"]


def _closed_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.close()  # FrameHub's wake-ups go nowhere (and are allowed to)
    return loop


def test_help_and_one_line_errors(viewer, models: dict[str, Path], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        viewer.parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--source", "--host", "--port", "--track", "--loop", "--linger",
                   "--max-frames", "/api/health"):
        assert option in help_text
    for bad in (["--port", "70000"], ["--linger", "-1"], ["--linger", "nan"],
                ["--max-frames", "0"], ["--source", ""]):
        with pytest.raises(SystemExit):
            viewer.parse_args(bad)
    tiny = ["--model", str(models["tiny"])]
    # Listening everywhere is said out loud; a source that is not there is one line.
    assert viewer.main([*tiny, "--host", "0.0.0.0", "--source", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "not found: give a camera index" in err
    # A port taken by another program.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert viewer.main([*tiny, "--source", "demo", "--port", str(port)]) == 1
    assert f"error: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    # A folder with no readable image: an error, with --loop too (it re-read the folder
    # forever, 21 000 log lines in 20 s).
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"junk")
    for loop in ([], ["--loop"]):
        assert viewer.main([*tiny, "--source", str(junk), "--port", "0", "--linger", "0.2",
                            *loop]) == 1
        err = capsys.readouterr().err
        assert "no frame could be read from" in err, err
        assert err.count("skipping unreadable image") <= 2
        assert "serving the last frame" not in err  # (it said so before the error)
    # The optional extras, named when missing.
    monkeypatch.setitem(sys.modules, "supervision", None)
    assert viewer.main([*tiny, "--source", "demo", "--track"]) == 1
    assert "pip install 'edgedet[track]'" in capsys.readouterr().err
    monkeypatch.setattr(viewer, "web", None)
    assert viewer.main([*tiny, "--source", "demo"]) == 1
    assert "pip install 'edgedet[web]'" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_stops_the_script_cleanly(models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((48, 64, 3), 60 * i, np.uint8))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), str(REPO)])}
    process = subprocess.Popen(
        [sys.executable, str(WEB_VIEWER_PY.relative_to(REPO)), "--source", str(folder),
         "--model", str(models["tiny"]), "--loop", "--port", "0"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    watchdog = threading.Timer(300, process.kill)  # a hung app fails the test, not the run
    watchdog.start()
    lines = []
    try:
        for line in process.stderr:  # --port 0: the app says which port it got
            lines.append(line)
            if "serving on http://" in line:
                break
        assert lines and "serving on http://" in lines[-1], "".join(lines)
        url = lines[-1].split("serving on ")[1].split("/ ")[0]
        app = RunningViewer(url, threading.Event(), threading.current_thread())
        wait_for(lambda: app.json("/api/health")[0] == 200, "health 200")
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[1]
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
    err = "".join(lines) + rest
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# The page in a browser
# ---------------------------------------------------------------------------------------------


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def run_chromium(url: str, *mode: str, profile: Path | None = None) -> str:
    """Headless Chromium on ``url`` for 5 s of page time (its virtual clock, which also waits
    for the requests in flight: the JavaScript polls and the stream's first frames); stdout."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,800",
               "--virtual-time-budget=5000", *mode, url]
    if profile is not None:
        command.insert(1, f"--user-data-dir={profile}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def dump_dom(url: str) -> str:
    return run_chromium(url, "--dump-dom")


@pytest.mark.skipif(chromium() is None, reason="no chromium binary found (apt-get install "
                    "chromium): the page is tested over HTTP only")
def test_the_page_shows_frames_and_detections_in_headless_chromium(
    viewer, models: dict[str, Path], tmp_path: Path
) -> None:
    with running(viewer, demo_args(models)) as app:
        wait_for(lambda: app.json("/api/health")[0] == 200, "health 200")
        dom = dump_dom(app.url + "/")
        # The <img> decoded the stream (naturalWidth > 0), the script listed the detection.
        assert 'id="frame-size" data-width="640">640x480<' in dom, dom
        assert 'class="detection"><td>#' in dom and "<td>square</td>" in dom, dom
        assert 'id="status" class="ok">ok<' in dom, dom
        screenshot = tmp_path / "web_viewer.png"
        run_chromium(app.url + "/", f"--screenshot={screenshot}", profile=tmp_path / "profile")
        image = cv2.imread(str(screenshot))
        assert image is not None and image.shape == (800, 1280, 3)
        print(f"screenshot: {screenshot}")
    assert app.exit_status() == 0


def test_an_image_of_a_folder_too_small_for_the_tiles_is_skipped(
        viewer, models: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_gray_images(tmp_path / "images", {"a.png": (48, 64), "b_tiny.png": (1, 1),
                                                     "c.png": (48, 64)})
    assert viewer.main(["--model", str(models["planted"]), "--source", str(folder), "--tiles",
                        "2", "--port", "0", "--linger", "0"]) == 0
    err = capsys.readouterr().err
    assert f"skipping a 1x1 image of folder {folder}: a 1x1 frame" in err and "error" not in err
    # Every image too small, with --loop: an error, not an endless pass over the folder.
    (folder / "a.png").unlink()
    (folder / "c.png").unlink()
    write_gray_images(folder, {"d_tiny.png": (1, 1)})
    assert viewer.main(["--model", str(models["planted"]), "--source", str(folder), "--tiles",
                        "2", "--port", "0", "--linger", "0", "--loop"]) == 1
    err = capsys.readouterr().err
    assert "no frame could be read from" in err and err.count("skipping a 1x1 image") == 2
