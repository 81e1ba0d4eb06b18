"""``edgedet.models.checkpoint``: a checkpoint whose embedded config is broken is an error that
names the file, never a traceback from deep inside a builder."""

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

from edgedet.models.checkpoint import (
    CheckpointError,
    build_from_checkpoint,
    config_field,
    load_checkpoint,
)
from edgedet.models.passd import passd_mobilenet


@pytest.fixture(scope="module")
def state_and_config() -> tuple[dict, dict]:
    model = passd_mobilenet(num_classes=3, img_size=320, width_mult=0.25, fpn_channels=32)
    return {k: v.contiguous() for k, v in model.state_dict().items()}, dict(model.config)


def _write(path: Path, state: dict, config_text: str) -> Path:
    save_file(state, str(path), metadata={"config": config_text})
    return path


def test_a_good_checkpoint_builds(state_and_config, tmp_path: Path) -> None:
    state, config = state_and_config
    model, loaded = build_from_checkpoint(_write(tmp_path / "ok.safetensors", state,
                                                 json.dumps(config)))
    assert loaded["architecture"] == "passd_mobilenet" and not model.training


@pytest.mark.parametrize(("broken", "message"), [
    (lambda c: "{not json", "is not JSON"),
    (lambda c: "[1, 2]", "is not a JSON object"),
    (lambda c: json.dumps({k: v for k, v in c.items() if k != "architecture"}),
     "has no 'architecture'"),
    (lambda c: json.dumps({**c, "architecture": "no_such_net"}), "unknown architecture"),
    (lambda c: json.dumps({**c, "kwargs": {**c["kwargs"], "bogus": 1}}), "bogus"),
    (lambda c: json.dumps({**c, "kwargs": [1]}), "kwargs must be a JSON object"),
])
def test_a_broken_config_names_the_file(state_and_config, tmp_path: Path, broken,
                                        message: str) -> None:
    state, config = state_and_config
    path = _write(tmp_path / "broken.safetensors", state, broken(config))
    with pytest.raises(CheckpointError, match=message) as error:
        build_from_checkpoint(path)
    assert str(path) in str(error.value)


def test_config_field_names_the_missing_field(state_and_config, tmp_path: Path) -> None:
    state, config = state_and_config
    path = _write(tmp_path / "x.safetensors", state, json.dumps(config))
    _, loaded = load_checkpoint(path)
    assert config_field(loaded, "architecture", path) == "passd_mobilenet"
    with pytest.raises(CheckpointError, match=r"x\.safetensors: .* no 'preprocess'"):
        config_field(loaded, "preprocess", path)
