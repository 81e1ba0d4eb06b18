"""OpenCV's ``INTER_AREA`` downscale on two CPUs where OpenCV would use one, the same bits.

OpenCV's general (non-integer factor) area resize splits its output rows into
round(pixels / 2**16) parallel stripes, so below 1.5 * 2**16 output pixels it runs on one
thread: DAIPNet's 640x480 -> 300x300 takes 1.5 ms on one core, against 0.5 ms for PASSD's
320x320, which OpenCV splits itself. ``resize_area`` cuts such an output at a row whose first
input row is whole and resizes the two halves on two helper threads, each pinned to its own
CPU. Left to the scheduler, a helper woken right after the process had slept (a camera loop
waiting for its next frame) often landed on the caller's CPU, and the halves took turns:
1.6-1.7 ms, slower than one thread. Pinned, 0.90-0.98 ms whether the process had slept or
not (measured on the 2-core CPU). Only the two helpers are pinned; the caller's threads and
the runtimes' are left alone.
"""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

_CV2_AREA_STRIPE_PIXELS = 1 << 16
# (the process that made them, the helpers): a forked child (a DataLoader worker) inherits
# the parent's pools without their threads, and work sent there would never run.
_helpers: tuple[int, tuple[ThreadPoolExecutor, ...]] | None = None


def _pin_to(cpu: int) -> None:
    """A helper's initializer: run on ``cpu`` only (unpinned if the OS refuses)."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})  # 0: the calling thread, on Linux


def _pinned_helpers() -> tuple[ThreadPoolExecutor, ...]:
    """Two one-thread pools pinned to two different CPUs this process may run on; none where
    the OS cannot pin threads (not Linux) or allows the process a single CPU."""
    global _helpers
    if _helpers is None or _helpers[0] != os.getpid():
        cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_setaffinity") else []
        pools = tuple(ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgedet-resize{i}",
                                         initializer=_pin_to, initargs=(cpu,))
                      for i, cpu in enumerate(cpus)) if len(cpus) == 2 else ()
        _helpers = (os.getpid(), pools)
    return _helpers[1]


def area_split_row(frame_height: int, out_height: int) -> tuple[int, int] | None:
    """Where an area resize of ``frame_height`` rows to ``out_height`` rows can be cut in
    two exact halves: ``(output row k, input row k * frame_height / out_height)``, the output
    row nearest the middle whose first input row is a whole row, or None.

    Above the cut each half is an area resize of its own rows with the same factor, so OpenCV
    computes the same weights (its factor is out / in, the same double for both halves) and
    each output row sums the same input rows: the halves together are the whole to the bit
    (the tests check it over hundreds of sizes).
    """
    step = out_height // math.gcd(frame_height, out_height)
    k = round(out_height / 2 / step) * step
    if not out_height / 3 <= k <= 2 * out_height / 3:
        return None
    return k, k * frame_height // out_height


def resize_area(frame: np.ndarray, size: tuple[int, int], dst: np.ndarray | None = None
                ) -> np.ndarray:
    """``cv2.resize(frame, size, dst=dst, interpolation=cv2.INTER_AREA)`` for a downscale to
    ``size`` ``(width, height)``, the same bits; in two halves on two CPUs where OpenCV would
    use one (a general factor, fewer than 1.5 of its stripes of pixels, an exact cut).
    ``dst``: an ``(height, width, channels)`` array (a view into a larger one is fine) to
    write into instead of a new one."""
    nw, nh = size
    fh, fw = frame.shape[:2]
    if dst is not None and (dst.shape != (nh, nw, *frame.shape[2:]) or dst.dtype != frame.dtype):
        raise ValueError(f"resize_area: dst must be {frame.dtype} {(nh, nw, *frame.shape[2:])}, "
                         f"got {dst.dtype} {dst.shape}")
    integer_factors = fw % nw == 0 and fh % nh == 0  # OpenCV's fast path, already quick
    split = (area_split_row(fh, nh)
             if not integer_factors and nw * nh < 1.5 * _CV2_AREA_STRIPE_PIXELS else None)
    if split is None or not (helpers := _pinned_helpers()):
        return cv2.resize(frame, (nw, nh), dst=dst, interpolation=cv2.INTER_AREA)
    k, row = split
    out = np.empty((nh, nw, *frame.shape[2:]), dtype=frame.dtype) if dst is None else dst
    halves = [helpers[0].submit(cv2.resize, frame[:row], (nw, k), dst=out[:k],
                                interpolation=cv2.INTER_AREA),
              helpers[1].submit(cv2.resize, frame[row:], (nw, nh - k), dst=out[k:],
                                interpolation=cv2.INTER_AREA)]
    for half in halves:
        half.result()
    return out
