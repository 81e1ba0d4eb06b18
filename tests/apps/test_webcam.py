"""apps/webcam.py: the CLI and its detect/draw/save loop, on every kind of source."""

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

from edgedet.video import read_video_frames
from tests.apps.helpers import APPS, REPO, WEBCAM_PY, FakeLiveSource, write_gray_images
from tests.apps.helpers import count_frames as _count_frames
from tests.edgedet.tiny_artifacts import TinyHead, write_artifact


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
    render = capture.render_synthetic_video
    monkeypatch.setattr(capture, "render_synthetic_video",
                        lambda *a, **k: pytest.fail("demo rendered twice"))
    assert app.main([*argv, "--max-frames", "5"]) == 0
    assert _count_frames(out) == 5
    # A cached copy that is not the whole demo (cut short, or replaced) is rendered again.
    monkeypatch.setattr(capture, "render_synthetic_video", render)
    demo = capture.demo_video_path()
    demo.write_bytes(demo.read_bytes()[:2000])
    capsys.readouterr()
    assert app.main([*argv, "--max-frames", "2"]) == 0
    assert "rendering the demo video again" in capsys.readouterr().err
    assert _count_frames(demo) == 12


def test_no_camera_falls_back_to_the_demo(app, capture, models: dict[str, Path],
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def no_cameras(target, kind):
        raise capture.SourceError(f"cannot open {kind} {target}")

    monkeypatch.setattr(capture, "LiveSource", no_cameras)
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
    # A source whose own reads hang: the consumer's timeout (its whole reconnect schedule).
    monkeypatch.setattr(capture, "READ_TIMEOUT_S", 0.05)
    monkeypatch.setattr(capture, "OPEN_TIMEOUT_S", 0.05)
    source = FakeLiveSource(capture, stall_after=2)
    monkeypatch.setattr(app, "open_source", lambda spec: source)
    start = time.perf_counter()
    assert app.main(["--model", str(models["tiny"]), "--source", "0"]) == 1
    assert time.perf_counter() - start < 10
    assert "no frame from fake camera within" in capsys.readouterr().err
    assert source.closed.wait(2.0)


def test_a_fifo_given_as_a_path_runs(app, models: dict[str, Path], fifo: Path, feed,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feed()  # writes until the test ends
    out = tmp_path / "fifo.mp4"
    assert app.main(["--model", str(models["tiny"]), "--source", str(fifo), "--max-frames", "5",
                     "--save", str(out)]) == 0
    assert f"on FIFO {fifo}" in capsys.readouterr().err
    assert _count_frames(out) == 5


@pytest.mark.parametrize(("as_url", "then"), [(True, "close"), (False, "hold")],
                         ids=["file-url-writer-closes", "path-writer-hangs"])
def test_a_fifo_whose_writer_stops_is_given_up_and_the_recording_kept(
    app, capture, models: dict[str, Path], fifo: Path, feed, tmp_path: Path, as_url: bool,
    then: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Short timeouts, so that the test is quick; they are never what the test waits for.
    monkeypatch.setattr(capture, "READ_TIMEOUT_S", 0.5)
    monkeypatch.setattr(capture, "OPEN_TIMEOUT_S", 3.0)
    monkeypatch.setattr(capture, "RECONNECT_ATTEMPTS", 2)
    feed(frames=10, then=then)
    out = tmp_path / "rec.mp4"
    start = time.monotonic()
    status = app.main(["--model", str(models["tiny"]), "--save", str(out),
                       "--source", fifo.as_uri() if as_url else str(fifo)])
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert status == 1, err
    lost = "its writer closed it" if then == "close" else "no frame for 0.5 s"
    assert f"error: lost FIFO {fifo}: {lost}; gave up after 2 reconnect attempts" in err
    assert "reconnecting in 0.01 s (1/2)" in err and "reconnecting in 0.02 s (2/2)" in err
    assert f"saved {out}" in err and 1 <= _count_frames(out) <= 10


def test_an_unreachable_stream_is_retried_then_reported(
    app, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status = app.main(["--model", str(models["tiny"]), "--source", "rtsp://127.0.0.1:9/none"])
    err = capsys.readouterr().err
    assert status == 1
    for delay, attempt in (("0.01", 1), ("0.02", 2), ("0.04", 3)):  # backoff
        assert f"cannot open it; retrying in {delay} s ({attempt}/3)" in err
    assert "error: cannot open stream rtsp://127.0.0.1:9/none (retried 3 times over" in err


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
    unchecked = write_artifact(tmp_path / "unchecked", TinyHead("ssd"), "ssd", checked=False)
    assert app.main(["--model", str(unchecked), "--source", "demo", "--max-frames", "1"]) == 1
    assert "--allow-unchecked" in capsys.readouterr().err
    assert app.main(["--model", str(unchecked), "--source", "demo", "--max-frames", "1",
                     "--headless", "--allow-unchecked"]) == 0
    with pytest.raises(SystemExit) as stopped:
        app.parse_args(["--save", "out.gif"])
    assert stopped.value.code == 2 and "--save" in capsys.readouterr().err


def test_save_never_replaces_the_source(app, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "in.mp4"
    video.write_bytes(b"a recording")
    folder = tmp_path / "clips.mp4"  # a folder, though its name ends like a video
    folder.mkdir()
    linked = tmp_path / "linked.mp4"
    os.link(video, linked)
    for argv in (["--source", str(video), "--save", str(video)],
                 ["--source", video.as_uri(), "--save", str(video)],  # a file:// URL
                 ["--source", str(video), "--save", str(linked)],  # a hard link to it
                 ["--source", str(video), "--save", str(folder)]):
        with pytest.raises(SystemExit):
            app.parse_args(argv)
    err = capsys.readouterr().err
    assert err.count("is the source") == 3 and "is a folder" in err
    assert video.read_bytes() == b"a recording"


def test_save_never_replaces_the_cached_demo(app, capture, tmp_path: Path, monkeypatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # A 5-frame annotated clip took the demo's place, and every later run played it.
    monkeypatch.setenv("EDGEDET_CACHE_DIR", str(tmp_path))
    demo = capture.demo_video_path()
    demo.write_bytes(b"the demo")
    for source in (["--source", "demo"], []):  # no source: the demo where no camera opens
        with pytest.raises(SystemExit):
            app.parse_args([*source, "--save", str(demo)])
        assert "is the source" in capsys.readouterr().err
    assert demo.read_bytes() == b"the demo"


def test_a_folder_with_no_readable_image_is_an_error(app, models: dict[str, Path],
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "text.jpg").write_text("not an image")
    _, encoded = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))
    (folder / "truncated.jpg").write_bytes(encoded.tobytes()[: len(encoded) // 2])
    assert app.main(["--model", str(models["tiny"]), "--source", str(folder),
                     "--headless"]) == 1
    err = capsys.readouterr().err
    assert "truncated.jpg" in err and "no frame could be read" in err


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


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_exits_cleanly_and_keeps_the_recording(models: dict[str, Path], fifo: Path,
                                                      feed, tmp_path: Path, stop: str) -> None:
    # A FIFO fed until the app exits: the source cannot end before the signal, however slow
    # the machine. The signal goes when the app says it processed 50 frames.
    feed()
    out = tmp_path / "rec.mp4"
    # apps/ on the path too, as for `python apps/webcam.py`: the app imports its sibling capture.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APPS), str(REPO)])}
    process = subprocess.Popen(
        [sys.executable, str(WEBCAM_PY), "--source", str(fifo), "--model", str(models["tiny"]),
         "--headless", "--save", str(out)],
        stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    watchdog = threading.Timer(300, process.kill)  # a hung app fails the test, not the run
    watchdog.start()
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "] 50 frames," in line:
            process.send_signal(getattr(signal, stop))  # SIGTERM stops it as Ctrl-C does
            break
    try:
        rest = process.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the app did not exit after Ctrl-C")
    finally:
        watchdog.cancel()
    err = "".join(lines) + rest
    assert any("] 50 frames," in line for line in lines), err
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and f"saved {out}" in err
    assert _count_frames(out) >= 50
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".mp4") and p != out]  # no temp


def test_runs_as_a_script_from_the_repository_root() -> None:
    # Run as `python apps/webcam.py`, the app finds its sibling capture.py through sys.path[0].
    result = subprocess.run([sys.executable, str(WEBCAM_PY.relative_to(REPO)), "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--source" in result.stdout and "--save" in result.stdout


def test_track_runs_and_a_missing_extra_is_named(app, models: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("supervision", reason="the 'track' extra is not installed")
    out = tmp_path / "tracked.avi"
    argv = ["--source", "demo", "--model", str(models["planted"]), "--headless", "--track"]
    assert app.main([*argv, "--save", str(out)]) == 0
    assert "on the demo video, tracking" in capsys.readouterr().err
    assert _count_frames(out) == 12  # every frame written, whatever is tracked on it
    monkeypatch.setitem(sys.modules, "supervision", None)  # as if the extra were missing
    assert app.main(argv) == 1
    assert "error: tracking needs the optional 'track' extra: pip install 'edgedet[track]'" in (
        capsys.readouterr().err)


def test_an_image_of_a_folder_too_small_for_the_tiles_is_skipped(
        app, models: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # It stopped the app; `edgedet detect` skips it, and the folder's other images are fine.
    folder = write_gray_images(tmp_path / "images", {"a.png": (48, 64), "b_tiny.png": (1, 1),
                                                     "c.png": (48, 64)})
    out = tmp_path / "tiles.avi"
    assert app.main(["--source", str(folder), "--model", str(models["planted"]), "--tiles",
                     "2", "--save", str(out)]) == 0
    assert len(read_video_frames(out)) == 2
    assert f"skipping a 1x1 image of folder {folder}: a 1x1 frame" in capsys.readouterr().err
    # One image (or a camera, a video: all its frames have one size): an error, as before.
    assert app.main(["--source", str(folder / "b_tiny.png"), "--model", str(models["planted"]),
                     "--tiles", "2", "--headless"]) == 1
    assert "a 1x1 frame is too small for 2x2 tiles" in capsys.readouterr().err


# The mission's camera models as the docs run them (each backend the zoo has a build for,
# and HAR-Net's double-scale testing), on the built-in demo.
ZOO_CAMERA_RUNS = [
    ["--model", "passd_mobilenet_int8"],
    ["--model", "harnet_pruned_int8"],
    ["--model", "harnet_pruned_int8", "--backend", "openvino"],
    ["--model", "harnet_pruned_int8", "--backend", "tflite"],
    ["--model", "harnet_pruned_int8", "--double-scale"],
]


@pytest.mark.parametrize("argv", ZOO_CAMERA_RUNS, ids=" ".join)
def test_the_zoo_camera_models_find_the_demo_s_objects(app, argv: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import edgedet

    if argv[1] not in edgedet.list_models():
        pytest.skip(f"{argv[1]} is not in this package's zoo")
    runtime = {"openvino": "openvino", "tflite": "ai_edge_litert"}
    if "--backend" in argv:
        pytest.importorskip(runtime[argv[argv.index("--backend") + 1]])
    found: list[int] = []
    step_class = app.FrameStep

    class CountingStep(step_class):  # type: ignore[misc, valid-type]
        def __call__(self, frame: np.ndarray):
            result = super().__call__(frame)
            found.append(len(result.detections))
            return result

    monkeypatch.setattr(app, "FrameStep", CountingStep)
    assert app.main([*argv, "--source", "demo", "--headless", "--max-frames", "4"]) == 0
    # The demo shows several shapes in every frame, at the application threshold (0.4).
    assert len(found) == 4 and min(found) >= 1, found
