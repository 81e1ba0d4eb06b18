"""After ``detect()`` returns, no thread of the SDK's keeps a core busy.

A runtime thread left spinning (ONNX Runtime's default after a run; OpenBLAS after a
multi-threaded numpy matmul, tens of milliseconds each) takes a core from whatever the process
runs next: the next model, the camera app's drawing. Measured on the 2-core CPU: a model run
right after a numpy matmul of a few million multiply-adds took 2.1x its time. This checks CPU
time, not speed: over a sleep right after ``detect()``, the process's CPU time is what its own
threads burn, however loaded the machine is (a spinning thread burns about the whole sleep).
"""

import statistics
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgedet import Detector
from edgedet.area_resize import area_split_row, resize_area
from edgedet.backends import is_available
from tests.edgedet.tiny_artifacts import TinyHead, write_artifact

SLEEP_S = 0.05


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_artifact(tmp_path_factory.mktemp("idle") / "a", TinyHead("passd", seed=3),
                          "passd", postprocess={"nms_mode": "soft+voting"})


def cpu_burnt_while_sleeping(after: object, sleep_s: float = SLEEP_S) -> float:
    """Median seconds of process CPU time over ``sleep_s`` of sleep right after ``after()``."""
    burnt = []
    for _ in range(5):
        after()  # type: ignore[operator]
        start = time.process_time()
        time.sleep(sleep_s)
        burnt.append(time.process_time() - start)
    return statistics.median(burnt)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_no_thread_keeps_spinning_after_detect(artifact: Path, backend: str) -> None:
    if not is_available(backend):
        pytest.skip(f"{backend} is not installed")
    detector = Detector(artifact, backend=backend, threads=2, score_threshold=0.0)
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for _ in range(3):
        detector.detect(frame)
    # One spinning thread would burn about SLEEP_S; OpenVINO's threads park within ~1 ms.
    assert cpu_burnt_while_sleeping(lambda: detector.detect(frame)) < SLEEP_S / 5


def test_the_resize_thread_parks_after_the_resize() -> None:
    """``resize_area``'s helper threads (DAIPNet's 640x480 -> 300x300 takes that path) wait
    on a queue, not in a loop."""
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert area_split_row(480, 300) is not None
    assert cpu_burnt_while_sleeping(lambda: resize_area(frame, (300, 300))) < SLEEP_S / 5


def test_the_check_sees_a_spinning_thread() -> None:
    """The control: a thread that busy-waits through the sleep is seen. On a loaded machine
    (the test run's own workers) such a thread gets a share of a core, not all of it, so the
    control asks for a few percent of one over a longer sleep: an idle process burns about
    0.06 ms per 30 ms."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        burnt = cpu_burnt_while_sleeping(lambda: None, sleep_s=0.2)
    finally:
        stop.set()
        thread.join()
    assert burnt > 0.005
