"""What the kernels share: the compiling decorator and float32 scalar helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from edgedet.box_coding import BBOX_XFORM_CLIP


def compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with the machine code cached on disk, or without where no cache folder
    is writable (a read-only install with a read-only home: numba refuses ``cache=True``
    there at decoration, which would make ``import edgedet`` fail; the kernels then compile
    in each process, about 5 s)."""
    def compile_(function: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**options)(function)
    return compile_


CLIP32 = np.float32(BBOX_XFORM_CLIP)
ONE = np.float32(1.0)
TWO = np.float32(2.0)
ZERO = np.float32(0.0)

@compiled(inline="always")
def fmin(a, b):  # type: ignore[no-untyped-def]
    """``np.minimum``: NaN if either is NaN (Python's ``min`` is not)."""
    return a if (a <= b or a != a) else b


@compiled(inline="always")
def fmax(a, b):  # type: ignore[no-untyped-def]
    """``np.maximum``: NaN if either is NaN."""
    return a if (a >= b or a != a) else b
