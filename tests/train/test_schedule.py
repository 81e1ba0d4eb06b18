import pytest
import torch
from torch import nn

from train.schedule import (
    LrSchedule,
    build_optimizer,
    build_sgd,
    flag_values,
    parse_steps,
    set_lr,
)


def test_warmup_then_step_decay():
    schedule = LrSchedule(base_lr=0.1, iters_per_epoch=10, warmup_iters=4,
                          warmup_start_lr=0.02, lr_steps=(2, 3.5), gamma=0.1)
    assert schedule(0) == pytest.approx(0.02)
    assert schedule(2) == pytest.approx(0.06)  # halfway from 0.02 to 0.1
    assert schedule(4) == pytest.approx(0.1)
    assert schedule(19) == pytest.approx(0.1)
    assert schedule(20) == pytest.approx(0.01)  # epoch 2
    assert schedule(35) == pytest.approx(0.001)  # epoch 3.5


def test_parse_steps_and_errors():
    assert parse_steps("") == ()
    assert parse_steps("80,100") == (80.0, 100.0)
    with pytest.raises(ValueError, match="increasing"):
        parse_steps("100,80")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_steps("a,b")


def test_sgd_has_paper_hyperparameters():
    model = torch.nn.Linear(2, 2)
    optimizer = build_sgd(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
    set_lr(optimizer, 0.5)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.5, 0.9, 5e-4)


def test_adamw_decays_weights_but_not_norms_or_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_optimizer("adamw", model, lr=1e-3, momentum=0.8, weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, plain = optimizer.param_groups
    assert [p.shape for p in decayed["params"]] == [model[0].weight.shape]
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    # conv bias, BN weight, BN bias
    assert len(plain["params"]) == 3
    assert decayed["betas"] == (0.8, 0.999)
    set_lr(optimizer, 0.5)
    assert all(group["lr"] == 0.5 for group in optimizer.param_groups)


def test_build_optimizer_names():
    model = torch.nn.Linear(2, 2)
    assert isinstance(build_optimizer("sgd", model, 0.1, 0.9, 0.0), torch.optim.SGD)
    with pytest.raises(ValueError, match="sgd or adamw"):
        build_optimizer("lion", model, 0.1, 0.9, 0.0)


def test_flag_values_read_back_what_build_optimizer_was_given():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert flag_values(build_optimizer("sgd", model, 0.1, 0.8, 1e-3)) == {
        "weight_decay": 1e-3, "momentum": 0.8}
    assert flag_values(build_optimizer("adamw", model, 1e-4, 0.85, 0.05)) == {
        "weight_decay": 0.05, "momentum": 0.85}  # (beta1; the BatchNorm group has no decay)
