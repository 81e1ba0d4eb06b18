"""Quantization-aware fine-tuning: the simulated rounding (parity with the sensitivity
ranking's numpy rounding), gradients, an unchanged state dict, and ``train/main.py --qat``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from quantize.sensitivity import fake_quantize_weight as numpy_fake_quantize
from train.checkpoint import load_checkpoint
from train.main import main
from train.models import build_model
from train.qat import ActivationRange, enable_qat, fake_quantize_weight

TINY = ["--model", "passd_mobilenet", "--data", "synthetic", "--img-size", "64",
        "--synthetic-train", "8", "--synthetic-val", "2", "--batch-size", "4",
        "--workers", "0", "--device", "cpu", "--no-progress", "--warmup-iters", "1",
        "--model-arg", "width_mult=0.25", "--model-arg", "fpn_channels=32"]


def _run(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


def test_weight_rounding_matches_the_numpy_simulation():
    weight = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    weight[2] = 0.0  # an all-zero channel stays zero
    torch_rounded = fake_quantize_weight(weight).numpy()
    np.testing.assert_allclose(torch_rounded, numpy_fake_quantize(weight.numpy(), 0),
                               rtol=1e-6, atol=1e-7)
    assert len(np.unique(torch_rounded[0])) <= 255 and not torch_rounded[2].any()


def test_activation_rounding_by_hand():
    hook = ActivationRange()
    layer = nn.Identity().train()
    x = torch.tensor([[0.0, 1.0, 2.0, 2.55]])
    (rounded,) = hook(layer, (x,))
    # Range [0, 2.55]: 255 steps of 0.01, so these values are exact.
    torch.testing.assert_close(rounded, x, rtol=0, atol=1e-6)
    (rounded,) = hook(layer, (torch.tensor([[0.004, 0.006, 5.0]]),))
    # Moving average: high = 0.9 * 2.55 + 0.1 * 5.0 = 2.795; values above it clip.
    assert hook.high == pytest.approx(2.795)
    step = 2.795 / 255
    torch.testing.assert_close(rounded, torch.tensor([[0.0, step, 255 * step]]), rtol=1e-5,
                               atol=1e-6)


def test_enable_qat_rounds_every_forward_trains_every_weight_and_adds_no_state():
    torch.manual_seed(0)
    with warnings.catch_warnings():  # PASSD's paper sizes start at 320; 64 trains all the same
        warnings.simplefilter("ignore")
        model = build_model("passd_mobilenet", 3, (64, 64), width_mult=0.25, fpn_channels=32)
    keys = list(model.state_dict())
    x = torch.rand(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        reference = model(x)["cls_logits"]
    layers = enable_qat(model)
    assert layers > 20
    with torch.no_grad():
        simulated = model(x)["cls_logits"]
    assert not torch.equal(simulated, reference)
    assert torch.nn.functional.cosine_similarity(simulated.flatten(), reference.flatten(),
                                                 dim=0) > 0.9
    model.train()
    outputs = model(x)
    sum(v.float().square().mean() for v in outputs.values()
        if torch.is_tensor(v) and v.requires_grad).backward()
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    assert list(model.state_dict()) == keys  # the checkpoint format is unchanged
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


def test_qat_run_from_a_checkpoint_writes_a_plain_checkpoint(tmp_path):
    assert _run([*TINY, "--epochs", "1", "--out", str(tmp_path / "base")]) == 0
    assert _run([*TINY, "--epochs", "1", "--lr", "1e-4", "--out", str(tmp_path / "qat"),
                 "--init-checkpoint", str(tmp_path / "base" / "last"), "--qat"]) == 0
    base, _ = load_checkpoint(tmp_path / "base" / "last")
    tuned, _ = load_checkpoint(tmp_path / "qat" / "last")
    assert list(base) == list(tuned)
    assert any(not torch.equal(base[k], tuned[k]) for k in base)


def test_qat_needs_a_checkpoint_that_fits(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run([*TINY, "--qat", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--init-checkpoint" in capsys.readouterr().err
    assert _run([*TINY, "--epochs", "1", "--out", str(tmp_path / "base")]) == 0
    wider = [a if a != "width_mult=0.25" else "width_mult=0.5" for a in TINY]
    assert _run([*wider, "--epochs", "1", "--out", str(tmp_path / "y"), "--init-checkpoint",
                 str(tmp_path / "base" / "last"), "--qat"]) == 1
    assert "does not fit this model" in capsys.readouterr().err


def test_a_qat_run_resumes_exactly_with_its_activation_ranges(tmp_path, capsys):
    from train.metrics_log import read_metrics

    assert _run([*TINY, "--epochs", "1", "--out", str(tmp_path / "base")]) == 0
    qat = [*TINY, "--lr", "1e-3", "--qat", "--init-checkpoint", str(tmp_path / "base" / "last")]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run([*qat, "--epochs", "2", "--out", str(straight)]) == 0
    assert _run([*qat, "--epochs", "1", "--out", str(split)]) == 0
    # The state is a QAT run's: resuming it without --qat would train something else.
    without_qat = [a for a in qat if a != "--qat"]
    assert _run([*without_qat, "--epochs", "2", "--out", str(split), "--resume"]) == 1
    assert "resume it with --qat" in capsys.readouterr().err
    assert _run([*qat, "--epochs", "2", "--out", str(split), "--resume"]) == 0
    # The ranges are moving averages: restarted at the resume, the first step would differ.
    actual, expected = read_metrics(split), read_metrics(straight)
    assert [r["iteration"] for r in actual] == [r["iteration"] for r in expected]
    for a, b in zip(actual, expected, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    final_a, _ = load_checkpoint(split / "last")
    final_b, _ = load_checkpoint(straight / "last")
    for k in final_b:
        torch.testing.assert_close(final_a[k], final_b[k], rtol=1e-5, atol=1e-6)
