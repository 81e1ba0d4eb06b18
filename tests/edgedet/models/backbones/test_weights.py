"""Backbone weight loading from local safetensors / .pth files."""

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedet.models.backbones.resnet import resnet18
from edgedet.models.backbones.weights import (
    BackboneWeightsError,
    BackboneWeightsNotFoundError,
    load_backbone_weights,
)

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


def _one_line_error(path: Path, match: str) -> str:
    """The loader's error for ``path``: one line, naming the file, without torch's advice."""
    with pytest.raises(BackboneWeightsError, match=match) as info:
        load_backbone_weights(resnet18(), path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert "weights_only" not in message and "Weights only load failed" not in message
    return message


def test_a_missing_file_is_both_a_weights_error_and_a_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsNotFoundError) as info:
        load_backbone_weights(resnet18(), tmp_path / "absent.pth")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    _one_line_error(tmp_path / "absent.pth", "not found")
    _one_line_error(tmp_path, "is a directory")


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("hello, these are not weights")
    _one_line_error(text, "not a PyTorch checkpoint")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _one_line_error(empty, "the file is empty")
    bad_header = tmp_path / "bad.safetensors"
    bad_header.write_bytes(b"\x10\0\0\0\0\0\0\0{not json}")
    _one_line_error(bad_header, "not a valid safetensors file")
    whole = tmp_path / "whole.pth"
    torch.save(resnet18().state_dict(), whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:5000])
    _one_line_error(cut, "corrupt PyTorch checkpoint")
    no_tensors = tmp_path / "epoch.pth"
    torch.save({"epoch": 3}, no_tensors)
    _one_line_error(no_tensors, "hold no tensors")


def test_pickled_objects_are_refused_with_a_one_line_hint(tmp_path: Path) -> None:
    with_numpy = tmp_path / "numpy.pth"
    torch.save({"conv1.weight": np.zeros(3), "args": argparse.Namespace(lr=0.1)}, with_numpy)
    message = _one_line_error(with_numpy, r"pickles Python objects \(numpy\.\S+\)")
    assert "torch.save(model.state_dict(), FILE)" in message
    whole_module = tmp_path / "module.pth"
    torch.save(resnet18(), whole_module)
    _one_line_error(whole_module,
                    r"pickles Python objects \(edgedet\.models\.backbones\.resnet\.\w+\)")
    plain = tmp_path / "plain.pkl"
    with plain.open("wb") as handle:
        pickle.dump(dict(resnet18().state_dict()), handle)
    _one_line_error(plain, "a plain Python pickle, not a file written by torch.save")


def test_safetensors_that_do_not_fit(tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    safetensors_torch.save_file({"head.weight": torch.zeros(3)}, str(other))
    _one_line_error(other, "no tensor in backbone weights .* matches a parameter of ResNet")
    shapes = tmp_path / "shapes.safetensors"
    safetensors_torch.save_file({"conv1.weight": torch.zeros(64, 3, 3, 3),
                                 "fc.weight": torch.zeros(2)}, str(shapes))
    _one_line_error(shapes, r"shape mismatch loading backbone weights .* \(1 tensors\): "
                            r"conv1\.weight: file \(64, 3, 3, 3\) vs module \(64, 3, 7, 7\)")


def test_the_format_is_told_by_the_contents_not_the_suffix(tmp_path: Path) -> None:
    source = resnet18()
    pth_named_safetensors = tmp_path / "really_torch.safetensors"
    torch.save(source.state_dict(), pth_named_safetensors)
    safetensors_named_pth = tmp_path / "really_safetensors.pth"
    safetensors_torch.save_file(source.state_dict(), str(safetensors_named_pth))
    for path in (pth_named_safetensors, safetensors_named_pth):
        target = resnet18()
        assert load_backbone_weights(target, path) == ([], [])
        _assert_same_state(source, target)
