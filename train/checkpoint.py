"""Checkpoints (what ``quantize/`` reads) and resume state, both without pickle.

Files in a run directory::

    last.safetensors   model weights; the JSON config is also embedded in the file's metadata
    last.json          the same config beside the weights, for people and tools
    best.safetensors   / best.json: the epoch with the best validation AP
    last.state.safetensors   everything ``--resume`` needs: weights, optimiser tensors,
                             RNG states as tensors; scalars / structure as JSON in metadata

Every file is written to a temporary name and renamed (``edgedet._io``), so a crash while
saving leaves the previous file intact. Each ``.safetensors`` file is self-contained (its
metadata holds its JSON), so no pair of files can disagree: the ``.json`` copy is
informational and ``load_checkpoint`` reads the embedded one
(``edgedet.models.checkpoint.load_checkpoint``).

Config keys: ``architecture``, ``kwargs`` (``builder(**kwargs)`` rebuilds the network),
``class_names``, ``input_size`` ``[W, H]``, ``preprocess`` (``PreprocessConfig.to_dict()``),
``anchor_spec`` (``spec.to_dict()``), ``box_coder_weights``, ``head_family``,
``output_names``, ``postprocess`` (evaluation settings), plus training facts (``epoch``,
``iteration``, ``metrics``).
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from edgedet._io import write_bytes_atomic, write_json_atomic

# Reading checkpoints lives with the models (quantize/ and the SDK tools read them too).
from edgedet.models.checkpoint import (
    CONFIG_KEY,
    CheckpointError,
    build_from_checkpoint,
    load_checkpoint,
    short_reason,
)

__all__ = ["CheckpointError", "build_from_checkpoint", "carry_best_checkpoint", "load_checkpoint",
           "load_training_state", "save_checkpoint", "save_training_state", "short_reason"]
STATE_KEY = "state"
STATE_FILE_SUFFIX = "*.state.safetensors"
FORMAT_VERSION = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP wrapper."""
    return getattr(model, "module", model)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone(): safetensors refuses tensors that share storage, and the copy decouples the
    # saved values from the training step that follows.
    return {k: v.detach().to("cpu", copy=True).contiguous()
            for k, v in unwrap(model).state_dict().items()}


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in tensors.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"refusing to save {what}: non-finite values in {bad[:5]}"
                              f"{' ...' if len(bad) > 5 else ''}")


def save_checkpoint(stem: str | os.PathLike[str], model: nn.Module, config: dict) -> Path:
    """Write ``stem.safetensors`` (weights + embedded config) and ``stem.json`` atomically.

    Raises:
        CheckpointError: a weight or buffer is NaN/inf (such a model is never saved).
    """
    stem = Path(stem)
    tensors = _cpu_state(model)
    _check_finite(tensors, f"checkpoint {stem}")
    config = {**config, "format_version": FORMAT_VERSION}
    data = save_safetensors_bytes(tensors, metadata={CONFIG_KEY: json.dumps(config)})
    weights_path = stem.with_name(stem.name + ".safetensors")
    write_bytes_atomic(weights_path, data)
    write_json_atomic(stem.with_name(stem.name + ".json"), config, indent=2)
    return weights_path


# ---------------------------------------------------------------------------------------------
# Resume state
# ---------------------------------------------------------------------------------------------


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of ``obj`` with every tensor moved into ``tensors`` under a path key."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # JSON keys are strings: remember int keys (optimizer state is keyed by int).
        return {"__dict__": [[k, _split_tensors(v, f"{prefix}.{k}", tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    raise CheckpointError(f"cannot store {type(obj).__name__} at {prefix} in resume state")


def _join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as tensors + JSON-able values."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
        "has_gauss": np_state["has_gauss"],
        "gauss": np_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_training_state(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    progress: dict[str, Any],
) -> None:
    """Write the resume state (see the module docstring) atomically to ``path``.

    ``progress`` holds the loop's scalars: next epoch, global iteration, best AP, ...
    """
    model_tensors = _cpu_state(model)
    _check_finite(model_tensors, f"resume state {path}")
    tensors = {f"model.{k}": v for k, v in model_tensors.items()}
    structure = {
        "format_version": FORMAT_VERSION,
        "progress": progress,
        "optimizer": _split_tensors(optimizer.state_dict(), "optimizer", tensors),
        "scaler": _split_tensors(scaler.state_dict() if scaler is not None else {}, "scaler",
                                 tensors),
        "rng": _split_tensors(capture_rng_state(), "rng", tensors),
    }
    data = save_safetensors_bytes(tensors, metadata={STATE_KEY: json.dumps(structure)})
    write_bytes_atomic(path, data)


# Optimiser settings a resume state restores, whatever the command line says now.
_KEPT_BY_STATE = ("weight_decay", "momentum", "betas")


def _setting(value: Any) -> Any:
    """An optimiser setting comparable across a save (``betas`` come back as a list)."""
    if isinstance(value, list | tuple):
        return tuple(float(v) for v in value)
    return float(value) if isinstance(value, int | float) else value


def load_training_state(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore model, optimiser, scaler (and RNG states) from ``path``; return ``progress``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume state not found: {path}")
    try:
        tensors = load_safetensors_bytes(path.read_bytes())
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable resume state ({error})") from error
    if STATE_KEY not in metadata and CONFIG_KEY in metadata:
        raise CheckpointError(f"{path} is a checkpoint, not a resume state: --resume takes "
                              f"the run's {STATE_FILE_SUFFIX} file; --init-checkpoint starts "
                              "a new run from a checkpoint")
    try:
        structure = json.loads(metadata[STATE_KEY])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable resume state ({error})") from error
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    given = [{k: _setting(g[k]) for k in _KEPT_BY_STATE if k in g}
             for g in optimizer.param_groups]
    try:
        unwrap(model).load_state_dict(model_state)
        optimizer.load_state_dict(_join_tensors(structure["optimizer"], tensors))
    except (RuntimeError, ValueError, KeyError) as error:  # another model, optimiser or flags
        raise CheckpointError(f"{path}: this resume state does not fit the model and optimiser "
                              f"of these flags (give the run's own --model, --model-arg and "
                              f"--optimizer): {short_reason(error)}") from error
    for key in sorted({k for group in given for k in group}):
        kept = {_setting(g[key]) for g in optimizer.param_groups if key in g}
        if kept != {g[key] for g in given if key in g}:  # the state's values win
            shown = ", ".join(sorted(map(str, kept)))
            warnings.warn(f"--resume keeps the run's optimiser {key} ({shown}), not the value "
                          "given now", stacklevel=3)
    scaler_state = _join_tensors(structure["scaler"], tensors)
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    if restore_rng:
        restore_rng_state(_join_tensors(structure["rng"], tensors))
    return structure["progress"]


def carry_best_checkpoint(state_dir: Path, out_dir: Path) -> bool:
    """For a run resumed from another folder's state into ``out_dir``: copy that run's
    ``best`` along (the state's best AP refers to it). False where there is none to copy (the
    caller then starts best tracking afresh); True when there was nothing to do."""
    if state_dir.resolve() == out_dir.resolve():
        return True
    files = [state_dir / f"best{suffix}" for suffix in (".safetensors", ".json")]
    if not all(f.is_file() for f in files):
        return False
    for source in files:
        write_bytes_atomic(out_dir / source.name, source.read_bytes())
    return True
