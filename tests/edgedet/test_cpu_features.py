"""``edgedet.cpu_features``: the x86 flags read from /proc/cpuinfo, and what they say."""

import pytest

import edgedet.cpu_features as features
from edgedet.cpu_features import (
    describe,
    describe_for_speed,
    int8_sums_can_clip,
    x86_cpu_flags,
)

CPUINFO = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 {extra}\n\n"
           "processor\t: 1\nflags\t\t: fpu avx2 {extra}\n")


def test_flags_are_read_from_cpuinfo_on_x86_only(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra="avx512_bf16"))
    monkeypatch.setattr(features.platform, "machine", lambda: "x86_64")
    assert x86_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert x86_cpu_flags(tmp_path / "missing") is None
    (tmp_path / "no_flags").write_text("processor\t: 0\n")
    assert x86_cpu_flags(tmp_path / "no_flags") is None
    monkeypatch.setattr(features.platform, "machine", lambda: "aarch64")
    assert x86_cpu_flags(cpuinfo) is None


@pytest.mark.parametrize(("flags", "clips"), [
    (frozenset({"avx2"}), True),
    (frozenset({"avx2", "avx512f", "avx512bw"}), True),
    (frozenset({"avx2", "avx512_vnni"}), False),
    (frozenset({"avx2", "avx_vnni"}), False),
    (None, False),  # not x86 / unreadable: not known to clip
])
def test_int8_sums_clip_only_without_vnni(monkeypatch, flags, clips):
    monkeypatch.setattr(features, "x86_cpu_flags", lambda: flags)
    assert int8_sums_can_clip() is clips


def test_the_description_names_what_changes_int8_and_bf16_speed():
    assert describe(None) == "instruction set unknown"
    assert describe(frozenset({"avx2"})) == "AVX2, no VNNI, no BF16"
    assert describe(frozenset({"avx2", "avx_vnni"})) == "AVX2, VNNI, no BF16"
    assert describe(frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})) == (
        "AVX-512, VNNI, BF16")
    assert describe(frozenset({"sse2"})) == "no AVX2, no VNNI, no BF16"
    # AMX changes speed, not results: the accuracy description (checked_on) leaves it out.
    assert describe(frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"})) == (
        "AVX-512, VNNI, BF16")


def test_the_speed_description_adds_amx_and_a_onednn_cap():
    amx = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    assert describe_for_speed(amx, {}) == "AVX-512, VNNI, BF16, AMX"
    assert describe_for_speed(amx - {"amx_bf16", "amx_int8"}, {}) == (
        "AVX-512, VNNI, BF16, no AMX")
    assert describe_for_speed(amx, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "PATH": "/"}) == (
        "AVX-512, VNNI, BF16, AMX, ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI")
    # AMX exists only beside AVX-512: an AVX2 CPU's description does not mention it.
    assert describe_for_speed(frozenset({"avx2"}), {}) == "AVX2, no VNNI, no BF16"
    assert describe_for_speed(None, {}) == "instruction set unknown"


@pytest.mark.parametrize(("files", "cores"), [
    ({}, 8),  # no cgroup files: the affinity
    ({"cpu.max": "max 100000\n"}, 8),  # v2, no quota
    ({"cpu.max": "150000 100000\n"}, 2),  # v2, 1.5 CPUs: rounded up
    ({"cpu.max": "400000 100000\n"}, 4),
    ({"cpu.max": "5000 100000\n"}, 1),  # at least one
    ({"cpu.max": "garbage\n"}, 8),  # unreadable: ignored
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8),  # v1, none
    ({"cpu.max": "1600000 100000\n"}, 8),  # a quota above the affinity: the affinity
])
def test_usable_cores_is_the_affinity_capped_by_a_cgroup_quota(tmp_path, monkeypatch, files,
                                                               cores):
    monkeypatch.setattr(features.os, "sched_getaffinity", lambda pid: set(range(8)),
                        raising=False)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert features.usable_cores(tmp_path) == cores


@pytest.mark.parametrize(("own", "files", "cores"), [
    # A quota on the process's own nested cgroup, or on one above it, holds.
    ("0::/app/worker\n", {"app/worker/cpu.max": "200000 100000\n",
                          "cpu.max": "max 100000\n"}, 2),
    ("0::/app/worker\n", {"app/cpu.max": "300000 100000\n",
                          "app/worker/cpu.max": "max 100000\n"}, 3),
    ("0::/app/worker\n", {"cpu.max": "500000 100000\n", "app/cpu.max": "700000 100000\n"}, 5),
    ("4:cpu,cpuacct:/docker/abc\n0::/\n",  # v1: the cpu controller's own path
     {"cpu/docker/abc/cpu.cfs_quota_us": "150000\n",
      "cpu/docker/abc/cpu.cfs_period_us": "100000\n"}, 2),
])
def test_usable_cores_reads_the_quota_of_the_process_s_own_cgroup(tmp_path, monkeypatch, own,
                                                                   files, cores):
    monkeypatch.setattr(features.os, "sched_getaffinity", lambda pid: set(range(8)),
                        raising=False)
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self_cgroup").write_text(own)
    assert features.usable_cores(root, tmp_path / "self_cgroup") == cores
