import json
import math

import cv2
import numpy as np
import pytest

from train.curves import COLOURS, _nice_ticks, curves_picture, main, window_means, write_curves


def test_window_means_by_hand() -> None:
    # windows of 2 records; the NaN (a skipped step) is left out of its window
    xs, ys = window_means([0, 1, 2, 3, 4, 5], [1.0, 2.0, 3.0, math.nan, 5.0, 7.0], windows=3)
    assert xs == [0.5, 2.0, 4.5] and ys == [1.5, 3.0, 6.0]
    assert window_means([0, 1], [math.nan, math.inf]) == ([], [])


def test_ticks_are_round_and_cover_the_range() -> None:
    assert _nice_ticks(0.0, 10.0) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert _nice_ticks(3.2, 4.9) == pytest.approx([3.5, 4.0, 4.5])
    assert _nice_ticks(1.0, 3.0, integer=True) == [1.0, 2.0, 3.0]  # epochs: no 1.5


def _write_log(run_dir, steps=200, epochs=4, with_eval=True) -> None:
    lines = []
    for i in range(steps):
        loss = 10.0 * math.exp(-i / 80) + 1.0
        lines.append({"type": "train", "epoch": i * epochs // steps, "iteration": i,
                      "lr": 1e-3, "loss": loss if i != 7 else math.nan,
                      "cls": 0.6 * loss, "box": 0.4 * loss, "images_per_s": 5.0})
    for e in range(epochs if with_eval else 0):
        lines.append({"type": "eval", "epoch": e, "iteration": (e + 1) * steps // epochs - 1,
                      "AP": 0.1 * (e + 1), "AP50": 0.15 * (e + 1), "APs": 0.01 * e})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_write_curves_draws_both_panels(tmp_path) -> None:
    _write_log(tmp_path)
    path = write_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    picture = cv2.imread(str(path))
    assert picture.shape == (428, 1280, 3)
    loss_colour, ap_colour = np.array(COLOURS[0]), np.array(COLOURS[1])
    left, right = picture[28:, :640], picture[28:, 640:]
    assert (np.abs(left.astype(int) - loss_colour).sum(-1) == 0).sum() > 200  # the loss line
    assert (np.abs(right.astype(int) - ap_colour).sum(-1) == 0).sum() > 50  # AP50 line + dots
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_a_run_without_evaluations_or_steps_still_draws(tmp_path) -> None:
    _write_log(tmp_path, with_eval=False)
    assert cv2.imread(str(write_curves(tmp_path))).shape == (428, 1280, 3)
    assert curves_picture([], []).shape == (428, 1280, 3)


def test_cli(tmp_path, capsys) -> None:
    assert main([str(tmp_path)]) == 1
    assert "has no metrics.jsonl" in capsys.readouterr().err
    _write_log(tmp_path)
    out = tmp_path / "elsewhere.png"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "curves.png").exists()
    capsys.readouterr()
    assert main([str(tmp_path), "--out", str(out / "under_a_file.png")]) == 1
    assert "elsewhere.png: a file stands where a folder" in capsys.readouterr().err
