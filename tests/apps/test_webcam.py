import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.data.synthetic import SyntheticConfig
from edgedet.data.synthetic_video import render_synthetic_video
from edgedet.video import read_video_frames
from tests.edgedet.tiny_artifacts import (
    PLANTED_DELTAS,
    PlantedObjectHead,
    TinyHead,
    planted_anchor,
    tiny_anchor_spec,
    write_artifact,
)

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "apps"
WEBCAM_PY = APPS / "webcam.py"


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """apps/capture.py, imported the way the apps import it: as a module beside them."""
    monkeypatch.syspath_prepend(str(APPS))
    module = importlib.import_module("capture")
    monkeypatch.setenv("EDGEDET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(module, "DEMO_FRAMES", 12)
    monkeypatch.setattr(module, "RECONNECT_DELAY_S", 0.01)
    return module


@pytest.fixture
def app(capture):
    """A fresh apps/webcam.py module (it imports ``capture``, found through the fixture)."""
    spec = importlib.util.spec_from_file_location("webcam_app", WEBCAM_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    anchor, _ = planted_anchor()
    planted = PlantedObjectHead(tiny_anchor_spec().num_anchors, anchor, 1, PLANTED_DELTAS)
    return {"tiny": write_artifact(root / "tiny", TinyHead("ssd"), "ssd"),
            "planted": write_artifact(root / "planted", planted, "ssd")}


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


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


def _frame_number(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) * 256 + int(frame[0, 1, 0])


def test_demo_runs_headless_and_saves_every_frame(app, capture, models: dict[str, Path],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "demo.mp4"
    argv = ["--source", "demo", "--model", str(models["tiny"]), "--headless", "--save", str(out)]
    assert app.main(argv) == 0
    assert _count_frames(out) == 12  # a file source: no frame skipped
    assert not [p for p in out.parent.iterdir() if p.name != "demo.mp4"]  # no temp file left
    err = capsys.readouterr().err
    assert "rendering the demo video once" in err and "saved" in err
    # The second run uses the cached video and renders nothing.
    monkeypatch.setattr(capture, "render_synthetic_video",
                        lambda *a, **k: pytest.fail("demo rendered twice"))
    assert app.main([*argv, "--max-frames", "5"]) == 0
    assert _count_frames(out) == 5


def test_no_camera_falls_back_to_the_demo(app, capture, models: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    real = capture.VideoCaptureSource

    def no_cameras(target, live, description):
        if isinstance(target, int):
            raise capture.SourceError(f"cannot open {description}")
        return real(target, live, description)

    monkeypatch.setattr(capture, "VideoCaptureSource", no_cameras)
    assert app.main(["--model", str(models["tiny"]), "--max-frames", "3"]) == 0
    err = capsys.readouterr().err
    assert "no camera found: running on the built-in demo video" in err
    assert "running headless" in err  # no display and/or no GUI in OpenCV here


def test_boxes_are_drawn_where_the_model_sees_the_object(app, models: dict[str, Path],
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # gray, lightly textured 160x120 frames
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(100, 120, (120, 160, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "boxes.avi"
    assert app.main(["--source", str(folder), "--model", str(models["planted"]),
                     "--save", str(out)]) == 0
    frames = read_video_frames(out)
    assert len(frames) == 3
    # Planted input box (7.2, 2.4, 55.2, 34.4) at 160/64 = 2.5x: frame box (18, 6, 138, 86).
    row_difference = np.abs(frames[0][:, 40:130].astype(float) - 110).mean(axis=(1, 2))
    assert row_difference[85:88].max() > 25  # the box's bottom edge: a coloured line
    # rows 0..62 hold the darkened FPS panel; below it and inside the box: background
    assert row_difference[66:80].max() < 15 and row_difference[95:].max() < 15


def test_live_sources_drop_stale_frames(capture) -> None:
    source = FakeLiveSource(capture, period_s=0.002)
    grabber = capture.FrameGrabber(source)
    grabber.start()
    try:
        first = _frame_number(grabber.get(5.0))
        time.sleep(0.2)  # a slow detector: ~100 frames arrive meanwhile
        second = _frame_number(grabber.get(5.0))
    finally:
        grabber.stop()
    assert second - first > 10 and grabber.dropped > 10
    assert source.closed.wait(2.0)  # the capture thread released the source


def test_file_sources_deliver_every_frame_in_order(capture, tmp_path: Path) -> None:
    video = render_synthetic_video(tmp_path / "v.avi", num_frames=20, seed=1,
                                   config=SyntheticConfig(image_size=(96, 64)), progress=False)
    source = capture.open_source(str(video))
    assert not source.live
    grabber = capture.FrameGrabber(source)
    grabber.start()
    received = []
    while (frame := grabber.get(5.0)) is not None:
        received.append(frame)
        time.sleep(0.01)  # slower than the reader: it must wait, not drop
    grabber.stop()
    assert len(received) == 20 and grabber.dropped == 0
    expected = read_video_frames(video)
    assert all(np.array_equal(a, b) for a, b in zip(received, expected, strict=True))


def test_a_source_that_disappears_ends_with_a_message_and_keeps_the_video(
    app, capture, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(app, "open_source",
                        lambda spec: FakeLiveSource(capture, 0.01, fail_after=4))
    out = tmp_path / "lost.mp4"
    assert app.main(["--model", str(models["tiny"]), "--source", "0", "--save", str(out)]) == 1
    assert "error: fake camera stopped delivering frames" in capsys.readouterr().err
    assert 1 <= _count_frames(out) <= 4


def test_a_stalled_source_times_out_instead_of_hanging(
    app, capture, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(capture, "READ_TIMEOUT_S", 0.05)
    source = FakeLiveSource(capture, stall_after=2)
    monkeypatch.setattr(app, "open_source", lambda spec: source)
    start = time.perf_counter()
    assert app.main(["--model", str(models["tiny"]), "--source", "0"]) == 1
    assert time.perf_counter() - start < 10
    assert "no frame from fake camera within" in capsys.readouterr().err
    assert source.closed.wait(2.0)


def test_an_unreachable_stream_is_retried_then_reported(
    app, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status = app.main(["--model", str(models["tiny"]), "--source", "rtsp://127.0.0.1:9/none"])
    err = capsys.readouterr().err
    assert status == 1
    assert "retrying (3/3)" in err and "error: cannot open stream rtsp://127.0.0.1:9/none" in err


def test_a_lost_stream_reconnects(capture, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeCapture:
        def __init__(self, frames: int) -> None:
            self.frames = frames

        def isOpened(self) -> bool:
            return True

        def read(self):
            if self.frames == 0:
                return False, None
            self.frames -= 1
            return True, np.zeros((4, 4, 3), np.uint8)

        def get(self, prop: int) -> float:
            return 25.0

        def release(self) -> None:
            pass

    captures = iter([FakeCapture(1), FakeCapture(0), FakeCapture(2)])
    monkeypatch.setattr(capture.VideoCaptureSource, "_open", lambda self: next(captures))
    source = capture.VideoCaptureSource("rtsp://camera/stream", live=True, description="stream")
    stop = threading.Event()
    assert source.read(stop) is not None  # capture 1
    assert source.read(stop) is not None  # capture 1 ends; 2 is dead; 3 delivers
    assert source.read(stop) is not None
    dead = iter([FakeCapture(0) for _ in range(4)])
    monkeypatch.setattr(capture.VideoCaptureSource, "_open", lambda self: next(dead))
    with pytest.raises(capture.SourceError, match="gave up after 3 reconnect attempts"):
        source.read(stop)


def test_bad_sources_and_models_give_one_line_errors(
    app, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert app.main(["--model", str(models["tiny"]), "--source", str(tmp_path / "x")]) == 1
    assert "not found: give a camera index" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert app.main(["--model", str(models["tiny"]), "--source", str(tmp_path / "empty")]) == 1
    assert "no images" in capsys.readouterr().err
    assert app.main(["--model", "no_such_model", "--source", "demo"]) == 1
    assert "no_such_model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        app.parse_args(["--save", "out.gif"])


def test_headless_detection_and_quit_keys(app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        assert app.open_window() is False
    if "GUI:                           NONE" in cv2.getBuildInformation():
        monkeypatch.setenv("DISPLAY", ":0")
        assert app.open_window() is False  # opencv-python-headless cannot open windows
    assert app.is_quit_key(ord("q")) and app.is_quit_key(27) and app.is_quit_key(0x100071)
    assert not app.is_quit_key(-1) and not app.is_quit_key(ord("a"))


_SLOW_DRIVER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("webcam_app", sys.argv[1])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
import capture
capture.DEMO_FRAMES = 40

class SlowDetector(app.Detector):
    def detect(self, frame):
        time.sleep(0.05)
        return super().detect(frame)

app.Detector = SlowDetector
sys.exit(app.main(sys.argv[2:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_exits_cleanly_and_keeps_the_recording(models: dict[str, Path],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "rec.mp4"
    # apps/ on the path too, as for `python apps/webcam.py`: the app imports its sibling capture.
    env = {**os.environ, "EDGEDET_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(APPS), str(REPO)])}
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_DRIVER, str(WEBCAM_PY), "--source", "demo", "--model",
         str(models["tiny"]), "--headless", "--save", str(out)],
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    lines = []
    for line in process.stderr:  # wait until the loop runs
        lines.append(line)
        if "on the demo video" in line:
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    try:
        rest = process.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the app did not exit after Ctrl-C")
    err = "".join(lines) + rest
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert 1 <= _count_frames(out) < 40


def test_runs_as_a_script_from_the_repository_root() -> None:
    # Run as `python apps/webcam.py`, the app finds its sibling capture.py through sys.path[0].
    result = subprocess.run([sys.executable, str(WEBCAM_PY.relative_to(REPO)), "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--source" in result.stdout and "--save" in result.stdout
