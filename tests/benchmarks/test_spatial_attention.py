"""``benchmarks/spatial_attention.py``: a dead or constant HAR-Net spatial mask is told apart
from a working one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.spatial_attention import main, mask_activity
from edgedet.models.harnet import harnet_resnet18_small
from tests.quantize.test_pruning import INPUT_SIZE, _tiny_checkpoint, tiny_harnet


def _images(count: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    width, height = INPUT_SIZE
    return [torch.randn(1, 3, height, width, generator=generator) for _ in range(count)]


def test_a_fresh_mask_is_a_constant_half_and_its_convs_are_alive() -> None:
    model = harnet_resnet18_small(num_classes=3, img_size=INPUT_SIZE)
    activity = mask_activity(model, _images())
    assert activity.mask_mean == pytest.approx(0.5) and activity.mask_std == 0.0
    assert [total for _, total in activity.hidden_dead] == [16, 16, 16, 16]
    assert all(dead == 0 for dead, _ in activity.hidden_dead)
    assert all(peak > 0 for peak in activity.hidden_max)


def test_a_dead_conv_and_a_working_mask_are_reported() -> None:
    model = tiny_harnet()  # every conv random, so the mask varies
    assert model.head.spatial_attention is not None
    activity = mask_activity(model, _images())
    assert activity.mask_std > 1e-3
    assert activity.mask_min < activity.mask_mean < activity.mask_max
    # The fourth conv always below zero: its 16 channels die, and the mask is the last
    # conv's bias alone, everywhere.
    fourth, last = model.head.spatial_attention.layers[6], model.head.spatial_attention.layers[8]
    with torch.no_grad():
        fourth.weight.zero_()
        fourth.bias.fill_(-1.0)
        last.bias.fill_(0.25)
    activity = mask_activity(model, _images())
    assert activity.hidden_dead[3] == (16, 16) and activity.hidden_max[3] == 0.0
    assert activity.mask_std < 1e-6  # (the float sum of equal values, not always 0)
    assert activity.mask_min == activity.mask_max
    assert activity.mask_mean == pytest.approx(torch.sigmoid(torch.tensor(0.25)).item())


def test_every_image_of_a_batch_counts() -> None:
    model = tiny_harnet()
    one, other = _images(2)
    alone = [mask_activity(model, [image]) for image in (one, other)]
    together = mask_activity(model, [torch.cat([one, other])])
    # (a batch of two runs other conv kernels: equal up to float rounding)
    assert together.mask_max == pytest.approx(max(a.mask_max for a in alone), rel=1e-3)
    assert together.mask_min == pytest.approx(min(a.mask_min for a in alone), rel=1e-2)
    assert together.hidden_max == pytest.approx(
        [max(a.hidden_max[i] for a in alone) for i in range(4)], rel=1e-3)


def test_a_model_without_the_branch_or_with_it_off_is_an_error() -> None:
    model = harnet_resnet18_small(num_classes=3, img_size=INPUT_SIZE,
                                  use_spatial_attention=False)
    with pytest.raises(ValueError, match="no spatial attention"):
        mask_activity(model, _images(1))
    model = harnet_resnet18_small(num_classes=3, img_size=INPUT_SIZE)
    model.set_attention_enabled(spatial=False)
    with pytest.raises(ValueError, match="switched off"):
        mask_activity(model, _images(1))


def test_the_command_prints_a_row_per_checkpoint(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _tiny_checkpoint(tmp_path / "tiny")
    assert main([str(tmp_path / "tiny"), "--images", "2", "--frame-size", "160", "128"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith(f"| {tmp_path}")]
    assert len(rows) == 1 and rows[0].count("/16)") == 4
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "missing")])
    assert stopped.value.code == 2
