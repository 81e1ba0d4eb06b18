"""Backbone weight loading from local safetensors / .pth files."""

from pathlib import Path

import pytest
import torch

from edgedet.models.backbones.resnet import resnet18
from edgedet.models.backbones.weights import load_backbone_weights

safetensors_torch = pytest.importorskip("safetensors.torch")


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_safetensors_round_trip(tmp_path: Path) -> None:
    source = resnet18()
    path = tmp_path / "r18.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(path))
    target = resnet18()
    missing, unexpected = load_backbone_weights(target, path)
    assert missing == [] and unexpected == []
    _assert_same_state(source, target)


def test_pth_round_trip_with_prefix_map_and_extra_fc(tmp_path: Path) -> None:
    source = resnet18()
    # Shaped like a detector checkpoint: nested under "model", prefixed, with an extra fc.
    state = {f"backbone.body.{k}": v for k, v in source.state_dict().items()}
    state["backbone.body.fc.weight"] = torch.zeros(1000, 512)
    path = tmp_path / "r18.pth"
    torch.save({"model": state}, path)
    target = resnet18()
    missing, unexpected = load_backbone_weights(target, path, {"backbone.body.": ""})
    assert missing == []
    assert unexpected == ["fc.weight"]
    _assert_same_state(source, target)


def test_partial_file_reports_missing(tmp_path: Path) -> None:
    source = resnet18()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    missing, unexpected = load_backbone_weights(resnet18(), path)
    assert unexpected == []
    assert missing and all(k.startswith("layer4.") for k in missing)


def test_nothing_matching_raises(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"head.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor"):
        load_backbone_weights(resnet18(), path)


def test_shape_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_backbone_weights(resnet18(), path)


def test_unreadable_and_missing_files_raise(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth"):
        load_backbone_weights(resnet18(), garbage)
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(resnet18(), tmp_path / "absent.safetensors")
