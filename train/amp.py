"""Mixed precision on the CPU only where the CPU computes it natively.

PyTorch's CPU autocast runs bf16 / fp16 convolutions through oneDNN, which is fast only on
CPUs with the matching instructions (AVX-512 BF16 or AMX for bf16; AVX-512 FP16 or AMX-FP16
for fp16). Elsewhere it emulates them: measured on a 2-core AVX2 EPYC (2026-12-06), a 3x3
conv of 64 channels at 80x64, batch 8, took 75 ms in fp32 and 2.7 s under either autocast,
and a ``harnet_resnet18_small`` training step ran at 0.20 images/s with ``--amp bf16``
against 2.84 in fp32. So ``train/main.py --amp`` on such a CPU trains in fp32 with a
warning, as Ultralytics turns off AMP where its check fails, instead of running a job 14x
longer than the user planned. Where the instruction set cannot be read (a CPU that is not
x86 on Linux), the flag is kept as given.
"""

from __future__ import annotations

import warnings

from edgedet.cpu_features import x86_cpu_flags

# /proc/cpuinfo flags of the instructions that make each autocast precision fast on x86.
NATIVE_FLAGS: dict[str, frozenset[str]] = {
    "bf16": frozenset({"avx512_bf16", "amx_bf16"}),
    "fp16": frozenset({"avx512_fp16", "amx_fp16"}),
}


def cpu_amp(amp: str | None, flags: frozenset[str] | None) -> tuple[str | None, str | None]:
    """``(the precision to train at, a warning or None)`` for ``--amp amp`` on a CPU with
    feature ``flags`` (None: unknown, the flag is kept)."""
    if amp is None or flags is None or flags & NATIVE_FLAGS[amp]:
        return amp, None
    wanted = " or ".join(sorted(NATIVE_FLAGS[amp]))
    return None, (f"--amp {amp} ignored: this CPU has no native {amp} instructions ({wanted}), "
                  f"so PyTorch would emulate {amp} at about 14x the time of fp32 per training "
                  "step (train/amp.py); training in fp32")


def training_amp(amp: str | None, device_type: str, announce: bool) -> str | None:
    """The precision ``train/main.py`` trains at for ``--amp amp`` on ``device_type``; on a
    CPU without native support for it, None (fp32), with a warning when ``announce``."""
    if device_type != "cpu":
        return amp
    resolved, warning = cpu_amp(amp, x86_cpu_flags())
    if warning and announce:
        warnings.warn(warning, stacklevel=2)
    return resolved
