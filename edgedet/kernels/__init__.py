"""Compiled (numba) kernels of the per-frame work around the model: normalisation, decoding,
selection and the mapping to frame pixels; and PASSD's attend tail (``tap_sum``), the last
step of the model itself where the cpu target leaves it to the SDK (``edgedet.attend_tail``).

Why compiled: after an INT8 inference, ``detect()``'s numpy decoding and selection cost
0.5-0.7 ms per frame, nearly all of it a few hundred numpy calls whose code and data come back
from memory (``docs/performance.md``), not arithmetic. Each kernel is one call doing what a
chain of numpy calls did, element by element, in the same float32 / float64 precisions, with
thresholds compared as numpy compares them (a Python float against a float32 array: in
float32) and the same order of picks.

What differs from the numpy forms in ``edgedet.head_decoding`` and ``edgedet.boxes`` (which
stay as the readable reference the kernels are tested against): ``exp`` is numba's float32
one, not numpy's SIMD one (they differ by an ulp on 39% of float32 inputs, and neither is
correctly rounded everywhere), and sums run in index order (numpy's in eight partial sums).
So where ``exp`` enters the values differ by a few ulps: up to 3 for a sigmoid, 5 for
sigmoid x confidence, 6 for a softmax over 13 columns (15 over 81), and up to about 11 for a
Soft-NMS score after many decays; the detections, their order and boxes were the same in
every test and zoo frame but two of 400 near-ties at evaluation settings. Hard NMS, the
frame mapping and the normalisation are bit for bit.

The callers convert to C-contiguous arrays of fixed dtypes, so each kernel compiles once per
process for the SDK's calls (a read-only array is another type: once more); the machine code
is cached on disk for the next process.

The kernel modules (and numba, about half of ``import edgedet``'s time) load at the first use
of a kernel (``warm_up`` when a ``HeadDecoder`` is built), not when ``edgedet`` is imported:
the command line's ``--help`` and the commands that decode nothing do not wait for them.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgedet.kernels.decode import sigmoid_candidates, softmax_candidates
    from edgedet.kernels.frame import frame_detections, halve_to_nchw, table_to_nchw
    from edgedet.kernels.select import select_candidates, select_frame
    from edgedet.kernels.tap_sum import tail_points, tap_sum_rows

__all__ = ["frame_detections", "halve_to_nchw", "select_candidates", "select_frame",
           "sigmoid_candidates", "softmax_candidates", "table_to_nchw", "tail_points",
           "tap_sum_rows", "warm_up"]

_MODULE_OF = {"sigmoid_candidates": "decode", "softmax_candidates": "decode",
              "frame_detections": "frame", "table_to_nchw": "frame", "halve_to_nchw": "frame",
              "select_candidates": "select", "select_frame": "select",
              "tap_sum_rows": "tap_sum", "tail_points": "tap_sum"}


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


def __getattr__(name: str) -> Any:
    """A kernel, its module imported at the first access (then a plain module attribute)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    kernel = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = kernel
    return kernel


@functools.cache
def warm_up() -> None:
    """Compile (or load from the disk cache) every kernel in the forms the SDK calls them,
    once per process: ``HeadDecoder`` calls this when it is built, so that the first frame
    does not wait for the compiler (about 5 s on a fresh install, a quarter of a second to
    load the cache)."""
    from edgedet.kernels.decode import sigmoid_candidates, softmax_candidates
    from edgedet.kernels.frame import frame_detections, halve_to_nchw, table_to_nchw
    from edgedet.kernels.select import select_candidates, select_frame

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.2]], np.float32)
    select_frame(boxes, scores, 0, 0.5, True, True, 0.5, 0.5, 0.001, 100, 0.5)  # (the flags
    select_candidates(boxes, scores[:, 0].copy(), np.zeros(2, np.int64), 0.5, False, False,
                      0.5, 0.5, 0.001, 100, 0.5)  # are values, not types: one form each)
    priors = np.array([[5, 5, 10, 10], [6, 6, 10, 10]], np.float32)
    weights = np.ones(4, np.float32)
    frame_detections(boxes, scores[:, 0].copy(), np.zeros(2, np.int64), 0.5, 0.5, 0.0, 0.0,
                     640, 480)
    tables, sources = np.zeros((3, 256), np.float32), np.arange(3, dtype=np.int64)
    for array in (tables, sources):  # as preprocess._channel_tables shares them
        array.flags.writeable = False
    table_to_nchw(np.zeros((2, 2, 3), np.uint8), tables, sources)
    halve_to_nchw(np.zeros((4, 4, 3), np.uint8), tables, sources, 2, 2, 0, 0, 0)
    for width in (0, 1):
        sigmoid_candidates(scores, boxes, np.zeros((2 * width, 1), np.float32), priors,
                           weights, np.float32(0.0), False)
        softmax_candidates(scores, boxes, np.zeros((2 * width, 4), np.float32), priors,
                           weights, np.float32(0.0), False)
