"""Load pretrained backbone weights from a LOCAL file, matching parameters by name.

Nothing is ever downloaded: the default is training from scratch, and a user who wants
ImageNet initialisation passes a ``.safetensors`` or ``.pth`` file they already have (for
example a torchvision ``resnet50`` state dict saved with ``torch.save(model.state_dict())``).
Every problem with the file (missing, not a weights file, pickled objects, names or shapes
that do not fit) is a ``BackboneWeightsError`` whose message is one line naming the file.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

# Checkpoints written by training scripts often nest the weights under one of these keys.
_NESTED_STATE_KEYS = ("state_dict", "model", "model_state_dict")
# What a file starts with: torch.save's zip format, its legacy format (a protocol-2 pickle of
# torch's magic number), or any other pickle (the PROTO opcode).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_PICKLE_PROTO = 0x80
_RESAVE_HINT = ("save the weights as a plain state dict of tensors "
                "(torch.save(model.state_dict(), FILE)) or as a .safetensors file")


class BackboneWeightsError(ValueError):
    """A backbone weights file cannot be read or does not fit the module; the message is one
    line naming the file."""


class BackboneWeightsNotFoundError(BackboneWeightsError, FileNotFoundError):
    """The backbone weights file does not exist (also a ``FileNotFoundError``)."""


def _one_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's run to a dozen lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    return (len(head) > 8 and head[8:9] == b"{"
            and 8 + int.from_bytes(head[:8], "little") <= size)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise BackboneWeightsError(
            f"cannot read backbone weights {path}: the 'safetensors' package is not installed "
            "(pip install safetensors)"
        ) from exc
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise BackboneWeightsError(
            f"cannot read backbone weights {path}: not a valid safetensors file "
            f"({_one_line(exc)})"
        ) from None


def _read_torch(path: Path, head: bytes) -> object:
    """``torch.load(weights_only=True)``, its multi-line errors (which suggest
    ``weights_only=False``, i.e. running the file's code) turned into one line."""
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write before failing anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # A file object, not the path: torch.load then goes by the contents, not the
            # suffix (a torch.save file named .safetensors would otherwise be misread).
            with path.open("rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and found:
            problem = (f"it pickles Python objects ({found.group(1)}), and weights files are "
                       f"loaded without running pickled code; {_RESAVE_HINT}")
        elif head.startswith((_ZIP_MAGIC, _LEGACY_TORCH_MAGIC)):
            problem = f"corrupt PyTorch checkpoint ({type(exc).__name__}: {_one_line(exc)})"
        elif head[:1] == bytes([_PICKLE_PROTO]):
            problem = f"a plain Python pickle, not a file written by torch.save; {_RESAVE_HINT}"
        else:
            problem = "not a PyTorch checkpoint (torch.save) or safetensors file"
        raise BackboneWeightsError(f"cannot read backbone weights {path}: {problem}") from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a ``name -> tensor`` mapping from a safetensors or ``torch.save`` file.

    The format is told by the file's first bytes (the suffix only breaks the tie for files
    that are neither). ``torch.save`` files are read with ``torch.load(weights_only=True)``, so
    loading never runs code; a file pickling anything but tensors and plain containers is
    refused with a hint to re-save it.

    Raises:
        BackboneWeightsNotFoundError: the file does not exist (a ``FileNotFoundError``).
        BackboneWeightsError: the file is unreadable, not a weights file, or holds no
            tensors (a ``ValueError``). Messages are one line and name the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
        size = path.stat().st_size
    except FileNotFoundError:
        raise BackboneWeightsNotFoundError(f"backbone weights file not found: {path}") from None
    except OSError as exc:
        raise BackboneWeightsError(
            f"cannot read backbone weights {path}: {(exc.strerror or str(exc)).lower()}"
        ) from None
    if size == 0:
        raise BackboneWeightsError(f"cannot read backbone weights {path}: the file is empty")
    if _looks_like_safetensors(head, size) or (
            path.suffix == ".safetensors" and not head.startswith(_ZIP_MAGIC)):
        return _read_safetensors(path)
    loaded = _read_torch(path, head)
    if isinstance(loaded, dict):
        for key in _NESTED_STATE_KEYS:
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict):
        raise BackboneWeightsError(
            f"backbone weights {path} hold a {type(loaded).__name__}, not a state dict; "
            f"{_RESAVE_HINT}")
    tensors = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise BackboneWeightsError(f"backbone weights {path} hold no tensors; {_RESAVE_HINT}")
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
        BackboneWeightsNotFoundError: the file does not exist (a ``FileNotFoundError``).
        BackboneWeightsError: unreadable file, no key matched the module, or a matched key
            has a different shape (a ``ValueError``; one line naming the file).
    """
    state = read_state_dict(path)
    if prefix_map:
        state = rename_keys(state, prefix_map)
    own = module.state_dict()
    matched = [k for k in state if k in own]
    if not matched:
        raise BackboneWeightsError(
            f"no tensor in backbone weights {path} matches a parameter of "
            f"{type(module).__name__} (file keys look like {sorted(state)[:3]}, module keys "
            f"like {sorted(own)[:3]}): weights of another network, or names that need a "
            "prefix_map (Python API)"
        )
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs module {tuple(own[k].shape)}"
        for k in matched
        if state[k].shape != own[k].shape
    ]
    if wrong_shape:
        raise BackboneWeightsError(
            f"shape mismatch loading backbone weights {path} into {type(module).__name__} "
            f"({len(wrong_shape)} tensors): " + "; ".join(wrong_shape[:5]))
    result = module.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)
