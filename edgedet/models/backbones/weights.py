"""Load pretrained backbone weights from a LOCAL file, matching parameters by name.

Nothing is ever downloaded: the default is training from scratch, and a user who wants
ImageNet initialisation passes a ``.safetensors`` or ``.pth`` file they already have (for
example a torchvision ``resnet50`` state dict saved with ``torch.save(model.state_dict())``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# Checkpoints written by training scripts often nest the weights under one of these keys.
_NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a ``name -> tensor`` mapping from a ``.safetensors`` or ``.pth``/``.pt`` file.

    ``.pth`` files are read with ``torch.load(weights_only=True)`` so loading never runs code.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ValueError(
                f"cannot read {path}: the 'safetensors' package is not installed "
                "(pip install safetensors)"
            ) from exc
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ValueError(f"cannot read safetensors weights from {path}: {exc}") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"cannot read torch weights from {path} (expected a state dict saved with "
            f"torch.save, readable with weights_only=True): {exc}"
        ) from exc
    if isinstance(loaded, dict):
        for key in _NESTED_STATE_KEYS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors")
    return tensors


def rename_keys(state: dict[str, Tensor], prefix_map: dict[str, str]) -> dict[str, Tensor]:
    """Replace the longest matching source prefix of every key by its target prefix.

    Example: ``{"backbone.body.": ""}`` turns ``backbone.body.layer1.0.conv1.weight`` into
    ``layer1.0.conv1.weight``. Keys matching no prefix are kept unchanged.
    """
    sources = sorted(prefix_map, key=len, reverse=True)
    renamed = {}
    for key, value in state.items():
        for source in sources:
            if key.startswith(source):
                key = prefix_map[source] + key[len(source):]
                break
        renamed[key] = value
    return renamed


def load_backbone_weights(
    module: nn.Module, path: str | Path, prefix_map: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Load the tensors of a local weights file into ``module`` by (mapped) parameter name.

    Loading is non-strict: an ImageNet checkpoint's ``fc.*`` simply ends up in ``unexpected``.

    Args:
        module: the module to fill, e.g. a ``ResNet`` trunk.
        path: ``.safetensors`` or ``.pth``/``.pt`` file.
        prefix_map: optional ``{source_prefix: target_prefix}`` renaming applied first.

    Returns:
        ``(missing, unexpected)``: module keys the file did not provide, and file keys the
        module does not have.

    Raises:
        FileNotFoundError / ValueError: unreadable file, no key matched the module, or a
            matched key has a different shape.
    """
    state = read_state_dict(path)
    if prefix_map:
        state = rename_keys(state, prefix_map)
    own = module.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise ValueError(
            f"no tensor in {path} matches a parameter of {type(module).__name__}: file keys "
            f"look like {sorted(state)[:3]}, module keys like {sorted(own)[:3]}; pass a "
            "prefix_map to rename them"
        )
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs module {tuple(own[k].shape)}"
        for k in matched
        if state[k].shape != own[k].shape
    ]
    if wrong_shape:
        raise ValueError(f"shape mismatch loading {path}: " + "; ".join(wrong_shape[:5]))
    result = module.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)
