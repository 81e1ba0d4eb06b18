"""Killing ``quantize/run.py`` at random moments never leaves an artifact missing, half-written
or unchecked, and the next run leaves no temporaries behind (slow: about 20 runs)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedet.artifact import load_manifest
from tests.quantize.tiny_checkpoint import write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN = str(REPO_ROOT / "quantize" / "run.py")
KILLS = 20
NAMES = ("tiny_passd_fp32", "tiny_passd_int8")


def _start(checkpoint: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, RUN, "--checkpoint", str(checkpoint), "--target", "cpu", "--out",
         str(out), "--calib-size", "4", "--eval-size", "3", "--no-progress", "--device", "cpu",
         "--allow-weak-reference"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _assert_artifacts_checked(out: Path) -> None:
    for name in NAMES:
        manifest = load_manifest(out / name)  # present, complete, every hash matching
        assert manifest["accuracy"]["passed"] is True, name


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.name != ".lock")


@pytest.mark.slow
def test_random_kills_never_break_the_artifacts(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny")
    out = tmp_path / "out"
    start = time.monotonic()
    assert _start(checkpoint, out).wait(timeout=600) == 0
    duration = time.monotonic() - start
    _assert_artifacts_checked(out)
    rng = random.Random(7)
    for _ in range(KILLS):
        process = _start(checkpoint, out)
        # Anywhere from start-up to just past the end of a run (a late kill finds it done).
        try:
            process.wait(timeout=rng.uniform(0.0, 1.1 * duration))
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        _assert_artifacts_checked(out)
    assert _start(checkpoint, out).wait(timeout=600) == 0
    _assert_artifacts_checked(out)
    assert _leftovers(out) == []
