"""Store a checkpoint's weights in float16 for the repository (half the bytes), checked.

A zoo entry's source checkpoint is committed so conversion, QAT and pruning can restart from
it; float32 weights of a ResNet-18 detector are 30-55 MB. float16 keeps 11 mantissa bits,
far below what INT8 conversion or fine-tuning resolves, and ``build_from_checkpoint`` loads
it into the float32 model unchanged (``load_state_dict`` casts). The copy is refused when a
value does not fit float16 or when the rebuilt model's outputs move by more than
``--max-output-diff`` relative to their range on a random input::

    python train/compact.py runs/p3/best checkpoints/harnet_pruned_spatial/best --overwrite

Writes ``DST.safetensors`` and ``DST.json`` atomically, with ``stored_dtype: "float16"`` in
the embedded config; integer buffers (BatchNorm's counters) are kept as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save as save_safetensors_bytes

from edgedet._io import write_bytes_atomic, write_json_atomic
from edgedet.models.checkpoint import (
    CONFIG_KEY,
    CheckpointError,
    build_from_checkpoint,
    checkpoint_weights_path,
    load_checkpoint,
)

FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def half_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors as float16, the rest unchanged; raises on values float16 cannot hold."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.dtype != torch.float32:
            out[name] = tensor
            continue
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{name}: non-finite values")
        peak = float(tensor.abs().max()) if tensor.numel() else 0.0
        if peak >= FLOAT16_MAX:
            raise CheckpointError(f"{name}: |value| {peak:.4g} does not fit float16")
        out[name] = tensor.to(torch.float16).contiguous()
    return out


def _outputs(model: torch.nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        result = model(image)
    values = result.values() if isinstance(result, dict) else result
    return [v.float() for v in values if isinstance(v, torch.Tensor)]


def compact(src: str | Path, dst: str | Path, max_output_diff: float = 1e-2,
            overwrite: bool = False) -> float:
    """Write the float16 copy of checkpoint ``src`` to ``dst``; returns the measured output
    difference (max |fp16 - fp32| / max |fp32| over the model's outputs, one random input).

    Raises:
        CheckpointError: unreadable source, values that do not fit, outputs that moved more
            than ``max_output_diff``, or a checkpoint already at ``dst`` without ``overwrite``
            (a committed zoo source is replaced only on purpose). Nothing is written then.
    """
    if not max_output_diff >= 0:  # nan would accept any change
        raise CheckpointError(f"max_output_diff must be a number >= 0, got {max_output_diff}")
    dst = _stem(dst)
    if dst.with_name(dst.name + ".safetensors").resolve() == checkpoint_weights_path(
            src).resolve():
        raise CheckpointError(f"{dst}: the destination is the source checkpoint; the float32 "
                              "original would be lost (give another destination)")
    existing = [p for p in (dst.with_name(dst.name + ".safetensors"),
                            dst.with_name(dst.name + ".json")) if p.exists()]
    if existing and not overwrite:
        raise CheckpointError(f"{existing[0]} already exists; pass --overwrite to replace it "
                              "(the old checkpoint is kept until the new one is checked)")
    state, config = load_checkpoint(src)
    halved = half_state(state)
    config = {**config, "stored_dtype": "float16"}
    data = save_safetensors_bytes(halved, metadata={CONFIG_KEY: json.dumps(config)})

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. a file where a folder of the path should be
        raise CheckpointError(f"{dst}: cannot create its folder ({error.strerror})") from error
    scratch = dst.with_name(dst.name + ".check.safetensors")
    write_bytes_atomic(scratch, data)
    try:
        reference, _ = build_from_checkpoint(src)
        halved_model, _ = build_from_checkpoint(scratch)
        width, height = config["input_size"]
        image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        diff = 0.0
        for a, b in zip(_outputs(reference, image), _outputs(halved_model, image), strict=True):
            diff = max(diff, float((a - b).abs().max()) / max(float(a.abs().max()), 1e-12))
    finally:
        scratch.unlink(missing_ok=True)
    if diff > max_output_diff:
        raise CheckpointError(f"{src}: float16 weights move the outputs by {diff:.2e} of their "
                              f"range (limit {max_output_diff:.0e}); keep this one in float32")
    write_bytes_atomic(dst.with_name(dst.name + ".safetensors"), data)
    write_json_atomic(dst.with_name(dst.name + ".json"), config, indent=2)
    return diff


def _stem(path: str | Path) -> Path:
    """``X`` for a destination given as ``X``, ``X.safetensors`` or ``X.json``."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint X (X.safetensors / X.json)")
    parser.add_argument("dst", help="destination stem: writes DST.safetensors and DST.json")
    parser.add_argument("--max-output-diff", type=float, default=1e-2,
                        help="largest accepted output change relative to the output range "
                             "(default 1e-2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a checkpoint already at DST (refused without it)")
    args = parser.parse_args(argv)
    try:
        diff = compact(args.src, args.dst, args.max_output_diff, args.overwrite)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stem = _stem(args.dst)
    weights = stem.with_name(stem.name + ".safetensors")
    size = weights.stat().st_size
    print(f"wrote {weights} ({size / 2**20:.1f} MiB, float16); "
          f"outputs moved by {diff:.2e} of their range")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
