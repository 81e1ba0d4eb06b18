"""``edgedet.area_resize``: OpenCV's area resize in two exact halves on two pinned CPUs."""

import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.area_resize import _pinned_helpers, area_split_row, resize_area

REPO_ROOT = Path(__file__).resolve().parents[2]
TWO_CPUS = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def test_area_split_row_hand_values() -> None:
    # 480 -> 300 rows: factor 1.6, output row 150 starts at input row 240.
    assert area_split_row(480, 300) == (150, 240)
    # 480 -> 225: only every 15th output row starts on a whole input row (15 * 32 / 15).
    assert area_split_row(480, 225) == (120, 256)
    # 479 and 300 share no factor: no output row but the first starts on a whole row.
    assert area_split_row(479, 300) is None


@pytest.mark.parametrize("frame_size", [(640, 480), (1280, 720), (641, 479), (777, 333)])
def test_resize_area_is_opencvs_area_resize_to_the_bit(frame_size: tuple[int, int]) -> None:
    fw, fh = frame_size
    rng = np.random.default_rng(fw)
    frame = rng.integers(0, 256, (fh, fw, 3), dtype=np.uint8)
    strided = np.concatenate([frame, frame], axis=1)[:, ::2]  # a view, not contiguous
    halves_used = 0
    for nh in range(40, fh, 7):
        for nw in (300, 256, 97):
            halves_used += area_split_row(fh, nh) is not None and nw * nh < 1.5 * 2**16
            for source in (frame, strided):
                expected = cv2.resize(source, (nw, nh), interpolation=cv2.INTER_AREA)
                np.testing.assert_array_equal(resize_area(source, (nw, nh)), expected,
                                              err_msg=f"{frame_size} -> {(nw, nh)}")
            # Into a view of a wider canvas (a letterbox's middle), the canvas around it
            # untouched.
            canvas = np.zeros((nh, nw + 10, 3), np.uint8)
            written = resize_area(frame, (nw, nh), canvas[:, 4:4 + nw])
            assert np.shares_memory(written, canvas)
            np.testing.assert_array_equal(canvas[:, 4:4 + nw], cv2.resize(
                frame, (nw, nh), interpolation=cv2.INTER_AREA))
            assert not canvas[:, :4].any() and not canvas[:, 4 + nw:].any()
    if math.gcd(fw, fh) > 1:
        assert halves_used > 20  # the two-thread path is the one checked


_FORKED_CHILD_SCRIPT = """
import multiprocessing
import numpy as np
from edgedet.area_resize import resize_area
frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
expected = resize_area(frame, (300, 300))  # the parent's pool now has its thread
with multiprocessing.get_context("fork").Pool(1) as pool:
    result = pool.apply_async(resize_area, (frame, (300, 300))).get(timeout=60)
assert np.array_equal(result, expected)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_resize_area_works_in_a_forked_child_after_the_parent_used_it() -> None:
    # A fresh interpreter: forking the test process itself would fork whatever other tests
    # started in it (JAX's threads, which warn).
    result = subprocess.run([sys.executable, "-c", _FORKED_CHILD_SCRIPT], capture_output=True,
                            text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not TWO_CPUS, reason="needs two CPUs and thread affinity")
def test_the_two_helpers_are_pinned_to_two_cpus_and_the_caller_is_not() -> None:
    before = os.sched_getaffinity(0)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    resize_area(frame, (300, 300))  # starts both helpers
    helpers = [t for t in threading.enumerate() if t.name.startswith("edgedet-resize")]
    pins = sorted(tuple(os.sched_getaffinity(t.native_id)) for t in helpers)
    assert len(pins) == 2 and all(len(p) == 1 for p in pins) and pins[0] != pins[1]
    assert os.sched_getaffinity(0) == before


_ONE_CPU_SCRIPT = """
import os
import cv2
import numpy as np
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from edgedet.area_resize import _pinned_helpers, resize_area
frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
assert np.array_equal(resize_area(frame, (300, 300)),
                      cv2.resize(frame, (300, 300), interpolation=cv2.INTER_AREA))
assert _pinned_helpers() == ()
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs thread affinity")
def test_a_process_on_one_cpu_resizes_on_its_own_thread() -> None:
    result = subprocess.run([sys.executable, "-c", _ONE_CPU_SCRIPT], capture_output=True,
                            text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert _pinned_helpers() != () or not TWO_CPUS  # this process still has its helpers



def test_resize_area_refuses_a_dst_of_the_wrong_shape_or_dtype() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    for dst in (np.zeros((300, 301, 3), np.uint8), np.zeros((300, 300, 3), np.float32)):
        with pytest.raises(ValueError, match="dst must be uint8"):
            resize_area(frame, (300, 300), dst)
