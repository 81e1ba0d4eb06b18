"""apps/sources.py: Jetson CSI cameras (csi://N), their GStreamer pipeline and their errors.

No test opens a real camera: OpenCV's build information and ``cv2.VideoCapture`` are replaced.
"""

import importlib
import os
import re
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from tests.apps.helpers import APPS, REPO

DEFAULT_PIPELINE = (
    "nvarguscamerasrc sensor-id=0 ! "
    "video/x-raw(memory:NVMM), width=1280, height=720, framerate=30/1, format=NV12 ! "
    "nvvidconv flip-method=0 ! video/x-raw, format=BGRx ! "
    "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1"
)

WITH_GSTREAMER = """
  Video I/O:
    FFMPEG:                      YES
    GStreamer:                   YES (1.20.3)
    v4l/v4l2:                    YES (linux/videodev2.h)
"""
WITHOUT_GSTREAMER = WITH_GSTREAMER.replace("YES (1.20.3)", "NO")


@pytest.fixture
def sources(capture):
    """apps/sources.py as capture imports it (``capture``: the fixture puts apps/ on the path)."""
    return importlib.import_module("sources")


class FakeCapture:
    """A cv2.VideoCapture that opens (or not) and delivers black 1280x720 frames."""

    def __init__(self, opens: bool) -> None:
        self.opens = opens

    def isOpened(self) -> bool:
        return self.opens

    def read(self):
        return True, np.zeros((720, 1280, 3), np.uint8)

    def get(self, prop: int) -> float:
        return 30.0

    def release(self) -> None:
        pass


def fake_video_capture(monkeypatch: pytest.MonkeyPatch, opens: bool = True) -> list[tuple]:
    """cv2.VideoCapture replaced: the arguments of every open, in a list."""
    calls: list[tuple] = []

    def video_capture(*args) -> FakeCapture:
        calls.append(args)
        return FakeCapture(opens)

    monkeypatch.setattr(cv2, "VideoCapture", video_capture)
    return calls


def test_the_default_pipeline(sources) -> None:
    camera = sources.parse_csi("csi://0")
    assert camera == sources.CsiCamera(0, 1280, 720, 30, 0)
    assert camera.pipeline() == DEFAULT_PIPELINE
    assert str(camera) == "CSI camera 0 (1280x720 at 30 fps)"


def test_the_pipeline_with_parameters(sources) -> None:
    camera = sources.parse_csi("csi://1?width=1920&height=1080&fps=60&flip=2")
    assert camera.pipeline() == (
        "nvarguscamerasrc sensor-id=1 ! "
        "video/x-raw(memory:NVMM), width=1920, height=1080, framerate=60/1, format=NV12 ! "
        "nvvidconv flip-method=2 ! video/x-raw, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1"
    )
    assert str(camera) == "CSI camera 1 (1920x1080 at 60 fps, flip-method 2)"
    # Parameters left out keep their defaults; any order; the scheme in any case.
    assert sources.parse_csi("CSI://2?fps=15") == sources.CsiCamera(2, 1280, 720, 15, 0)
    assert sources.parse_csi("csi://0?flip=7&width=640") == sources.CsiCamera(0, 640, 720, 30, 7)


