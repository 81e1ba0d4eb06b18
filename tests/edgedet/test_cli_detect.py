"""The SDK's CLI commands: edgedet detect, bench, models."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet import zoo
from edgedet.cli import build_parser, main
from edgedet.data.synthetic import SyntheticConfig
from edgedet.data.synthetic_video import render_synthetic_video
from edgedet.video import count_video_frames
from tests.edgedet.cut_video import write_truncated_avi
from tests.edgedet.tiny_artifacts import (
    PLANTED_DELTAS,
    PlantedObjectHead,
    TinyHead,
    planted_anchor,
    tiny_anchor_spec,
    write_artifact,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_models")
    anchor, _ = planted_anchor()
    planted = PlantedObjectHead(tiny_anchor_spec().num_anchors, anchor, 1, PLANTED_DELTAS)
    return {"planted": write_artifact(root / "planted", planted, "ssd", name="planted"),
            "tiny": write_artifact(root / "tiny", TinyHead("ssd"), "ssd", name="tiny")}


def test_detect_an_image_prints_the_box_and_saves_a_drawing(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((96, 128, 3), 90, np.uint8))
    out = tmp_path / "drawn" / "frame.jpg"
    assert main(["detect", "--model", str(models["planted"]), str(image),
                 "--save", str(out)]) == 0
    # The planted object (see test_detector): frame box (14.4, 4.8, 110.4, 68.8).
    assert capsys.readouterr().out.strip() == "frame.png: 1 objects: square 1.00 [14 5 110 69]"
    drawn = cv2.imread(str(out))
    assert drawn.shape == (96, 128, 3)
    assert np.abs(drawn[69].astype(int) - 90).mean() > 20  # the bottom edge is drawn
    assert np.abs(drawn[85].astype(int) - 90).mean() < 5


def test_detect_with_tiles_adds_the_crops_detections(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The planted model finds its object in the whole frame and in each of the 4 crops
    # (tests/edgedet/test_tiling.py computes the boxes).
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((96, 128, 3), 90, np.uint8))
    assert main(["detect", "--model", str(models["planted"]), str(image), "--tiles", "2",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["detections"]) == 5
    assert main(["detect", "--model", str(models["planted"]), str(image), "--tiles", "0"]) != 0
    assert "tiles" in capsys.readouterr().err


def test_detect_a_folder_as_json_lines(models: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("b.jpg", "a.png"):
        cv2.imwrite(str(folder / name), np.full((48, 64, 3), 30, np.uint8))
    (folder / "readme.txt").write_text("ignored")
    assert main(["detect", "--model", str(models["planted"]), str(folder), "--json",
                 "--save", str(tmp_path / "out")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in rows] == ["a.png", "b.jpg"]
    detection = rows[0]["detections"][0]
    assert detection["label"] == "square" and detection["class_id"] == 1
    np.testing.assert_allclose(detection["xyxy"], [7.2, 2.4, 55.2, 34.4], atol=0.01)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg"]


def test_detect_a_video_saves_an_annotated_video(models: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    video = render_synthetic_video(tmp_path / "in.avi", num_frames=6, seed=2,
                                   config=SyntheticConfig(image_size=(96, 72)), progress=False)
    out = tmp_path / "out.mp4"
    assert main(["detect", "--model", str(models["tiny"]), str(video), "--save", str(out),
                 "--score-threshold", "0.5", "--max-frames", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"frame_{i:06d}" for i in range(4)]
    capture = cv2.VideoCapture(str(out))
    count = 0
    while capture.grab():
        count += 1
    assert count == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_detect_errors_are_one_line(models: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", "--model", str(models["tiny"]), str(tmp_path / "none.jpg")]) == 2
    assert "source not found" in capsys.readouterr().err
    (tmp_path / "x.png").write_bytes(b"not a png")
    assert main(["detect", "--model", str(models["tiny"]), str(tmp_path / "x.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["detect", "--model", "no_such_model", str(tmp_path / "x.png")]) == 2
    assert "no_such_model" in capsys.readouterr().err


def _truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), (rng.random((96, 128, 3)) * 255).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def test_detect_a_truncated_jpeg_is_an_error_naming_it(
    models: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    image = _truncated_jpeg(tmp_path / "cut.jpg")
    out = tmp_path / "drawn.jpg"
    assert main(["detect", "--model", str(models["planted"]), str(image),
                 "--save", str(out)]) == 2
    captured = capfd.readouterr()
    assert captured.out == "" and not out.exists()
    assert captured.err.strip() == (f"edgedet detect: error: cannot read image {image}: "
                                    "truncated JPEG (the file ends before its end-of-image "
                                    "marker)")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(1).bytes(3000))
    assert main(["detect", "--model", str(models["planted"]), str(tmp_path / "noise.png")]) == 2
    assert "noise.png: corrupt" in capfd.readouterr().err


def test_detect_a_folder_reports_each_bad_image_processes_the_rest_and_fails(
    models: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_good.png"), np.full((48, 64, 3), 30, np.uint8))
    _truncated_jpeg(folder / "b_cut.jpg")
    cv2.imwrite(str(folder / "c_cut.png"), np.full((48, 64, 3), 30, np.uint8))
    png = (folder / "c_cut.png").read_bytes()
    (folder / "c_cut.png").write_bytes(png[:len(png) - 20])
    cv2.imwrite(str(folder / "d_good.jpg"), np.full((48, 64, 3), 30, np.uint8))
    assert main(["detect", "--model", str(models["planted"]), str(folder), "--json",
                 "--save", str(tmp_path / "out")]) == 2
    captured = capfd.readouterr()
    assert [json.loads(line)["source"] for line in captured.out.splitlines()] == [
        "a_good.png", "d_good.jpg"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good.png", "d_good.jpg"]
    err = captured.err.splitlines()
    assert err[0] == (f"edgedet detect: skipped: cannot read image {folder / 'b_cut.jpg'}: "
                      "truncated JPEG (the file ends before its end-of-image marker)")
    assert err[1] == (f"edgedet detect: skipped: cannot read image {folder / 'c_cut.png'}: "
                      "truncated PNG (the file ends before its IEND chunk)")
    assert err[2:] == [f"edgedet detect: error: 2 of 4 images in {folder} were skipped "
                       "(listed above); the other 2 were processed"]


def test_detect_a_folder_skips_an_image_too_small_for_the_tiles(
    models: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((48, 64, 3), 30, np.uint8))
    cv2.imwrite(str(folder / "b_tiny.png"), np.full((1, 1, 3), 30, np.uint8))
    cv2.imwrite(str(folder / "c.png"), np.full((48, 64, 3), 30, np.uint8))
    assert main(["detect", "--model", str(models["planted"]), str(folder), "--json",
                 "--tiles", "2"]) == 2
    captured = capfd.readouterr()
    assert [json.loads(line)["source"] for line in captured.out.splitlines()] == [
        "a.png", "c.png"]
    err = captured.err.splitlines()
    assert err[0].startswith(f"edgedet detect: skipped: {folder / 'b_tiny.png'}: a 1x1 frame")
    assert err[1:] == [f"edgedet detect: error: 1 of 3 images in {folder} were skipped "
                       "(listed above); the other 2 were processed"]
    assert main(["detect", "--model", str(models["planted"]), str(folder / "b_tiny.png"),
                 "--tiles", "2"]) == 2
    assert f"error: {folder / 'b_tiny.png'}: a 1x1 frame" in capfd.readouterr().err


def test_detect_help_documents_bad_images() -> None:
    detect = build_parser()._subparsers._group_actions[0].choices["detect"]
    text = " ".join(detect.format_help().split())
    assert ("truncated image (or one too small for --tiles) is an error naming the file "
            "(exit status 2)") in text
    assert "reported on stderr and skipped, the others are processed" in text


def test_bench_reports_runtime_only_and_end_to_end(models: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", str(models["tiny"]), "--iterations", "5", "--warmup", "1",
                 "--threads", "1", "--frame-size", "160", "120", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "tiny" and result["backend"] == "onnxruntime"
    assert result["threads"] == 1 and result["frame_size"] == [160, 120]
    assert result["tiles"] == 1 and result["double_scale"] is False
    for key in ("runtime_only", "end_to_end"):
        stats = result[key]
        assert 0 < stats["p50_ms"] <= stats["p90_ms"]
        assert stats["fps"] == pytest.approx(1000 / stats["mean_ms"])
    assert main(["bench", "--model", str(models["tiny"]), "--iterations", "3",
                 "--backend", "openvino"]) == 0
    table = capsys.readouterr().out
    assert "runtime-only" in table and "end-to-end" in table and "openvino" in table
    assert "pre/post-processing (p50" in table
    assert main(["bench", "--model", str(models["tiny"]), "--iterations", "2", "--tiles", "2",
                 "--frame-size", "160", "120"]) == 0
    table = capsys.readouterr().out  # the tiles' runs are not called pre/post-processing
    assert "with 2x2 tiles: end-to-end includes their model runs" in table
    assert "everything but the 1x model run (p50" in table
    assert main(["bench", "--model", str(models["tiny"]), "--frame-size", "10", "10"]) == 2
    assert "--frame-size 10 10: image_size must be" in capsys.readouterr().err


def test_bench_without_the_runtime_says_what_to_install(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("edgedet.backend_choice.is_available", lambda name: False)
    assert main(["bench", "--model", str(models["tiny"])]) == 2
    assert "pip install onnxruntime" in capsys.readouterr().err


def test_models_lists_the_zoo(models: dict[str, Path], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    assert main(["models"]) == 0
    assert "no models in the zoo" in capsys.readouterr().out
    shutil.copytree(models["tiny"], tmp_path / "zoo" / "tiny")
    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["name", "architecture", "precision", "backend"]
    assert table[1].split()[:6] == ["tiny", "tiny_ssd", "fp32", "onnxruntime", "64x48", "3"]
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "tiny"
    # and the zoo name works wherever a model is asked for
    image = tmp_path / "f.png"
    cv2.imwrite(str(image), np.zeros((48, 64, 3), np.uint8))
    assert main(["detect", "--model", "tiny", str(image)]) == 0
    assert capsys.readouterr().out.startswith("f.png: ")


def test_detect_refuses_an_unchecked_artifact_unless_allowed(tmp_path, capsys) -> None:
    from edgedet.cli import main
    from tests.edgedet.tiny_artifacts import TinyHead, write_artifact

    unchecked = write_artifact(tmp_path / "u", TinyHead("ssd"), "ssd", checked=False)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((48, 64, 3), np.uint8))
    assert main(["detect", "--model", str(unchecked), str(image)]) != 0
    assert "allow-unchecked" in capsys.readouterr().err
    assert main(["detect", "--model", str(unchecked), "--allow-unchecked", str(image)]) == 0


def test_detect_refuses_a_save_that_would_overwrite_or_cannot_be_written(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    image = folder / "frame.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 30, np.uint8))
    original = image.read_bytes()
    (tmp_path / "a_file.jpg").write_bytes(b"kept")
    model = ["detect", "--model", str(models["planted"])]
    cases = {
        "is the source": [str(image), "--save", str(image)],
        "is the source ": [str(folder), "--save", str(folder)],
        "a folder of images needs a folder": [str(folder), "--save", str(tmp_path / "a_file.jpg")],
        "is a folder": [str(image), "--save", str(tmp_path)],
        "cannot write an image as": [str(image), "--save", str(tmp_path / "out.txt")],
    }
    for message, arguments in cases.items():
        assert main(model + arguments) == 2, message
        err = capsys.readouterr().err
        assert message.strip() in err and "Traceback" not in err, err
    assert image.read_bytes() == original  # nothing was drawn over the input
    assert (tmp_path / "a_file.jpg").read_bytes() == b"kept"
    assert not (tmp_path / "out.txt").exists()


def test_an_image_the_format_cannot_hold_is_named_with_its_size(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # JPEG stops at 65 500 pixels a side: the error says so, not "use an image extension".
    image = tmp_path / "wide.png"
    cv2.imwrite(str(image), np.full((8, 65_536, 3), 90, np.uint8))
    out = tmp_path / "wide.jpg"
    assert main(["detect", "--model", str(models["planted"]), str(image),
                 "--save", str(out)]) == 2
    err = capsys.readouterr().err
    assert "could not encode the 65536x8 result as .jpg" in err and "Traceback" not in err
    assert not out.exists()


def test_a_video_cut_short_fails_after_saving_the_frames_it_read(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = write_truncated_avi(tmp_path / "cut.avi")
    readable = count_video_frames(video)
    out = tmp_path / "drawn.avi"
    assert main(["detect", "--model", str(models["tiny"]), str(video), "--save", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"ended after {readable} of the 40 frames its header declares" in err
    assert count_video_frames(out) == readable  # what was read is kept, and said to be short
    # --max-frames within the readable part is a whole run.
    assert main(["detect", "--model", str(models["tiny"]), str(video),
                 "--max-frames", str(readable)]) == 0


def test_detect_max_frames_must_be_positive(models: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "v.mp4"
    render_synthetic_video(video, num_frames=3, config=SyntheticConfig(image_size=(64, 48)))
    assert main(["detect", "--model", str(models["planted"]), str(video),
                 "--max-frames", "0"]) == 2
    assert "--max-frames must be >= 1" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32",
                    reason="POSIX signals")
def test_sigterm_while_saving_a_video_leaves_no_temporary_file(models: dict[str, Path],
                                                               tmp_path: Path) -> None:
    video = tmp_path / "long.avi"  # long enough that the signal comes while frames are written
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(4000):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out" / "drawn.mp4"
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "edgedet", "detect", "--model", str(models["tiny"]),
         str(video), "--save", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert process.stdout is not None
    first = process.stdout.readline()  # a frame is done: the writer has its temporary file
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("edgedet detect did not stop on SIGTERM")
    assert first.startswith("frame_000000"), err
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers == [], leftovers  # neither a half video nor a hidden temporary file


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_detect_refuses_a_named_pipe_instead_of_waiting_for_a_writer(
        models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipe = tmp_path / "cam.fifo"
    os.mkfifo(pipe)
    assert main(["detect", "--model", str(models["tiny"]), str(pipe)]) == 2
    assert "named pipe" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "pipe"), reason="POSIX pipes")
@pytest.mark.parametrize("save", [False, True])
def test_a_reader_that_closes_stdout_ends_quietly_and_saves_what_was_asked(
        models: dict[str, Path], tmp_path: Path, save: bool) -> None:
    # `edgedet detect ... | head -1`: the reader is gone before the first line here (its end
    # of the pipe closed before the command starts), so the first print meets it.
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(folder / name), np.full((48, 64, 3), 30, np.uint8))
    out = tmp_path / "out"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edgedet", "detect", "--model", str(models["tiny"]),
             str(folder), *(["--save", str(out)] if save else [])],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, timeout=300)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "error" not in done.stderr, done.stderr
    if save:  # the annotated images are still written
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    else:
        assert done.returncode == 141, done.stderr  # as a shell reports an end by SIGPIPE
        assert not out.exists()
