"""Reading checkpoints: safetensors weights with the model config embedded in the metadata.

Training writes them (``train/checkpoint.py``); the conversion pipeline and anything else that
needs the full-precision model reads them here. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from edgedet.models.builders import builder_of
from edgedet.models.channel_plan import ChannelPlanError, apply_channel_plan

CONFIG_KEY = "config"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read (the message names the file)."""


def checkpoint_weights_path(path: str | os.PathLike[str]) -> Path:
    """``X.safetensors`` for a checkpoint given as ``X.safetensors``, ``X.json`` or ``X``."""
    given = Path(path)
    if str(path) == "":  # Path("") is the current folder
        raise CheckpointError("checkpoint path is empty")
    path = given
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    elif path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    if not path.is_file():
        if given.is_dir():
            best = " (e.g. " + str(given / "best") + ")" if (given / "best.safetensors"
                                                            ).is_file() else ""
            raise CheckpointError(f"{given} is a folder; give the checkpoint in it{best}")
        if given.is_file():
            raise CheckpointError(f"{given} is not a checkpoint: give X.safetensors (with "
                                  f"X.json beside it) or X")
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def short_reason(error: BaseException, limit: int = 300) -> str:
    """``error``'s message on one line, cut to ``limit`` characters (a state-dict mismatch
    lists every key: kilobytes on one line)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, config)`` of a checkpoint given as ``X.safetensors``, ``X.json`` or ``X``."""
    weights_path = checkpoint_weights_path(path)
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({error})") \
            from error
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{weights_path}: no embedded config (not an edgedet checkpoint)")
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{weights_path}: its embedded config is not JSON ({error})") \
            from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{weights_path}: its embedded config is not a JSON object")
    broken = [name for name, tensor in state.items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:  # it would convert, and its accuracy check compare nothing with nothing
        raise CheckpointError(f"{weights_path}: {len(broken)} of its {len(state)} tensors hold "
                              f"NaN or infinite values ({', '.join(broken[:3])}"
                              f"{', ...' if len(broken) > 3 else ''}): a diverged run?")
    return state, config


def config_field(config: dict, key: str, path: str | os.PathLike[str]) -> object:
    """``config[key]`` of the checkpoint at ``path``; CheckpointError naming the file and the
    field when the config lacks it."""
    if key not in config:
        raise CheckpointError(f"{checkpoint_weights_path(path)}: its embedded config has no "
                              f"{key!r} (not a checkpoint train/main.py wrote?)")
    return config[key]


def build_from_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint with its builder and load the weights (eval mode).

    A pruned checkpoint's ``channel_plan`` narrows the built network first
    (``edgedet.models.channel_plan``); the model's ``config`` keeps the plan.
    """
    state, config = load_checkpoint(path)
    architecture, kwargs = config_field(config, "architecture", path), config_field(
        config, "kwargs", path)
    try:
        if not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a JSON object, got {kwargs!r}")
        model = builder_of(str(architecture))(**kwargs)
    except (KeyError, TypeError, ValueError) as error:  # an unknown builder or argument
        raise CheckpointError(f"{checkpoint_weights_path(path)}: its embedded config does not "
                              f"build a model ({error})") from error
    try:
        apply_channel_plan(model, config.get("channel_plan"))
        if config.get("channel_plan"):
            model.config = {**model.config, "channel_plan": config["channel_plan"]}
        model.load_state_dict(state)
    except (RuntimeError, ChannelPlanError) as error:
        raise CheckpointError(f"{checkpoint_weights_path(path)}: weights do not fit "
                              f"{architecture} ({short_reason(error)})") from error
    return model.eval(), config
