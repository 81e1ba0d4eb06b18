import json
import random

import numpy as np
import pytest
import torch

import edgedet._io as io_module
from edgedet.models.passd import passd_mobilenet
from train.checkpoint import (
    CheckpointError,
    build_from_checkpoint,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_round_trip_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = passd_mobilenet(num_classes=2).eval()
    config = {**model.config, "class_names": ["a", "b"], "input_size": [128, 128]}
    save_checkpoint(tmp_path / "last", model, config)
    assert json.loads((tmp_path / "last.json").read_text())["architecture"] == "passd_mobilenet"
    rebuilt, loaded_config = build_from_checkpoint(tmp_path / "last.json")
    assert loaded_config["class_names"] == ["a", "b"]
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = model(x)["cls_logits"]
        actual = rebuilt.eval()(x)["cls_logits"]
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    # The file is safetensors, not a pickle.
    assert (tmp_path / "last.safetensors").read_bytes()[8:9] == b"{"


def test_crash_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _tiny()
    save_checkpoint(tmp_path / "last", model, {"architecture": "x", "kwargs": {}})
    before = (tmp_path / "last.safetensors").read_bytes()

    def crash(handle, *args, **kwargs):
        raise OSError("disk full")

    with torch.no_grad():
        model[0].weight.add_(1.0)
    monkeypatch.setattr(io_module.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "last", model, {"architecture": "x", "kwargs": {}})
    assert (tmp_path / "last.safetensors").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))
    state, _ = load_checkpoint(tmp_path / "last")
    assert set(state) == set(model.state_dict())


def test_non_finite_weights_are_never_saved(tmp_path):
    model = _tiny()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "last", model, {})
    assert not (tmp_path / "last.safetensors").exists()
    with pytest.raises(CheckpointError, match="non-finite"):
        save_training_state(tmp_path / "s.safetensors", model,
                            torch.optim.SGD(model.parameters(), lr=0.1), None, {})


def test_non_finite_weights_written_elsewhere_are_refused_on_load(tmp_path):
    # A file from another tool (or edited by hand) that save_checkpoint would have refused.
    from safetensors.torch import save_file

    from edgedet.models.checkpoint import CONFIG_KEY

    state = {k: v.clone() for k, v in _tiny().state_dict().items()}
    state["0.weight"][0, 0, 0, 0] = float("inf")
    save_file(state, str(tmp_path / "nan.safetensors"),
              metadata={CONFIG_KEY: json.dumps({"architecture": "x", "kwargs": {}})})
    with pytest.raises(CheckpointError, match=r"nan\.safetensors: 1 of its 7 tensors hold NaN "
                                              r"or infinite values \(0\.weight\)"):
        load_checkpoint(tmp_path / "nan")


def test_a_checkpoint_given_as_a_resume_state_is_named_so(tmp_path):
    model = _tiny()
    save_checkpoint(tmp_path / "best", model, {"architecture": "x", "kwargs": {}})
    with pytest.raises(CheckpointError, match="is a checkpoint, not a resume state"):
        load_training_state(tmp_path / "best.safetensors", model,
                            torch.optim.SGD(model.parameters(), lr=0.1), None)


def test_missing_and_foreign_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_training_state_restores_optimizer_scaler_and_rngs(tmp_path):
    torch.manual_seed(0)
    model = _tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    optimizer.step()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_training_state(tmp_path / "s.safetensors", model, optimizer, scaler,
                        {"epoch": 4, "best_ap": 0.5})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"].clone()

    fresh = _tiny()
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_scaler = torch.amp.GradScaler("cpu")
    progress = load_training_state(tmp_path / "s.safetensors", fresh, fresh_optimizer,
                                   fresh_scaler)
    assert progress == {"epoch": 4, "best_ap": 0.5}
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    torch.testing.assert_close(fresh_optimizer.state_dict()["state"][0]["momentum_buffer"],
                               momentum)
    assert fresh_scaler.get_scale() == 512.0
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
