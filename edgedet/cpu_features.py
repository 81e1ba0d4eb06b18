"""The x86 instruction-set extensions that change what INT8 and bf16 compute here, and how
many cores this process may use.

Two kinds of x86 CPU matter to this project: with VNNI (``avx512_vnni`` / ``avx_vnni``) the
INT8 dot products of ONNX Runtime and OpenVINO add u8 x s8 products in 32 bits; without it
(AVX2, or AVX-512 alone) they add pairs of products in 16 bits first, which clip for large
8-bit weights (``quantize/run.py --int8-weight-bits 7`` avoids it). And PyTorch's bf16 / fp16
autocast is fast only with AVX-512 BF16 / FP16 or AMX (``train/amp.py``).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
# What makes PyTorch's (and OpenVINO's) bf16 / fp16 compute fast rather than emulated.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})
# Intel's tile units: OpenVINO's CPU plugin (oneDNN) runs INT8 and bf16 convolutions and
# matrix products on them where present (its profile names the kernels ``*_amx_*``). They
# change speed, not results (INT8 sums stay exact in 32 bits), so they are part of the speed
# description only.
AMX_FLAGS = frozenset({"amx_int8", "amx_bf16"})
# oneDNN's cap on the instruction set it may use, honoured by OpenVINO's CPU plugin:
# ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` runs this CPU's kernels as on one without AMX.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def x86_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags on x86 Linux; None where they cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return None
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def describe(flags: frozenset[str] | None) -> str:
    """The extensions that change this project's figures, e.g. ``AVX-512, VNNI, BF16`` or
    ``AVX2, no VNNI, no BF16``; ``instruction set unknown`` without flags."""
    if flags is None:
        return "instruction set unknown"
    level = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    vnni = "VNNI" if flags & VNNI_FLAGS else "no VNNI"
    bf16 = "BF16" if flags & BF16_FLAGS else "no BF16"
    return f"{level}, {vnni}, {bf16}"


def describe_for_speed(flags: frozenset[str] | None,
                       environ: Mapping[str, str] | None = None) -> str:
    """``describe`` plus what changes speed but not results: AMX, and a oneDNN instruction
    set cap set in the environment, e.g. ``AVX-512, VNNI, BF16, AMX`` or ``AVX-512, VNNI,
    BF16, AMX, ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``. Measured on the AMX CPU of 2026-12-07:
    OpenVINO's bf16 default ran the paper-width PASSD 2.7x faster than f32 (1.75x in issue
    15's figures), and the pruned HAR-Net's INT8 IR took 0.75x the unpruned one's time, 0.54x
    with AMX capped off (ONNX Runtime's figures did not move with it)."""
    text = describe(flags)
    if flags is not None and "avx512f" in flags:
        text += ", AMX" if flags & AMX_FLAGS else ", no AMX"
    environ = os.environ if environ is None else environ
    caps = [f"{name}={environ[name]}" for name in ISA_CAP_VARIABLES if environ.get(name)]
    return ", ".join([text, *caps])


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. ``AMD EPYC``), else what ``platform``
    knows."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name")), model)
    except OSError:
        return model


def host_description() -> str:
    """The CPU model and its kind, e.g. ``AMD EPYC, AVX2, no VNNI, no BF16``: recorded with
    each accuracy check (``checked_on``), since INT8 and bf16 compute differently on CPUs of
    another kind."""
    return f"{cpu_model_name()}, {describe(x86_cpu_flags())}"


def int8_sums_can_clip() -> bool:
    """True on an x86 CPU known to lack VNNI (its INT8 kernels add pairs in 16 bits)."""
    flags = x86_cpu_flags()
    return flags is not None and not flags & VNNI_FLAGS


def _own_cgroups(proc_cgroup: Path) -> tuple[str, str]:
    """This process's cgroup v2 path and v1 ``cpu`` controller path ("/" where unknown)."""
    v2, v1 = "/", "/"
    try:
        for line in proc_cgroup.read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0" and not controllers:
                v2 = path
            elif "cpu" in controllers.split(","):
                v1 = path
    except (OSError, ValueError):
        pass
    return v2, v1


def _with_ancestors(base: Path, path: str) -> list[Path]:
    """``base/path`` and each folder above it up to ``base``: a quota on any of them holds."""
    folder = base / path.strip("/")
    return [folder, *[p for p in folder.parents if p == base or base in p.parents]]


def _quota_v2(folder: Path) -> float | None:
    quota, _, period = (folder / "cpu.max").read_text().partition(" ")
    return None if quota.strip() == "max" else int(quota) / int(period)


def _quota_v1(folder: Path) -> float | None:
    quota_us = int((folder / "cpu.cfs_quota_us").read_text())
    period_us = int((folder / "cpu.cfs_period_us").read_text())
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _cgroup_cpu_limit(root: Path, proc_cgroup: Path) -> float | None:
    """The CPUs' worth of time the tightest cgroup quota over this process allows (cgroup v2
    ``cpu.max``, else v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, on its own cgroup and
    every one above it, under ``root``); None without a quota."""
    v2, v1 = _own_cgroups(proc_cgroup)
    limits = []
    for read, folders in ((_quota_v2, _with_ancestors(root, v2)),
                          (_quota_v1, _with_ancestors(root / "cpu", v1))):
        for folder in folders:
            try:
                limit = read(folder)
            except (OSError, ValueError):
                continue
            if limit is not None:
                limits.append(limit)
        if limits:
            break
    return min(limits) if limits else None


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup"),
                 proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota
    (rounded up; a quota of 1.5 CPUs counts 2), at least 1. The default thread count of the
    backends that pick their own (``edgedet/backends/tflite.py``) and of the test workers."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    limit = _cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)