@pytest.mark.parametrize(("spec", "message"), [
    ("csi://0?size=640", r"unknown parameter 'size' \(known: width, height, fps, flip\)"),
    ("csi://0?width=wide", r"width must be an integer from 1 to 8192, got 'wide'"),
    ("csi://0?height=7.5", r"height must be an integer from 1 to 8192, got '7.5'"),
    ("csi://0?fps=", r"fps must be an integer from 1 to 240, got ''"),
    ("csi://0?fps", r"fps must be an integer from 1 to 240, got ''"),
    ("csi://0?fps=29.97", r"fps must be an integer from 1 to 240, got '29.97'"),
    ("csi://0?width=0", r"width must be from 1 to 8192, got 0"),
    ("csi://0?height=10000", r"height must be from 1 to 8192, got 10000"),
    ("csi://0?fps=1000", r"fps must be from 1 to 240, got 1000"),
    ("csi://0?flip=8", r"flip must be from 0 to 7, got 8"),
    ("csi://0?flip=-1", r"flip must be from 0 to 7, got -1"),
    ("csi://0?fps=30&fps=60", r"parameter 'fps' given twice"),
    ("csi://cam0", r"the sensor id must be an integer from 0 to 255, got 'cam0'"),
    ("csi://256", r"the sensor id must be from 0 to 255, got 256"),
    ("csi://", r"give a CSI camera as csi://N"),
    ("csi:0", r"give a CSI camera as csi://N"),
    ("csi://0/extra", r"give a CSI camera as csi://N"),
])
def test_bad_csi_specs_name_what_is_wrong(sources, capture, monkeypatch: pytest.MonkeyPatch,
                                          spec: str, message: str) -> None:
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: WITH_GSTREAMER)
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: pytest.fail("opened a bad spec"))
    with pytest.raises(capture.SourceError, match=rf"^source '{re.escape(spec)}': {message}"):
        sources.parse_csi(spec)
    with pytest.raises(capture.SourceError, match=message):  # the app's path: --source
        capture.open_source(spec)


def test_an_opencv_without_gstreamer_is_explained(sources, capture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: WITHOUT_GSTREAMER)
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: pytest.fail("opened without GStreamer"))
    assert not sources.gstreamer_available()
    with pytest.raises(capture.SourceError) as error:
        capture.open_source("csi://0")
    message = str(error.value)
    assert "built without it, as pip's opencv-python wheels are" in message
    assert "JetPack's OpenCV (python3-opencv)" in message and "--system-site-packages" in message


def test_a_csi_camera_is_a_live_gstreamer_source(sources, capture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: WITH_GSTREAMER)
    assert sources.gstreamer_available()
    calls = fake_video_capture(monkeypatch)
    source = capture.open_source("csi://0")
    try:
        assert isinstance(source, capture.LiveSource) and source.live
        assert source.kind == "CSI camera" and source.target == DEFAULT_PIPELINE
        assert source.description == "CSI camera 0 (1280x720 at 30 fps)" and source.fps == 30.0
        assert source.read(threading.Event()).shape == (720, 1280, 3)
    finally:
        source.close()
    assert calls == [(DEFAULT_PIPELINE, cv2.CAP_GSTREAMER)]


def test_a_csi_camera_that_does_not_open_is_retried_then_explained(
    capture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: WITH_GSTREAMER)
    calls = fake_video_capture(monkeypatch, opens=False)
    with pytest.raises(capture.SourceError, match=(
            r"^cannot open CSI camera 1 \(640x480 at 30 fps\) \(retried 3 times over \d+ s\)\. "
            r"Check the camera alone: gst-launch-1.0 nvarguscamerasrc sensor-id=1 ")):
        capture.open_source("csi://1?width=640&height=480")
    assert len(calls) == 4  # retried like a stream, every time with GStreamer
    assert {call[1] for call in calls} == {cv2.CAP_GSTREAMER}
    assert "CSI camera 1 (640x480 at 30 fps): cannot open it; retrying in 0.01 s (1/3)" in (
        capsys.readouterr().err)


def test_either_module_can_be_imported_first() -> None:
    # capture re-exports sources' names; sources uses capture's. A fresh interpreter that
    # imports sources first must work as well as one that imports capture first (the apps).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), str(REPO)])}
    for first in ("sources", "capture"):
        result = subprocess.run(
            [sys.executable, "-c", f"import {first}, capture, sources; "
             "assert capture.open_source is sources.open_source"],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert result.returncode == 0, result.stderr


def test_the_help_mentions_csi_cameras(app, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    assert "csi://0" in capsys.readouterr().out
