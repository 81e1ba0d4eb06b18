"""Mixed precision on the CPU only where the CPU computes it natively.

PyTorch's CPU autocast runs bf16 / fp16 convolutions through oneDNN, which is fast only on
CPUs with the matching instructions (AVX-512 BF16 or AMX for bf16; AVX-512 FP16 or AMX-FP16
for fp16). Elsewhere it emulates them: on a 2-core AVX2 EPYC (2026-12-06; ``python
train/bench.py --model harnet_resnet18_small --img-size 320x256 --variants
channels_last,bf16_channels_last``, interleaved) a training step ran at 3.29 images/s in
fp32 and 0.24 under bf16 autocast. So ``train/main.py --amp`` on such a CPU trains in fp32
with a warning, as Ultralytics turns off AMP where its check fails, instead of running a job
14x longer than the user planned. ``args.json`` records both the precision asked for
(``amp_requested``) and the one that ran (``amp``). Where the instruction set cannot be read
(a CPU that is not x86 on Linux), the flag is kept as given.
"""

from __future__ import annotations

import warnings

from edgedet.cpu_features import BF16_FLAGS, FP16_FLAGS, x86_cpu_flags

# /proc/cpuinfo flags of the instructions that make each autocast precision fast on x86.
NATIVE_FLAGS: dict[str, frozenset[str]] = {"bf16": BF16_FLAGS, "fp16": FP16_FLAGS}


def cpu_amp(amp: str | None, flags: frozenset[str] | None) -> tuple[str | None, str | None]:
    """``(the precision to train at, a warning or None)`` for ``--amp amp`` on a CPU with
    feature ``flags`` (None: unknown, the flag is kept)."""
    if amp is None or flags is None or flags & NATIVE_FLAGS[amp]:
        return amp, None
    wanted = " or ".join(sorted(NATIVE_FLAGS[amp]))
    return None, (f"--amp {amp} ignored: this CPU has no native {amp} instructions ({wanted}), "
                  f"so PyTorch would emulate {amp} (a training step took 14x the time of fp32 "
                  "on an AVX2 CPU: train/amp.py); training in fp32")


def training_amp(amp: str | None, device_type: str, announce: bool) -> str | None:
    """The precision ``train/main.py`` trains at for ``--amp amp`` on ``device_type``; on a
    CPU without native support for it, None (fp32), with a warning when ``announce``."""
    if device_type != "cpu":
        return amp
    resolved, warning = cpu_amp(amp, x86_cpu_flags())
    if warning and announce:
        warnings.warn(warning, stacklevel=2)
    return resolved
