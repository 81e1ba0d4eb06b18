"""Detector.close() and the with block: sessions released, later calls refused."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from edgedet import Detector
from edgedet.backends import BACKENDS
from tests.edgedet.backends.toy_backend import CLOSED
from tests.edgedet.backends.toy_backend import ClosableOrtBackend as ClosableBackend
from tests.edgedet.tiny_artifacts import TinyHead, write_artifact

FRAME = np.zeros((48, 64, 3), np.uint8)


@pytest.fixture
def artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(BACKENDS, "closable", dataclasses.replace(
        BACKENDS["onnxruntime"], name="closable", session_per_thread=True,
        implementation="tests.edgedet.backends.toy_backend:ClosableOrtBackend"))
    CLOSED.clear()
    return write_artifact(tmp_path / "a", TinyHead("ssd"), "ssd")


def test_close_releases_every_thread_s_session_and_refuses_later_calls(artifact: Path) -> None:
    ran, release = threading.Event(), threading.Event()

    def second_thread() -> None:  # a second session, alive until after the close
        detector.detect(FRAME)
        ran.set()
        release.wait(60)

    with Detector(artifact, backend="closable") as detector:
        detector.detect(FRAME)
        other = threading.Thread(target=second_thread)
        other.start()
        assert ran.wait(60)
    release.set()
    other.join()
    assert len(set(CLOSED)) == 2
    for call in (lambda: detector.detect(FRAME), lambda: detector.detect_batch([FRAME]),
                 lambda: detector.run_model(np.zeros((1, 3, 48, 64), np.float32))):
        with pytest.raises(RuntimeError, match="this Detector is closed"):
            call()
    detector.close()  # twice: nothing more
    assert len(CLOSED) == 2
    assert "tiny" in repr(detector) and detector.input_size == (64, 48)


def test_a_backend_given_as_an_object_is_the_caller_s_and_stays_open(artifact: Path) -> None:
    backend = ClosableBackend(artifact / "model.onnx")
    detector = Detector(artifact, backend=backend)
    before = detector.detect(FRAME)
    detector.close()
    assert CLOSED == []
    assert Detector(artifact, backend=backend).detect(FRAME).scores.tolist() == \
        before.scores.tolist()


def test_options_are_read_only(artifact: Path) -> None:
    # Reassigned, they reached tiling but not the decoder built from them.
    detector = Detector(artifact)
    with pytest.raises(AttributeError):
        detector.options = dataclasses.replace(detector.options, score_threshold=0.99)


def test_close_waits_for_a_run_in_progress_then_refuses_new_ones(
        artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It freed the sessions under a run another thread had in progress (a TensorRT context
    # and its GPU buffers).
    from tests.edgedet.backends.toy_backend import BlockingOrtBackend

    monkeypatch.setitem(BACKENDS, "blocking", dataclasses.replace(
        BACKENDS["onnxruntime"], name="blocking",
        implementation="tests.edgedet.backends.toy_backend:BlockingOrtBackend"))
    BlockingOrtBackend.ENTERED.clear()
    BlockingOrtBackend.RELEASE.clear()
    detector = Detector(artifact, backend="blocking")
    events: list[str] = []

    def detect() -> None:
        detector.detect(FRAME)
        events.append("run finished")

    def close() -> None:
        detector.close()
        events.append("closed")

    runner = threading.Thread(target=detect)
    runner.start()
    assert BlockingOrtBackend.ENTERED.wait(60)
    closer = threading.Thread(target=close)
    closer.start()
    closer.join(0.5)
    assert events == [] and closer.is_alive()  # close waits for the run
    BlockingOrtBackend.RELEASE.set()
    runner.join(60)
    closer.join(60)
    assert sorted(events) == ["closed", "run finished"]  # (the run was not cut short)
    assert len(CLOSED) == 1
    with pytest.raises(RuntimeError, match="closed"):
        detector.detect(FRAME)
