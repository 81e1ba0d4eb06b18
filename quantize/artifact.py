"""Write an artifact directory (model files + ``manifest.json``) the SDK can load.

Layout and manifest keys: the artifact contract (``DESIGN.md``, "Artifact directory").
``write_artifact`` builds the whole directory in a temporary directory beside the target, with
``manifest.json`` written last, then renames it into place: a crash or error at any point
leaves either the previous artifact or none, never a half-written one.
``build_manifest`` fills the manifest from a detector and its checkpoint config
(``train/checkpoint.py``: ``architecture``, ``class_names``, ``input_size``, ``preprocess``,
``anchor_spec``, ``box_coder_weights``, ``head_family``, ``postprocess``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedet._io import write_json_atomic
from edgedet.anchors import anchor_spec_from_dict
from edgedet.head_decoding import HEAD_FAMILIES
from edgedet.models.daipnet import DAIPNet
from edgedet.models.passd import PASSD
from edgedet.models.retinanet import RetinaNet

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "int8")
BACKENDS = ("onnxruntime", "openvino")
DEFAULT_NMS_MODE = "hard"


class ArtifactError(ValueError):
    """Inputs that cannot make a valid artifact (the message names the file or key)."""


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file_name(name: str) -> None:
    if not name or name != Path(name).name or name in (".", "..", MANIFEST_NAME):
        raise ArtifactError(f"artifact file name {name!r} must be a plain file name "
                            f"(no folders) other than {MANIFEST_NAME}")


def write_artifact(
    out_dir: str | os.PathLike[str],
    model_files: Mapping[str, str | os.PathLike[str]],
    manifest: Mapping[str, Any],
    extra_files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> Path:
    """Create (or atomically replace) the artifact directory ``out_dir``.

    Args:
        out_dir: the artifact directory.
        model_files: ``{name in the artifact: source path}``, e.g. ``{"model.onnx": p}`` or
            ``{"model.xml": x, "model.bin": b}``; copied, and their sha256 go into
            ``manifest["files"]``.
        manifest: the manifest without ``files`` (e.g. from ``build_manifest``); not modified.
        extra_files: other files to copy (report, pictures); not hashed, not needed to load.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ArtifactError: no model file, a missing source file, or a bad file name.
    """
    out_dir = Path(out_dir)
    if not model_files:
        raise ArtifactError(f"{out_dir}: an artifact needs at least one model file")
    sources = {**(extra_files or {}), **model_files}
    for name, source in sources.items():
        _check_file_name(name)
        if not Path(source).is_file():
            raise ArtifactError(f"{out_dir}: source of {name!r} not found: {source}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    # mkdtemp makes a 0700 folder; the artifact should be readable like any other folder.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        for name, source in sources.items():
            shutil.copyfile(source, staging / name)
        files = {name: sha256_file(staging / name) for name in model_files}
        write_json_atomic(staging / MANIFEST_NAME, {**manifest, "files": files}, indent=2)
        _replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _replace_directory(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first and
    restored if the rename fails."""
    if not target.exists():
        os.replace(staging, target)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(backup)  # only the unique name is wanted; rename needs it free
    os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def head_family_of(model: nn.Module) -> str:
    """The ``edgedet.head_decoding`` family of a detector: passd, ssd or retinanet."""
    if isinstance(model, PASSD):
        return "passd"
    if isinstance(model, DAIPNet):
        return "ssd"
    if isinstance(model, RetinaNet):  # RetinaNet, HAR-Net, DSANet
        return "retinanet"
    raise ArtifactError(f"no head family known for {type(model).__name__}")


def _output_meanings(family: str) -> dict[str, str]:
    anchors = "the adjusted boxes" if family == "passd" else "the anchors"
    cls = ("class logits, background at 0 (softmax)" if family in ("ssd", "passd")
           else "per-class logits (sigmoid), no background")
    return {
        "objectness_logits": "propose-stage logits [background, object] per default box",
        "propose_deltas": "propose-stage offsets of the default boxes (eq. 2 clipped), "
                          "box_coder_weights units",
        "cls_logits": cls,
        "box_deltas": f"box offsets relative to {anchors}, box_coder_weights units",
        "conf_logits": "object-confidence logit (sigmoid); score = sigmoid(cls) * sigmoid(conf)",
    }


def _output_shapes(model: nn.Module, input_size: tuple[int, int], batch_size: int
                   ) -> dict[str, list[int]]:
    width, height = input_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model.forward_export(torch.zeros(batch_size, 3, height, width))
    finally:
        model.train(was_training)
    return {name: list(t.shape) for name, t in zip(model.export_output_names, outputs,
                                                   strict=True)}


