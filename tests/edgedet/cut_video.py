"""A video file cut short, for the tests of whatever reads videos."""

from pathlib import Path

import numpy as np

from edgedet.video import AtomicVideoWriter


def write_truncated_avi(path: Path, frames: int = 40) -> Path:
    """An MJPG AVI of ``frames`` noise frames whose second half of bytes is cut off (a copy
    interrupted): its header still declares every frame, about half of them read."""
    writer = AtomicVideoWriter(path, fps=25.0)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    writer.finish()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path
