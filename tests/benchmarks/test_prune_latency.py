"""``benchmarks/prune_latency.py``'s extra channel plans (``--also``): parsing, the recorded
part weights, and the plans' size and rounding (the timing itself is the machine's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from benchmarks.prune_latency import main, parse_plan, plan_variants, recorded_part_weights
from edgedet.models.summary import count_gflops
from tests.quantize.test_pruning import INPUT_SIZE, tiny_harnet

REPO = Path(__file__).resolve().parents[2]


def test_a_plan_reads_ratio_and_rounding() -> None:
    assert parse_plan("0.25") == (0.25, 16)
    assert parse_plan("0.38:64") == (0.38, 64)
    for bad in ("1.2", "0", "a", "0.3:0", "0.3:x", ""):
        with pytest.raises(ValueError, match="RATIO"):
            parse_plan(bad)


def test_a_bad_plan_is_a_usage_error_before_anything_is_built(
        capsys: pytest.CaptureFixture[str]) -> None:
    for plans in (["0.3", "2"], ["0.3", "0.30:16"]):  # a bad plan; the same plan twice
        with pytest.raises(SystemExit) as stopped:
            main([arg for plan in plans for arg in ("--also", plan)])
        assert stopped.value.code == 2
        assert "--also" in capsys.readouterr().err


def test_the_part_weights_come_from_the_last_recorded_step(tmp_path: Path) -> None:
    log = {"steps": [{"allocation": {"fpn": {"weight": 0.5}}},
                     {"allocation": {"fpn": {"weight": 0.7}, "backbone.layer4": {"weight": 2}}}]}
    (tmp_path / "prune_log.json").write_text(json.dumps(log))
    assert recorded_part_weights(str(tmp_path / "best")) == {"fpn": 0.7, "backbone.layer4": 2.0}
    # uniform where nothing was recorded, or the steps were not by part
    assert recorded_part_weights(str(tmp_path / "elsewhere" / "best")) is None
    (tmp_path / "prune_log.json").write_text(json.dumps({"steps": [{"ratio": 0.2}]}))
    assert recorded_part_weights(str(tmp_path / "best")) is None
    # the repository's pruned HAR-Net has its sensitivity allocation on record
    shipped = recorded_part_weights(str(REPO / "checkpoints/harnet_pruned_spatial/best"))
    assert shipped is not None and shipped["backbone.layer4"] == pytest.approx(2.0)


def test_each_plan_reaches_its_size_in_multiples_of_its_rounding() -> None:
    model = tiny_harnet()
    before = {name: p.shape for name, p in model.state_dict().items()}
    full = count_gflops(model, INPUT_SIZE)
    plans = plan_variants(model, INPUT_SIZE, [(0.5, 16), (0.5, 32)],
                          {"backbone.layer4": 1.5, "fpn": 0.5})
    assert list(plans) == ["0.5x/16", "0.5x/32"]
    with pytest.raises(ValueError, match=r"plan 0\.05x/16"):  # below what the floors allow
        plan_variants(model, INPUT_SIZE, [(0.05, 16)], None)
    assert {name: p.shape for name, p in model.state_dict().items()} == before  # untouched
    for label, round_to in (("0.5x/16", 16), ("0.5x/32", 32)):
        pruned = plans[label]
        assert count_gflops(pruned, INPUT_SIZE) <= 0.5 * full
        widths = [m.out_channels for name, m in pruned.named_modules()
                  if isinstance(m, nn.Conv2d) and name.startswith("backbone.layer")]
        assert widths and all(w % round_to == 0 for w in widths), (label, widths)
    # coarser rounding leaves some backbone layer narrower or wider than the finer one
    assert plans["0.5x/16"].state_dict().keys() == plans["0.5x/32"].state_dict().keys()
    assert any(a.shape != b.shape for a, b in zip(plans["0.5x/16"].state_dict().values(),
                                                  plans["0.5x/32"].state_dict().values(),
                                                  strict=True))