def _required(config: Mapping[str, Any], key: str) -> Any:
    if key not in config:
        raise ArtifactError(f"checkpoint config has no {key!r} (keys: {sorted(config)})")
    return config[key]


def build_manifest(
    model: nn.Module,
    config: Mapping[str, Any],
    name: str,
    precision: str = "fp32",
    backend: str = "onnxruntime",
    source: Mapping[str, Any] | None = None,
    output_shapes: Mapping[str, Iterable[int]] | None = None,
    kept_out_of_int8: Iterable[str] = (),
    accuracy: Mapping[str, Any] | None = None,
    batch_size: int = 1,
) -> dict[str, Any]:
    """The manifest of an artifact (everything but ``files``, which ``write_artifact`` adds).

    Args:
        model: the detector (training or rewritten); supplies the export output names, and
            the anchor spec / box coder weights / head family when ``config`` lacks them.
        config: the checkpoint config (``train.checkpoint.load_checkpoint``); must hold
            ``architecture``, ``class_names`` and ``preprocess``.
        name: the artifact's name, e.g. ``"passd_mobilenet_int8"``.
        precision: ``"fp32"`` or ``"int8"``.
        backend: ``"onnxruntime"`` or ``"openvino"``.
        source: ``{"checkpoint", "checkpoint_sha256", "calibration": {...} | None}``.
        output_shapes: ``{output name: shape}`` of the exported graph; when None, one
            ``forward_export`` on zeros measures them.
        kept_out_of_int8: node / op names left in float by the INT8 step.
        accuracy: the accuracy-check result, or None.
        batch_size: the graph's fixed batch dimension.

    Raises:
        ArtifactError: a missing config key, an unknown precision / backend / head family,
            or outputs whose anchor count differs from the anchor spec's.
    """
    if precision not in PRECISIONS:
        raise ArtifactError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend not in BACKENDS:
        raise ArtifactError(f"backend must be one of {BACKENDS}, got {backend!r}")
    architecture = _required(config, "architecture")
    class_names = list(_required(config, "class_names"))
    preprocess = dict(_required(config, "preprocess"))
    input_size = tuple(int(v) for v in config.get("input_size", preprocess["input_size"]))
    if tuple(int(v) for v in preprocess["input_size"]) != input_size:
        raise ArtifactError(f"config input_size {list(input_size)} differs from preprocess "
                            f"input_size {preprocess['input_size']}")
    family = config.get("head_family") or head_family_of(model)
    if family not in HEAD_FAMILIES:
        raise ArtifactError(f"head_family {family!r} is not one of {HEAD_FAMILIES}")
    anchor_spec = config.get("anchor_spec") or model.anchor_spec(input_size).to_dict()
    num_anchors = anchor_spec_from_dict(anchor_spec).num_anchors
    box_coder_weights = config.get("box_coder_weights") or model.box_coder_weights
    shapes = ({k: list(v) for k, v in output_shapes.items()} if output_shapes is not None
              else _output_shapes(model, input_size, batch_size))
    meanings = _output_meanings(family)
    outputs = []
    for output_name in model.export_output_names:
        if output_name not in shapes:
            raise ArtifactError(f"no shape for output {output_name!r} (have {sorted(shapes)})")
        shape = [int(v) for v in shapes[output_name]]
        if len(shape) != 3 or shape[1] != num_anchors:
            raise ArtifactError(f"output {output_name!r} has shape {shape}; expected "
                                f"[batch, {num_anchors} anchors, values] from the anchor spec")
        outputs.append({"name": output_name, "shape": shape,
                        "meaning": meanings.get(output_name, output_name)})
    postprocess = {"nms_mode": DEFAULT_NMS_MODE, **dict(config.get("postprocess", {}))}
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "architecture": architecture,
        "head_family": family,
        "class_names": class_names,
        "preprocess": preprocess,
        "anchor_spec": anchor_spec,
        "box_coder_weights": [float(w) for w in box_coder_weights],
        "outputs": outputs,
        "input": {"name": "images", "shape": [batch_size, 3, input_size[1], input_size[0]],
                  "dtype": "float32"},
        "postprocess": postprocess,
        "precision": precision,
        "backend": backend,
        "source": dict(source) if source is not None else None,
        "kept_out_of_int8": list(kept_out_of_int8),
        "accuracy": dict(accuracy) if accuracy is not None else None,
    }
