"""Per-part pruning ratios: the parts, their probes, the weights and the bisection with them."""

from __future__ import annotations

import copy
import json

import pytest
from torch import nn

from edgedet.models.summary import count_gflops, count_parameters
from quantize.prune_allocation import (
    PartSensitivity,
    allocation_weights,
    measure_sensitivity,
    network_parts,
)
from quantize.pruning import prune_channels, prune_to_flops
from tests.quantize.test_pruning import INPUT_SIZE, _tiny_checkpoint, tiny_harnet


def _widths(model: nn.Module) -> dict[str, int]:
    return {name: int(m.weight.shape[0]) for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d)}


def test_the_parts_of_harnet_are_its_stages_fpn_and_towers():
    assert network_parts(tiny_harnet()) == [
        "backbone.conv1", "backbone.layer1", "backbone.layer2", "backbone.layer3",
        "backbone.layer4", "aligned_attention", "fpn", "head.branches.cls", "head.branches.box"]


def test_a_part_ratio_prunes_that_part_and_what_its_channels_feed_only():
    model = tiny_harnet()
    before = _widths(model)
    after = _widths(prune_channels(copy.deepcopy(model), INPUT_SIZE, 0.0,
                                   part_ratios={"backbone.layer3": 0.5}))
    changed = {name for name in before if before[name] != after[name]}
    # layer3's convs and its residual channels (which the aligned attention's C4 residual
    # adds to) halve; nothing else changes width.
    assert changed == {name for name in before if name.startswith("backbone.layer3.")} | {
        "aligned_attention.c4.expand"}
    assert all(after[name] == before[name] // 2 for name in changed)


def test_weights_are_gflops_per_ap_point_over_the_mean_clipped():
    weights = allocation_weights([
        PartSensitivity("a", gflops_saved=1.0, ap_drop=0.01),   # 100 GFLOPs per AP (0-1)
        PartSensitivity("b", gflops_saved=1.0, ap_drop=0.04),   # 25
        PartSensitivity("c", gflops_saved=0.5, ap_drop=-0.02),  # no loss: 0.5 / 1e-3 = 500
        PartSensitivity("d", gflops_saved=0.0, ap_drop=0.01),   # saves nothing
    ])
    mean = (100 + 25 + 500) / 3
    assert weights["a"] == pytest.approx(100 / mean)
    assert weights["b"] == 0.25  # 25 / mean = 0.12, clipped up
    assert weights["c"] == 2.0  # 500 / mean = 2.4, clipped down
    assert weights["d"] == 0.25
    with pytest.raises(ValueError, match="saved any GFLOPs"):
        allocation_weights([PartSensitivity("a", 0.0, 0.1)])


def test_sensitivity_probes_each_part_alone_against_the_unpruned_score():
    model = tiny_harnet()
    params = count_parameters(model)
    full = count_gflops(model, INPUT_SIZE)
    parts = ["backbone.layer2", "head.branches.box"]
    seen: list[str] = []
    # A stand-in score that falls with the parameters removed, so each drop is known.
    results = measure_sensitivity(model, INPUT_SIZE, parts,
                                  lambda m: count_parameters(m) / params, probe_ratio=0.5,
                                  progress=seen.append)
    assert seen == parts and [r.part for r in results] == parts
    for result in results:
        probe = prune_channels(copy.deepcopy(model), INPUT_SIZE, 0.0,
                               part_ratios={result.part: 0.5})
        assert result.gflops_saved == pytest.approx(full - count_gflops(probe, INPUT_SIZE))
        assert result.ap_drop == pytest.approx(1 - count_parameters(probe) / params)
        assert result.gflops_saved > 0 and result.ap_drop > 0
    assert count_gflops(model, INPUT_SIZE) == full  # probes run on copies


def test_weighted_parts_lose_more_or_fewer_channels_and_the_target_holds():
    model = tiny_harnet()
    full = count_gflops(model, INPUT_SIZE)
    weights = {"backbone.layer1": 0.25, "head.branches.cls": 2.0}
    pruned, result = prune_to_flops(model, INPUT_SIZE, 0.7 * full, part_weights=weights)
    assert result.gflops_after <= 0.7 * full
    before, after = _widths(model), _widths(pruned)
    kept = {name: after[name] / before[name] for name in before}
    assert kept["head.branches.cls.convs.0"] < kept["backbone.layer2.0.conv1"]
    assert kept["backbone.layer2.0.conv1"] <= kept["backbone.layer1.0.conv1"]


def test_prune_cli_with_sensitivity_allocation_logs_each_part(tmp_path, capsys):
    from quantize.prune import main

    _tiny_checkpoint(tmp_path / "full")
    assert main(["--checkpoint", str(tmp_path / "full"), "--out", str(tmp_path / "out"),
                 "--steps", "1", "--target-flops", "0.6", "--finetune-images", "4",
                 "--val-images", "4", "--sensitivity-images", "4", "--allocation",
                 "sensitivity", "--no-baseline", "--no-progress", "--", "--batch-size", "4",
                 "--workers", "0", "--optimizer", "adamw"]) == 0
    (step,) = json.loads((tmp_path / "out" / "prune_log.json").read_text())["steps"]
    assert list(step["allocation"]) == network_parts(tiny_harnet())
    assert all(0.25 <= row["weight"] <= 2.0 for row in step["allocation"].values())
    assert step["gflops"] <= 0.6 * count_gflops(tiny_harnet(), INPUT_SIZE)
    assert "sensitivity: pruning backbone.layer1 alone" in capsys.readouterr().out
