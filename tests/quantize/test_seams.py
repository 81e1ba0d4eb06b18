"""The seams of the pipeline: a new target and a new backend, each one file plus one table
entry, go through ``convert(...)`` and ``Detector`` with nothing else changed."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgedet.backends import BACKENDS, BackendError
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.detector import Detector
from quantize.convert import ConvertConfig, convert
from quantize.targets import TARGETS
from tests.edgedet.backends import toy_backend
from tests.quantize import toy_target
from tests.quantize.tiny_checkpoint import INPUT_SIZE, write_tiny_checkpoint


@pytest.fixture
def toy_tables(monkeypatch):
    monkeypatch.setitem(BACKENDS, "toy", toy_backend.SPEC)
    monkeypatch.setitem(TARGETS, "toy", toy_target.TARGET)


def test_toy_target_and_backend_through_convert_and_detector(toy_tables, tmp_path: Path):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt" / "tiny")
    report = convert(ConvertConfig(checkpoint=checkpoint, target="toy", out=tmp_path / "out",
                                   name="tiny", eval_size=3, device="cpu", progress=False,
                                   allow_weak_reference=True))
    assert [(a.name, a.backend, a.precision) for a in report.artifacts] == [
        ("tiny_fp32", "toy", "fp32")]
    # (The untrained checkpoint scores AP 0 on both sides, so the gate says little here;
    # what this test checks is the plumbing: the toy target's file, backend and threads.)
    assert report.passed and report.artifacts[0].accuracy["reference_AP"] == 0.0
    assert report.to_dict()["target"] == "toy"

    detector = Detector(tmp_path / "out" / "tiny_fp32")  # "auto": the manifest's backend
    assert detector.backend_name == "toy"
    assert sorted(detector.info["files"]) == ["model.toy"]
    frames = list(SyntheticScenes(4, seed=5, config=SyntheticConfig(image_size=INPUT_SIZE)))
    expected = [detector.detect(s.image) for s in frames]

    # session_per_thread: every thread gets its own toy session, results unchanged.
    first = next(toy_backend.SESSIONS)
    results: dict[int, list] = {}

    def work(index: int) -> None:
        results[index] = [detector.detect(s.image) for s in frames]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert next(toy_backend.SESSIONS) - first - 1 == 3
    for found in results.values():
        for got, want in zip(found, expected, strict=True):
            np.testing.assert_array_equal(got.xyxy, want.xyxy)
            np.testing.assert_array_equal(got.class_ids, want.class_ids)


def test_device_option_reaches_the_backend(toy_tables, tmp_path: Path):
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt" / "tiny")
    convert(ConvertConfig(checkpoint=checkpoint, target="toy", out=tmp_path / "out",
                          name="tiny", eval_size=2, device="cpu", progress=False,
                          allow_weak_reference=True))
    with pytest.raises(BackendError, match="cpu only, not 'GPU'"):
        Detector(tmp_path / "out" / "tiny_fp32", device="GPU")


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match="unknown target 'toy'"):
        ConvertConfig(checkpoint="x", target="toy", out="y")
