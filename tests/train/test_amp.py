"""``--amp`` on a CPU: kept where the CPU has the instructions, fp32 with a warning where not."""

import json
import warnings
from pathlib import Path

import pytest

import train.amp as amp_module
from train.amp import cpu_amp, training_amp
from train.main import main

AVX2_ONLY = frozenset({"fpu", "sse2", "avx", "avx2", "fma", "avx512f"})


@pytest.mark.parametrize(("amp", "flags", "kept"), [
    ("bf16", AVX2_ONLY, False),
    ("bf16", AVX2_ONLY | {"avx512_bf16"}, True),
    ("bf16", AVX2_ONLY | {"amx_bf16"}, True),
    ("bf16", AVX2_ONLY | {"avx512_fp16"}, False),  # fp16 hardware does not make bf16 fast
    ("fp16", AVX2_ONLY | {"avx512_bf16"}, False),
    ("fp16", AVX2_ONLY | {"avx512_fp16"}, True),
    ("fp16", AVX2_ONLY | {"amx_fp16"}, True),
])
def test_autocast_is_kept_only_with_the_instructions_for_it(amp, flags, kept):
    resolved, warning = cpu_amp(amp, flags)
    assert resolved == (amp if kept else None)
    assert (warning is None) == kept
    if not kept:
        assert f"--amp {amp} ignored" in warning and "training in fp32" in warning


def test_unknown_flags_and_no_amp_change_nothing():
    assert cpu_amp("bf16", None) == ("bf16", None)
    assert cpu_amp(None, AVX2_ONLY) == (None, None)


def test_only_the_cpu_is_checked_and_only_the_main_rank_warns(monkeypatch):
    monkeypatch.setattr(amp_module, "x86_cpu_flags", lambda: AVX2_ONLY)
    assert training_amp("bf16", "cuda", announce=True) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert training_amp("bf16", "cpu", announce=False) is None
    with pytest.warns(UserWarning, match="no native bf16"):
        assert training_amp("bf16", "cpu", announce=True) is None


def test_a_run_without_bf16_instructions_trains_and_records_fp32(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(amp_module, "x86_cpu_flags", lambda: AVX2_ONLY)
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="--amp bf16 ignored"):
        assert main(["--model", "passd_mobilenet", "--data", "synthetic", "--img-size", "64",
                     "--synthetic-train", "4", "--synthetic-val", "2", "--batch-size", "4",
                     "--workers", "0", "--device", "cpu", "--no-progress", "--epochs", "1",
                     "--amp", "bf16", "--out", str(out)]) == 0
    assert json.loads((out / "args.json").read_text())["amp"] is None  # what ran
