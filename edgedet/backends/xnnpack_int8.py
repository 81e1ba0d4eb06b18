"""What XNNPACK, LiteRT's default CPU kernels, gets wrong in INT8, and how to spot it.

Shared by the tflite conversion target (``quantize/ptq_tflite.py``), which keeps such ops in
float when it writes a file, and the tflite backend (``edgedet/backends/tflite.py``), which
runs a file that has them anyway (converted before the rule, or by another tool) on LiteRT's
own kernels instead. Imports no runtime.

**Long int8 reductions.** XNNPACK got int8 MEAN and SUM wrong over long reductions
(ai-edge-litert 2.3.0 on an AVX2 CPU without VNNI; whether other CPUs or versions do the same
was not established). On one-op files against LiteRT's own kernels, every input at the zero
point: right up to 8 200 elements, wrong from 8 256 on with zero point -128 (MEAN returned
126 ... -25 for -128), when the reduced axes are the innermost ones and (inferred from three
zero points) the int8 values sum beyond about 2^20 in magnitude; over outer axes (NHWC) it was
right. No reduction of at most 8 192 elements can sum beyond 2^20 (8 192 x 128), so longer
ones count as long, outer axes included. HAR-Net's cross-level group norm averages 6 channels
over every pyramid position (10 236 elements at 320x256): its INT8 file scored 16.93 AP with
XNNPACK and 33.16 with LiteRT's own kernels (fp32 33.74). CLSE's squeeze (1 706 positions) is
short.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INT8_REDUCTION_LIMIT = 8192
REDUCTION_OPS = ("MEAN", "SUM")


def reduction_size(dims: Sequence[int] | None, axes: np.ndarray | Sequence[int] | None
                   ) -> int | None:
    """How many input elements each output value of a reduction sums over: the product of
    the input's ``dims`` (-1 where unknown) at ``axes``; None where that is unknown."""
    if dims is None or axes is None:
        return None
    flat = [int(a) for a in np.asarray(axes).ravel()]
    if any(not -len(dims) <= a < len(dims) for a in flat):
        return None
    picked = [int(dims[a]) for a in {a % len(dims) for a in flat}]  # a repeated axis once
    if min([*picked, 1]) < 1:
        return None
    return int(np.prod(picked))


def is_long(size: int | None) -> bool:
    """Whether a reduction of ``size`` elements (None: unknown) may hit the bug."""
    return size is None or size > INT8_REDUCTION_LIMIT
