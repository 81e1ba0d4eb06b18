"""apps/capture.py: sources (FIFOs and file:// URLs too), the capture thread, timeouts and
reconnects with backoff."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgedet.data.synthetic import SyntheticConfig
from edgedet.data.synthetic_video import render_synthetic_video
from edgedet.video import count_video_frames, read_video_frames
from tests.apps.helpers import FIFO_FPS, FIFO_SIZE, FakeLiveSource, frame_number
from tests.edgedet.cut_video import write_truncated_avi


def test_backoff_doubles_up_to_the_cap(capture) -> None:
    assert capture.backoff_delays(3, 1.0, 8.0) == [1.0, 2.0, 4.0]
    assert capture.backoff_delays(6, 1.0, 8.0) == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert capture.backoff_delays(2, 0.5, 0.6) == [0.5, 0.6]
    assert capture.backoff_delays(0, 1.0, 8.0) == []
    assert capture.backoff_delays(2000, 1.0, 8.0)[-1] == 8.0  # no float overflow
    with pytest.raises(ValueError, match="tries, base and cap >= 0"):
        capture.backoff_delays(-1, 1.0, 8.0)


def test_every_wait_is_bounded_by_a_few_seconds_per_read(capture) -> None:
    # The shipped policy (the fixture shrinks only the base delay).
    delays = capture.backoff_delays(capture.RECONNECT_ATTEMPTS, 1.0,
                                    capture.RECONNECT_MAX_DELAY_S)
    assert delays == [1.0, 2.0, 4.0]
    assert 1 <= capture.READ_TIMEOUT_S <= 10 and capture.OPEN_TIMEOUT_S <= 15
    # A file is given up after one read timeout; a live source after its reconnects.
    assert capture.frame_wait_timeout(live=False) == capture.READ_TIMEOUT_S
    assert capture.frame_wait_timeout(live=True) < 60


def test_live_sources_drop_stale_frames(capture) -> None:
    source = FakeLiveSource(capture, period_s=0.002)
    grabber = capture.FrameGrabber(source)
    grabber.start()
    try:
        first = frame_number(grabber.get(5.0))
        # A slow detector: 20 more frames arrive before it asks again (waited for by
        # count, not by time, so a loaded machine cannot make the test fail).
        deadline = time.monotonic() + 30.0
        while source.produced < first + 22 and time.monotonic() < deadline:
            time.sleep(0.01)
        second = frame_number(grabber.get(5.0))
    finally:
        grabber.stop()
    assert second - first > 10 and grabber.dropped > 10
    assert source.closed.wait(2.0)  # the capture thread released the source


def test_file_sources_deliver_every_frame_in_order(capture, tmp_path: Path) -> None:
    video = render_synthetic_video(tmp_path / "my video.avi", num_frames=20, seed=1,
                                   config=SyntheticConfig(image_size=(96, 64)), progress=False)
    expected = read_video_frames(video)
    # A file:// URL (quoted, as browsers write them) names a file like its path does.
    for spec in (str(video), video.as_uri(), "file://localhost" + video.as_uri()[7:]):
        source = capture.open_source(spec)
        assert not source.live and source.description == f"video {video}"
        grabber = capture.FrameGrabber(source)
        grabber.start()
        received = []
        while (frame := grabber.get(5.0)) is not None:
            received.append(frame)
            time.sleep(0.01)  # slower than the reader: it must wait, not drop
        grabber.stop()
        assert len(received) == 20 and grabber.dropped == 0
        assert all(np.array_equal(a, b) for a, b in zip(received, expected, strict=True))


def test_a_video_file_cut_short_is_a_source_error(capture, tmp_path: Path) -> None:
    video = write_truncated_avi(tmp_path / "cut.avi")
    grabber = capture.FrameGrabber(capture.open_source(str(video)))
    grabber.start()
    received = 0
    with pytest.raises(capture.SourceError, match=r"ended after \d+ of the 40 frames"):
        while grabber.get(5.0) is not None:
            received += 1
    grabber.stop()
    assert received == count_video_frames(video)


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_a_fifo_is_a_live_source(capture, fifo: Path, feed, as_url: bool) -> None:
    feed()  # writes until the test ends
    source = capture.open_source(fifo.as_uri() if as_url else str(fifo))
    assert source.live and source.description == f"FIFO {fifo}" and source.fps == FIFO_FPS
    grabber = capture.FrameGrabber(source)
    grabber.start()
    try:
        frames = [grabber.get(10.0) for _ in range(3)]
    finally:
        grabber.stop()
    assert all(frame.shape == (FIFO_SIZE[1], FIFO_SIZE[0], 3) for frame in frames)


def test_missing_sources_are_not_found(capture, tmp_path: Path) -> None:
    for spec in (str(tmp_path / "x.fifo"), (tmp_path / "x.fifo").as_uri()):
        with pytest.raises(capture.SourceError, match="not found: give a camera index"):
            capture.open_source(spec)
    with pytest.raises(capture.SourceError, match="only local file:// URLs"):
        capture.open_source("file://server/share/video.mp4")
    if Path("/dev/null").exists():  # a device, not a file
        with pytest.raises(capture.SourceError, match="is not a video file, image, folder or"):
            capture.open_source("/dev/null")


class FakeCapture:
    """A cv2.VideoCapture that opens (or not) and delivers ``frames`` frames, then ends."""

    def __init__(self, frames: int, opens: bool = True) -> None:
        self.frames, self.opens = frames, opens

    def isOpened(self) -> bool:
        return self.opens

    def read(self):
        if self.frames == 0:
            return False, None
        self.frames -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def get(self, prop: int) -> float:
        return 25.0

    def release(self) -> None:
        pass


def test_a_lost_stream_reconnects_with_backoff_then_gives_up(
    capture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    captures = iter([FakeCapture(1), FakeCapture(0), FakeCapture(0, opens=False),
                     FakeCapture(2)])
    monkeypatch.setattr(capture.LiveSource, "_open_capture", lambda self: next(captures))
    source = capture.LiveSource("rtsp://camera/stream", "stream")
    stop = threading.Event()
    assert source.read(stop) is not None  # capture 1
    assert source.read(stop) is not None  # 1 ends, 2 ends at once, 3 does not open, 4 delivers
    err = capsys.readouterr().err
    assert "stream rtsp://camera/stream: it ended; reconnecting in 0.01 s (1/3)" in err
    assert "it ended; reconnecting in 0.02 s (2/3)" in err
    assert "cannot open it; reconnecting in 0.04 s (3/3)" in err
    assert "stream rtsp://camera/stream delivers frames again" in err
    assert source.read(stop) is not None
    dead = iter([FakeCapture(0) for _ in range(4)])
    monkeypatch.setattr(capture.LiveSource, "_open_capture", lambda self: next(dead))
    with pytest.raises(capture.SourceError, match=r"^lost stream rtsp://camera/stream: it "
                       r"ended; gave up after 3 reconnect attempts over \d+ s \(last: it ended\)"):
        source.read(stop)
    source.close()


def test_a_fifo_that_stalls_is_waited_on_not_reopened(
    capture, fifo: Path, feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer keeps the pipe open, pauses and resumes: the blocked read gets its frames. A
    # second open would have made a second reader, taking part of the writer's data.
    monkeypatch.setattr(capture, "READ_TIMEOUT_S", 0.3)
    monkeypatch.setattr(capture, "OPEN_TIMEOUT_S", 30.0)  # how long the writer may pause
    feeder = feed(pause_after=3)
    messages: list[str] = []

    def log(message: str) -> None:
        messages.append(message)
        if "reconnecting" in message:
            feeder.resume.set()

    monkeypatch.setattr(capture, "log", log)
    opened = []
    real_open = capture.LiveSource._open_capture
    monkeypatch.setattr(capture.LiveSource, "_open_capture",
                        lambda self: opened.append(1) or real_open(self))
    source = capture.open_source(str(fifo))
    stop = threading.Event()
    try:
        start = time.monotonic()
        for _ in range(6):  # 3 frames, the pause (a stall: "reconnecting"), 3 frames
            assert source.read(stop) is not None
    finally:
        source.close()
    assert time.monotonic() - start < 30
    assert feeder.resume.is_set() and len(opened) == 1, messages
    assert f"FIFO {fifo} delivers frames again" in messages


def test_a_fifo_without_a_writer_is_given_up(capture, fifo: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture, "OPEN_TIMEOUT_S", 0.3)
    monkeypatch.setattr(capture, "READ_TIMEOUT_S", 0.2)
    monkeypatch.setattr(capture, "RECONNECT_ATTEMPTS", 1)
    before = set(threading.enumerate())
    start = time.monotonic()
    with pytest.raises(capture.SourceError, match=rf"^cannot open FIFO {fifo}: no frame for "
                       r"0.2 s \(retried 1 time over"):
        capture.open_source(str(fifo))
    assert time.monotonic() - start < 30
    # The reader left blocked in open() was woken: its thread ended, nothing reads the pipe.
    deadline = time.monotonic() + 10
    while [t for t in set(threading.enumerate()) - before if t.name == "capture-connection"]:
        assert time.monotonic() < deadline, "a connection thread is still blocked"
        time.sleep(0.05)
