"""Loading and checking an artifact directory's ``manifest.json`` (what ``Detector`` loads).

An artifact directory holds ``manifest.json`` plus the model file(s) it lists under ``files``
with their sha256. The conversion pipeline writes the manifest last, so a directory with a
valid manifest whose hashes match is complete; a hash mismatch means a file was truncated,
corrupted or replaced after export, and loading stops with an error naming that file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from edgedet.anchors import anchor_spec_from_dict
from edgedet.head_decoding import HEAD_FAMILIES
from edgedet.postprocess import NMS_MODES
from edgedet.preprocess import PreprocessConfig

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
ARTIFACT_BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")

# Keys the runtime needs; the rest (source, accuracy, kept_out_of_int8, ...) are provenance.
REQUIRED_KEYS: tuple[str, ...] = (
    "format_version", "name", "head_family", "class_names", "preprocess", "anchor_spec",
    "box_coder_weights", "outputs", "input", "precision", "backend", "files",
)

_HASH_CHUNK_BYTES = 1 << 20


class ManifestError(ValueError):
    """An artifact that cannot be loaded: bad manifest, or a missing / corrupt model file."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(artifact_dir: str | os.PathLike[str], verify_files: bool = True) -> dict:
    """Read, validate and (by default) hash-check the artifact in ``artifact_dir``.

    Returns:
        The manifest as a dict (JSON types).

    Raises:
        ManifestError: the directory or manifest is missing, the manifest is not valid JSON or
            lacks / mistypes a field the runtime needs, or a listed file is missing or its
            sha256 differs (the message names the file).
    """
    artifact_dir = Path(artifact_dir)
    manifest_path = artifact_dir / MANIFEST_NAME
    if not artifact_dir.is_dir():
        raise ManifestError(f"artifact directory not found: {artifact_dir}")
    if not manifest_path.is_file():
        raise ManifestError(f"{manifest_path} not found: not an edgedet artifact directory "
                            "(the conversion pipeline writes manifest.json last)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{manifest_path} is not valid JSON: {exc}") from exc
    validate_manifest(manifest, source=str(manifest_path))
    if verify_files:
        verify_artifact_files(artifact_dir, manifest)
    return manifest


def validate_manifest(manifest: Any, source: str = MANIFEST_NAME) -> None:
    """Check that ``manifest`` has every field the runtime reads, with usable values.

    Raises:
        ManifestError: naming ``source`` and the offending field.
    """

    def fail(problem: str) -> ManifestError:
        return ManifestError(f"{source}: {problem}")

    if not isinstance(manifest, dict):
        raise fail(f"must hold a JSON object, got {type(manifest).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise fail(f"missing field(s) {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise fail(f"format_version {manifest['format_version']!r} is not supported "
                   f"(this edgedet reads {FORMAT_VERSION})")
    if manifest["head_family"] not in HEAD_FAMILIES:
        raise fail(f"head_family {manifest['head_family']!r} is not one of {HEAD_FAMILIES}")
    names = manifest["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise fail("class_names must be a non-empty list of strings")
    if manifest["precision"] not in PRECISIONS:
        raise fail(f"precision {manifest['precision']!r} is not one of {PRECISIONS}")
    if manifest["backend"] not in ARTIFACT_BACKENDS:
        raise fail(f"backend {manifest['backend']!r} is not one of {ARTIFACT_BACKENDS}")
    weights = manifest["box_coder_weights"]
    if not (isinstance(weights, list) and len(weights) == 4
            and all(_is_number(w) and w > 0 for w in weights)):
        raise fail(f"box_coder_weights must be 4 positive numbers, got {weights!r}")
    try:
        PreprocessConfig.from_dict(manifest["preprocess"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise fail(f"bad preprocess section: {exc!r}") from exc
    try:
        num_anchors = anchor_spec_from_dict(manifest["anchor_spec"]).num_anchors
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"bad anchor_spec section: {exc!r}") from exc
    _validate_outputs(manifest["outputs"], num_anchors, fail)
    model_input = manifest["input"]
    if not isinstance(model_input, dict) or not isinstance(model_input.get("name"), str):
        raise fail("input must be an object with a 'name' (and 'shape', 'dtype')")
    _validate_files(manifest["files"], fail)
    postprocess = manifest.get("postprocess", {})
    if not isinstance(postprocess, dict):
        raise fail("postprocess must be an object")
    if "nms_mode" in postprocess and postprocess["nms_mode"] not in NMS_MODES:
        raise fail(f"postprocess.nms_mode {postprocess['nms_mode']!r} is not one of {NMS_MODES}")


def verify_artifact_files(artifact_dir: str | os.PathLike[str], manifest: dict) -> None:
    """Check every file listed in ``manifest["files"]`` exists and has the listed sha256.

    Raises:
        ManifestError: naming the first missing or mismatching file.
    """
    artifact_dir = Path(artifact_dir)
    for name, expected in manifest["files"].items():
        path = artifact_dir / name
        if not path.is_file():
            raise ManifestError(f"model file missing: {path} (listed in {MANIFEST_NAME})")
        actual = sha256_file(path)
        if actual != expected.lower():
            raise ManifestError(
                f"model file {path} is corrupt or truncated: sha256 {actual[:16]}... "
                f"({path.stat().st_size} bytes) does not match {expected[:16]}... from "
                f"{MANIFEST_NAME}; re-copy or re-export the artifact"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate_outputs(outputs: object, num_anchors: int, fail: Any) -> None:
    """Outputs are ``[{name, shape, meaning}]``; ``shape[1]`` must be the anchor count."""
    if not isinstance(outputs, list) or not outputs:
        raise fail("outputs must be a non-empty list of {name, shape, meaning}")
    for entry in outputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise fail(f"every outputs entry needs a 'name', got {entry!r}")
        shape = entry.get("shape")
        # Anchors (A) are axis 1 of every (N, A, k) head output; a mismatch means the anchor
        # spec is not the one the model was exported with, and boxes would be nonsense.
        if isinstance(shape, list) and len(shape) == 3 and isinstance(shape[1], int) and (
            shape[1] != num_anchors
        ):
            raise fail(f"output {entry['name']!r} has {shape[1]} anchors but anchor_spec "
                       f"generates {num_anchors}")


def _validate_files(files: object, fail: Any) -> None:
    """``files`` maps relative names inside the artifact directory to sha256 hex digests."""
    if not isinstance(files, dict) or not files:
        raise fail("files must map each model file name to its sha256")
    for name, digest in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise fail(f"file name {name!r} must be relative and inside the artifact directory")
        if not (isinstance(digest, str) and len(digest) == 64
                and all(c in "0123456789abcdefABCDEF" for c in digest)):
            raise fail(f"sha256 of {name!r} must be 64 hex digits, got {digest!r}")
