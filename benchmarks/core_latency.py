"""How far apart the two CPUs the benchmarks run on are: a cache line's round trip between them.

    python benchmarks/core_latency.py [--samples 10] [--interval 5] [--trips 5000]

Why: on this project's 2-core cloud machine the two virtual CPUs are sometimes placed on
cores that share a cache and sometimes on distant ones, and the placement changes within
seconds to minutes. Measured on 2026-12-05 with the same OpenVINO models, one thread's
latency did not change with it, but two threads' did, and INT8 more than bf16 (zoo
MobileNet-PASSD):

| round trip (C / this Python probe) | INT8, 2 threads vs 1 | INT8 ms | bf16 default ms |
|---|---|---|---|
| 55-90 ns / 200-280 ns | 1.70-1.86x | 10.7-11.8 | 17.1-17.6 |
| 330-400 ns / 320-500 ns | 1.17-1.44x | 14.2-17.4 | 18.1-22.8 |

On distant CPUs each parallel op pays a fixed cost (OpenVINO's profile: about 14 us between
nodes), which weighs more in an INT8 model's shorter ops. The benchmarks read the round trip
between the items they time and report the calls of each placement apart
(``benchmarks/common/timing.py``, ``benchmarks/speed.py``).

The probe: a helper process pinned to the second CPU answers flips of one shared byte that
the caller's thread, pinned to the first CPU for the duration, makes. Pure Python, so the
interpreter adds about 160 ns to each round trip, but the two placements stay apart.
Between probes the helper blocks on a pipe and uses no CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import statistics
import subprocess
import sys
import time
from typing import IO

# Calls between readings of at least this ran on distant CPUs: the Python probe read
# 200-280 ns on near CPUs and 320-500 ns on distant ones.
FAR_NS = 300.0
_WARMUP_TRIPS = 200
BATCH_TRIPS = 1000
_SPINS_PER_CLOCK_CHECK = 1_000_000  # the clock is read this rarely: the loop stays tight
_PATIENCE_S = 30.0  # a partner silent this long has died (or the machine has stalled)


def _wait_for(flag: mmap.mmap, value: int) -> None:
    spins, deadline = 0, None
    while flag[0] != value:
        spins += 1
        if spins > _SPINS_PER_CLOCK_CHECK:
            spins, now = 0, time.monotonic()
            if deadline is None:
                deadline = now + _PATIENCE_S
            elif now > deadline:
                raise RuntimeError("core latency probe: the other side stopped answering")


def _respond(fd: int, cpu: int, requests: IO[str]) -> None:
    """The helper (``--respond FD CPU``, its own interpreter): pinned to ``cpu``, answer the
    number of flips each line of ``requests`` asks for, until the line stream ends."""
    os.sched_setaffinity(0, {cpu})
    with mmap.mmap(fd, mmap.PAGESIZE) as flag:
        for line in requests:
            for _ in range(int(line)):
                _wait_for(flag, 1)
                flag[0] = 0


class CoreLatencyProbe:
    """Round trips of a cache line between the first two CPUs this process may use.

    ``with CoreLatencyProbe() as probe: probe.measure()`` -> ns per round trip. The helper is
    a second Python interpreter started by ``subprocess`` (never a fork of this process,
    which may hold the runtimes' threads), sharing one page of anonymous memory (memfd). On
    a machine with one CPU available, or without thread affinity, ``available`` is False and
    ``measure`` returns None.
    """

    def __init__(self, trips: int = 5000) -> None:
        self.trips = trips
        linux = hasattr(os, "sched_getaffinity") and hasattr(os, "memfd_create")
        cpus = sorted(os.sched_getaffinity(0)) if linux else []
        self.available = len(cpus) >= 2
        if not self.available:
            return
        self._cpu = cpus[0]
        self._fd = fd = os.memfd_create("edgedet-core-latency")
        os.ftruncate(fd, mmap.PAGESIZE)
        self._flag = mmap.mmap(fd, mmap.PAGESIZE)
        self._helper = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--respond", str(fd), str(cpus[1])],
            stdin=subprocess.PIPE, text=True, pass_fds=(fd,))
        assert self._helper.stdin is not None
        self._requests: IO[str] = self._helper.stdin

    def measure(self) -> float | None:
        """Round trip in ns: the median over batches of ``BATCH_TRIPS`` flips (after a few
        untimed ones), so that one preemption of either side does not count."""
        if not self.available:
            return None
        flag = self._flag
        batches = max(1, self.trips // BATCH_TRIPS)
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self._cpu})  # this thread only: the runtimes' pools stay
        try:
            self._requests.write(f"{_WARMUP_TRIPS + batches * BATCH_TRIPS}\n")
            self._requests.flush()
            for _ in range(_WARMUP_TRIPS):
                flag[0] = 1
                _wait_for(flag, 0)
            means = []
            for _ in range(batches):
                start = time.perf_counter()
                for _ in range(BATCH_TRIPS):
                    flag[0] = 1
                    _wait_for(flag, 0)
                means.append((time.perf_counter() - start) / BATCH_TRIPS * 1e9)
            return statistics.median(means)
        finally:
            os.sched_setaffinity(0, affinity)

    def close(self) -> None:
        if not self.available:
            return
        with contextlib.suppress(OSError):  # a helper that died has closed its end
            self._requests.close()
        try:
            self._helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._helper.kill()
            self._helper.wait()
        self._flag.close()
        os.close(self._fd)
        self.available = False

    def __enter__(self) -> CoreLatencyProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def placement(before_ns: float | None, after_ns: float | None, far_ns: float = FAR_NS
              ) -> str | None:
    """``"near"`` or ``"far"`` where the readings before and after an item's calls agree,
    else None (the placement changed while they ran, or there was no probe)."""
    if before_ns is None or after_ns is None:
        return None
    near = (before_ns < far_ns, after_ns < far_ns)
    return "near" if all(near) else "far" if not any(near) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10, help="probes to print (default 10)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between probes (default 5)")
    parser.add_argument("--respond", nargs=2, metavar=("FD", "CPU"), help=argparse.SUPPRESS)
    parser.add_argument("--trips", type=int, default=5000,
                        help="round trips per probe (default 5000)")
    args = parser.parse_args(argv)
    if args.respond:  # the probe's helper, started by CoreLatencyProbe
        _respond(int(args.respond[0]), int(args.respond[1]), sys.stdin)
        return 0
    if args.samples < 1 or args.trips < 1 or args.interval < 0:
        parser.error("--samples and --trips must be >= 1, --interval >= 0")
    with CoreLatencyProbe(args.trips) as probe:
        if not probe.available:
            print("fewer than two CPUs available to this process: nothing to measure")
            return 1
        readings = []
        for index in range(args.samples):
            if index:
                time.sleep(args.interval)
            readings.append(probe.measure())
            kind = "far" if readings[-1] >= FAR_NS else "near"
            print(f"{time.strftime('%H:%M:%S')} round trip {readings[-1]:.0f} ns ({kind})",
                  flush=True)
        print(f"median {statistics.median(readings):.0f} ns; 'far' from {FAR_NS:.0f} ns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
