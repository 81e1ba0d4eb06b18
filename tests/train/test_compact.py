import pytest
import torch

from edgedet.models.passd import passd_mobilenet
from train.checkpoint import (
    CheckpointError,
    build_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from train.compact import compact, half_state, main


def _saved(tmp_path, scale: float = 1.0):
    torch.manual_seed(0)
    model = passd_mobilenet(num_classes=2, width_mult=0.25, fpn_channels=32).eval()
    if scale != 1.0:
        with torch.no_grad():
            next(model.parameters()).mul_(scale)
    config = {**model.config, "class_names": ["a", "b"], "input_size": [320, 320]}
    save_checkpoint(tmp_path / "src", model, config)
    return model


def test_half_copy_loads_into_the_float32_model_with_close_outputs(tmp_path):
    model = _saved(tmp_path)
    diff = compact(tmp_path / "src", tmp_path / "dst")
    state, config = load_checkpoint(tmp_path / "dst")
    assert config["stored_dtype"] == "float16"
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    # BatchNorm's step counters stay integers.
    assert any(v.dtype == torch.int64 for v in state.values())
    rebuilt, _ = build_from_checkpoint(tmp_path / "dst")
    assert next(rebuilt.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        expected, actual = model(x)["cls_logits"], rebuilt(x)["cls_logits"]
    assert 0 < diff < 1e-2
    torch.testing.assert_close(actual, expected, rtol=0, atol=5e-2 * float(expected.abs().max()))
    assert (tmp_path / "dst.safetensors").stat().st_size < \
        0.6 * (tmp_path / "src.safetensors").stat().st_size
    assert not list(tmp_path.glob("*.check.*"))


def test_values_float16_cannot_hold_are_refused_and_nothing_is_written(tmp_path):
    _saved(tmp_path, scale=1e6)
    with pytest.raises(CheckpointError, match="does not fit float16"):
        compact(tmp_path / "src", tmp_path / "dst")
    assert not (tmp_path / "dst.safetensors").exists()
    assert main([str(tmp_path / "src"), str(tmp_path / "dst")]) == 2


def test_half_state_keeps_non_float32_tensors():
    state = {"w": torch.tensor([1.0, -2.5]), "n": torch.tensor(3), "h": torch.ones(2).half()}
    out = half_state(state)
    assert out["w"].dtype == torch.float16 and out["w"].tolist() == [1.0, -2.5]
    assert out["n"].dtype == torch.int64 and out["h"] is state["h"]


def test_the_source_is_never_overwritten_and_bad_limits_are_refused(tmp_path):
    _saved(tmp_path)
    src = tmp_path / "src"
    original = src.with_suffix(".safetensors").read_bytes()
    for dst in (src, src.with_suffix(".safetensors"), src.with_suffix(".json")):
        with pytest.raises(CheckpointError, match="destination is the source"):
            compact(src, dst)
    assert src.with_suffix(".safetensors").read_bytes() == original
    with pytest.raises(CheckpointError, match="max_output_diff"):
        compact(src, tmp_path / "half", max_output_diff=float("nan"))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot create its folder"):
        compact(src, tmp_path / "a_file" / "half")
    # A destination given with its suffix writes X.safetensors, not X.safetensors.safetensors.
    assert main([str(src), str(tmp_path / "half.safetensors")]) == 0
    assert sorted(p.name for p in tmp_path.glob("half*")) == ["half.json", "half.safetensors"]


def test_an_existing_destination_is_replaced_only_with_overwrite(tmp_path, capsys):
    _saved(tmp_path)
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert main([str(src), str(dst)]) == 0
    (tmp_path / "dst.safetensors").write_bytes(b"the committed zoo source")
    assert main([str(src), str(dst)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "dst.safetensors").read_bytes() == b"the committed zoo source"
    (tmp_path / "dst.safetensors").unlink()  # a lone .json counts as a checkpoint there too
    with pytest.raises(CheckpointError, match=r"dst\.json already exists"):
        compact(src, dst)
    assert main([str(src), str(dst), "--overwrite"]) == 0
    assert load_checkpoint(dst)[1]["stored_dtype"] == "float16"
