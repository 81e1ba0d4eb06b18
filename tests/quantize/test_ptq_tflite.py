"""``quantize.ptq_tflite.calibrate``: how the calibration images' ranges become one range."""

from __future__ import annotations

import numpy as np
import pytest

from quantize.ptq_tflite import SIGNATURE, calibrate


class FakeQuantizer:
    """Stands in for ai-edge-quantizer's ``Quantizer``: each image's range is its pixel min
    and max, and a call over several images keeps a moving average like the real one."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def calibrate(self, data: dict, num_threads: int = 1) -> dict:
        (samples,) = data.values()
        assert list(data) == [SIGNATURE]
        self.calls.append(len(samples))
        merged: dict | None = None
        for sample in samples:
            image = sample["images"]
            qsv = {"min": np.array([image.min()]), "max": np.array([image.max()])}
            merged = qsv if merged is None else {
                k: 0.95 * merged[k] + 0.05 * qsv[k] for k in ("min", "max")}
        return {"x": merged, "empty": {}}


def samples(*ranges: tuple[float, float]) -> list[dict[str, np.ndarray]]:
    return [{"images": np.array([lo, hi], dtype=np.float32)} for lo, hi in ranges]


def test_minmax_keeps_the_extremes_of_every_image():
    engine = FakeQuantizer()
    ranges = calibrate(engine, samples((-1, 2), (-3, 1), (0, 5)), "minmax")
    assert engine.calls == [1, 1, 1]  # one image per call
    assert ranges["x"]["min"].tolist() == [-3.0] and ranges["x"]["max"].tolist() == [5.0]
    assert ranges["empty"] == {}  # tensors without a range stay so


def test_moving_average_is_the_quantizers_own():
    engine = FakeQuantizer()
    ranges = calibrate(engine, samples((-1, 2), (-3, 1)), "moving-average")
    assert engine.calls == [2]
    np.testing.assert_allclose(ranges["x"]["min"], [0.95 * -1 + 0.05 * -3])
    np.testing.assert_allclose(ranges["x"]["max"], [0.95 * 2 + 0.05 * 1])


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown calibration method 'entropy'"):
        calibrate(FakeQuantizer(), samples((0, 1)), "entropy")
