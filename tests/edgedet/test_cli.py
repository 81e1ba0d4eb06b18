import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedet.cli import main


def _eval_json(capsys: pytest.CaptureFixture[str], data: Path, pred: Path) -> dict:
    assert main(["eval", "--data", str(data), "--pred", str(pred), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--num-images", "12", "--seed", "3",
                 "--img-size", "320", "240", "--quiet"]) == 0
    return out


def test_synth_writes_a_coco_dataset(synth_dir: Path) -> None:
    data = json.loads((synth_dir / "annotations.json").read_text())
    assert len(data["images"]) == 12 and len(list((synth_dir / "images").iterdir())) == 12
    assert data["images"][0]["width"] == 320 and data["images"][0]["height"] == 240
    assert [c["id"] for c in data["categories"]] == list(range(1, len(data["categories"]) + 1))
    assert len(data["categories"]) >= 10 and data["annotations"]


def test_eval_scores_ground_truth_one_and_jittered_boxes_lower(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    perfect = _eval_json(capsys, synth_dir, synth_dir / "annotations.json")
    assert set(perfect) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR"}
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AR"] == pytest.approx(1.0)

    rng = np.random.default_rng(0)
    anns = json.loads((synth_dir / "annotations.json").read_text())["annotations"]
    results = []
    for ann in anns:
        x, y, w, h = ann["bbox"]
        dx, dy = rng.normal(0, 0.15, 2) * (w, h)
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [x + dx, y + dy, w, h], "score": 0.9})
    pred = tmp_path / "jittered.json"
    pred.write_text(json.dumps(results))
    jittered = _eval_json(capsys, synth_dir, pred)
    assert 0.0 < jittered["AP"] < perfect["AP"] - 0.2
    assert jittered["AP50"] > jittered["AP75"]


def test_eval_missing_files_give_one_line_errors(synth_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--data", str(tmp_path / "none"), "--pred", "x.json"]) == 2
    assert "ground truth not found" in capsys.readouterr().err
    assert main(["eval", "--data", str(synth_dir), "--pred", str(tmp_path / "p.json")]) == 2
    assert "predictions file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]')
    assert main(["eval", "--data", str(synth_dir), "--pred", str(bad)]) == 2
    assert "999" in capsys.readouterr().err


def test_synth_video(tmp_path: Path) -> None:
    video = tmp_path / "demo.avi"
    assert main(["synth", "--video", str(video), "--frames", "5", "--img-size", "160", "120",
                 "--quiet"]) == 0
    assert video.is_file() and (tmp_path / "demo.json").is_file()


def test_synth_refuses_what_it_would_overwrite(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    theirs = tmp_path / "theirs"
    (theirs / "images").mkdir(parents=True)
    (theirs / "images" / "000000.jpg").write_bytes(b"their photo")
    ground_truth = tmp_path / "demo.json"
    ground_truth.write_text('{"their": "labels"}')
    cases = {
        "not a dataset edgedet wrote": ["--out", str(theirs)],
        "not a ground truth edgedet wrote": ["--video", str(tmp_path / "demo.mp4"),
                                             "--frames", "2"],
        "from 0.01 to 1000": ["--video", str(tmp_path / "fast.mp4"), "--frames", "2",
                              "--fps", "65536"],
        "at 0.001 fps; give a frame rate from 0.01": ["--video", str(tmp_path / "slow.mp4"),
                                                      "--frames", "2", "--fps", "0.001"],
        "a file stands where a folder of this path should be": [
            "--video", str(ground_truth / "v.avi"), "--frames", "2"],
        "not both": ["--video", str(tmp_path / "v.avi"), "--out", str(tmp_path / "ds")],
    }
    for message, arguments in cases.items():
        assert main(["synth", *arguments, "--num-images", "1", "--quiet"]) == 2, message
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse's own usage error
        main(["synth", "--out", "", "--quiet"])
    assert usage.value.code == 2 and "an empty path" in capsys.readouterr().err
    assert (theirs / "images" / "000000.jpg").read_bytes() == b"their photo"
    assert ground_truth.read_text() == '{"their": "labels"}'
    assert not (tmp_path / "demo.mp4").exists() and not (tmp_path / "fast.mp4").exists()
    assert not (tmp_path / "slow.mp4").exists()
    # its own outputs it writes again, and small frames render (a short side of 32-39 px
    # failed in the distractor sizes)
    video = tmp_path / "small.avi"
    for _ in range(2):
        assert main(["synth", "--video", str(video), "--frames", "2", "--img-size", "38", "38",
                     "--quiet"]) == 0


def test_every_command_has_help() -> None:
    for args in ([], ["synth"], ["eval"]):
        result = subprocess.run([sys.executable, "-m", "edgedet", *args, "--help"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "usage: edgedet" in result.stdout
