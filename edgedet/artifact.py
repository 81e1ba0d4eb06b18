"""The artifact contract: what an artifact directory holds, how it is written, how it is read.

This module is the one owner of that contract (the conversion pipeline fills manifests through
it; ``Detector`` loads through it), and it is torch-free so that it ships with the runtime.

An artifact directory::

    manifest.json     everything the runtime needs besides the model (classes, pre-processing,
                      anchors, box coding, output names and meaning, precision, backend), the
                      sha256 of every model file, where the model came from and the result of
                      its accuracy check
    model.onnx        the model file(s) (``model.xml`` + ``model.bin`` for OpenVINO IR, ...)
    model_2x.onnx     optional: the same model at twice the input size, for HAR-Net's
                      double-scale testing (``manifest["double_scale"]``, below)
    report.*          optional: the conversion report (not hashed, not needed to load)

The optional ``double_scale`` section describes the second model of double-scale testing
(``quantize/run.py --double-scale``; ``DetectorOptions(double_scale=True)`` uses it)::

    {"input_size": [2W, 2H], "anchor_spec": the 2x model's anchors (2x input pixels),
     "coarse_levels_from_1x": shared levels merged from the 1x run alone (optional, 0:
                 the paper's average everywhere; ``edgedet.double_scale``),
     "files": names of its model files (also in ``files``, so hashed like the others),
     "accuracy": the check of double-scale testing against the PyTorch reference's own
                 double-scale testing (an ``accuracy_section``), or null before it ran}

``edgedet.artifact_writer.write_artifact`` assembles the directory beside its final place with
``manifest.json`` written last and complete, then swaps it into place, so a directory holding
a valid manifest whose hashes match is complete; a hash mismatch means a file was truncated or
replaced after export, and loading stops with an error naming that file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgedet.anchors import anchor_spec_from_dict
from edgedet.backends import BACKENDS
from edgedet.head_decoding import HEAD_FAMILIES
from edgedet.options import APPLICATION_SCORE_THRESHOLD, DetectorOptions
from edgedet.preprocess import PreprocessConfig

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
# Model files are named MODEL_STEM + the format's suffix: model.onnx, model.xml + model.bin.
MODEL_STEM = "model"
INPUT_NAME = "images"
# The 2x model of double-scale testing: DOUBLE_SCALE_STEM + the format's suffix.
DOUBLE_SCALE_STEM = "model_2x"
DEFAULT_NMS_MODE = "hard"

# Keys the runtime needs; the rest are provenance: source (checkpoint, calibration), accuracy,
# kept_out_of_int8 (op names left in float), accuracy_control (INT8 under --max-drop as a
# target: calibration method, each layer returned to float with its sensitivity rank and why,
# every step's ΔAP and latency; quantize/accuracy_control.py), tensorrt (engine build),
# float_precision (OpenVINO INT8: what its float ops compute in; the IR itself carries the
# hint the backend applies, quantize/openvino_precision.py), weight_storage (float16: the
# model file stores its float weights as float16 behind casts to float32;
# quantize/weight_storage.py).
REQUIRED_KEYS: tuple[str, ...] = (
    "format_version", "name", "head_family", "class_names", "preprocess", "anchor_spec",
    "box_coder_weights", "outputs", "input", "precision", "backend", "files",
)
# The accuracy section (``manifest["accuracy"]``, None until a check ran): these keys at least.
ACCURACY_KEYS: tuple[str, ...] = ("AP", "reference_AP", "delta_AP", "max_drop", "passed",
                                  "eval_data")

_HASH_CHUNK_BYTES = 1 << 20


class ManifestError(ValueError):
    """An artifact that cannot be written or loaded: a bad manifest, or a missing / corrupt
    model file (the message names the file or the field)."""


class UncheckedArtifactError(ManifestError):
    """An artifact whose accuracy check failed or never ran (see ``check_summary``)."""


def check_summary(manifest: Mapping[str, Any]) -> str:
    """One line on the artifact's accuracy check, e.g. ``"passed: ΔAP -0.79 (max drop 1.0)"``,
    ``"FAILED: ΔAP -2.10 (max drop 1.0)"`` or ``"never ran"``."""
    accuracy = manifest.get("accuracy")
    if not accuracy:
        return "never ran"
    verdict = "passed" if accuracy["passed"] else "FAILED"
    return (f"{verdict}: AP {accuracy['AP']:.2f} vs reference {accuracy['reference_AP']:.2f}, "
            f"ΔAP {accuracy['delta_AP']:+.2f} (max drop {accuracy['max_drop']})")


def double_scale_files(manifest: Mapping[str, Any]) -> list[str]:
    """Names of the 2x model's files (``manifest["double_scale"]["files"]``; [] without)."""
    section = manifest.get("double_scale")
    return list(section["files"]) if section else []


def main_model_files(manifest: Mapping[str, Any]) -> list[str]:
    """Names of the model files of the artifact's own (1x) model."""
    second = set(double_scale_files(manifest))
    return [name for name in manifest["files"] if name not in second]


def require_passed_check(manifest: Mapping[str, Any], where: str) -> None:
    """Refuse an artifact whose accuracy check failed or never ran.

    Raises:
        UncheckedArtifactError: saying which, and how to load it anyway.
    """
    accuracy = manifest.get("accuracy")
    if accuracy and accuracy["passed"]:
        return
    if not accuracy:
        problem = ("has no accuracy check in its manifest: it was not made by quantize/run.py, "
                   "or its check never ran")
    else:
        problem = f"failed its accuracy check ({check_summary(manifest)})"
    raise UncheckedArtifactError(
        f"artifact {manifest.get('name')!r} in {where} {problem}; its detections may be wrong. "
        "Load it anyway with Detector(..., allow_unchecked=True) (--allow-unchecked on the "
        "command line)")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks (model files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def accuracy_section(metrics: Mapping[str, Any], max_drop: float,
                     eval_data: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``accuracy`` section from one artifact's accuracy-check metrics.

    Args:
        metrics: at least ``AP``, ``reference_AP`` and ``delta_AP`` (AP points, 0-100;
            ``delta_AP`` = artifact - reference, negative is a drop), plus any other figures.
        max_drop: the largest allowed drop in AP points.
        eval_data: which images were used (``{"data", "seed", "num_images", "sha256"}``).

    Returns:
        ``{**metrics, "max_drop", "passed", "eval_data"}``; passed means
        ``-delta_AP <= max_drop``.
    """
    delta = float(metrics["delta_AP"])
    return {**dict(metrics), "max_drop": float(max_drop), "passed": -delta <= max_drop,
            "eval_data": dict(eval_data)}


def make_manifest(
    *,
    name: str,
    architecture: str,
    head_family: str,
    class_names: Iterable[str],
    preprocess: Mapping[str, Any],
    anchor_spec: Mapping[str, Any],
    box_coder_weights: Iterable[float],
    outputs: Iterable[Mapping[str, Any]],
    precision: str,
    backend: str,
    postprocess: Mapping[str, Any] | None = None,
    batch_size: int = 1,
    source: Mapping[str, Any] | None = None,
    kept_out_of_int8: Iterable[str] = (),
    accuracy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete, validated manifest without ``files`` (``Artifact.stage`` or
    ``artifact_writer.write_artifact`` add those).

    Args:
        outputs: ``[{"name", "shape": [batch, A, k], "meaning"}]`` in graph output order.
        postprocess: ``DetectorOptions`` defaults the accuracy was measured with;
            ``nms_mode`` defaults to ``DEFAULT_NMS_MODE``. The manifest's ``application``
            section (what ``detect()`` uses by default on top of it) gets
            ``{"score_threshold": APPLICATION_SCORE_THRESHOLD}``.
        source: ``{"checkpoint", "checkpoint_sha256", "calibration": {...} | None}``.
        kept_out_of_int8: op names left in float by the INT8 step.
        accuracy: ``accuracy_section(...)``, or None before a check.

    Raises:
        ManifestError: naming the field that does not fit the contract.
    """
    preprocess = dict(preprocess)
    width, height = (int(v) for v in preprocess.get("input_size", (0, 0)))
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "architecture": architecture,
        "head_family": head_family,
        "class_names": list(class_names),
        "preprocess": preprocess,
        "anchor_spec": dict(anchor_spec),
        "box_coder_weights": [float(w) for w in box_coder_weights],
        "outputs": [dict(o) for o in outputs],
        "input": {"name": INPUT_NAME, "shape": [int(batch_size), 3, height, width],
                  "dtype": "float32"},
        "postprocess": {"nms_mode": DEFAULT_NMS_MODE, **dict(postprocess or {})},
        "application": {"score_threshold": APPLICATION_SCORE_THRESHOLD},
        "precision": precision,
        "backend": backend,
        "source": dict(source) if source is not None else None,
        "kept_out_of_int8": list(kept_out_of_int8),
        "accuracy": dict(accuracy) if accuracy is not None else None,
    }
    validate_manifest({**manifest, "files": {}}, source=f"manifest of {name!r}",
                      require_files=False)
    return manifest


@dataclass(frozen=True)
class Artifact:
    """An artifact: its directory and its manifest (with ``files``), checked against the
    contract. ``Detector`` loads one; the conversion pipeline checks a staged one before
    ``write_artifact`` puts it in place.

    Attributes:
        directory: where the model files are (``manifest["files"]`` names are relative to it).
        manifest: the manifest as JSON types.
    """

    directory: Path
    manifest: Mapping[str, Any]

    @classmethod
    def load(cls, directory: str | os.PathLike[str], verify_files: bool = True) -> Artifact:
        """The artifact in ``directory`` (see ``load_manifest``)."""
        return cls(Path(directory), load_manifest(directory, verify_files))

    @classmethod
    def stage(cls, directory: str | os.PathLike[str],
              model_files: Mapping[str, str | os.PathLike[str]],
              manifest: Mapping[str, Any]) -> Artifact:
        """Gather ``model_files`` (``{name in the artifact: source path}``) in ``directory``
        under their artifact names and hash them; no ``manifest.json`` is written.

        The result can be loaded (``Detector(artifact)``) and checked before
        ``artifact_writer.write_artifact`` copies it into place with its final manifest.

        Raises:
            ManifestError: no model file, a missing source, a bad file name or manifest.
        """
        directory = Path(directory)
        check_sources(directory, model_files)
        directory.mkdir(parents=True, exist_ok=True)
        for name, source in model_files.items():
            if Path(source).resolve() != (directory / name).resolve():
                shutil.copyfile(source, directory / name)
        files = {name: sha256_file(directory / name) for name in model_files}
        full = {**manifest, "files": files}
        validate_manifest(full, source=f"staged artifact {directory}")
        return cls(directory, full)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def files(self) -> dict[str, Path]:
        """``{name in the artifact: path}`` of the model files."""
        return {name: self.directory / name for name in self.manifest["files"]}

    def verify_files(self) -> None:
        """Check every model file against its sha256 (``ManifestError`` naming a bad one)."""
        verify_artifact_files(self.directory, self.manifest)


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


def validate_manifest(manifest: Any, source: str = MANIFEST_NAME,
                      require_files: bool = True) -> None:
    """Check that ``manifest`` has every field the runtime reads, with usable values.

    Args:
        require_files: whether ``files`` must list at least one model file (False while a
            manifest is being built, before its files are hashed).

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
    if manifest["backend"] not in BACKENDS:
        raise fail(f"backend {manifest['backend']!r} is not one of {tuple(BACKENDS)}")
    weights = manifest["box_coder_weights"]
    if not (isinstance(weights, list) and len(weights) == 4
            and all(_is_number(w) and w > 0 for w in weights)):
        raise fail(f"box_coder_weights must be 4 positive numbers, got {weights!r}")
    try:
        preprocess = PreprocessConfig.from_dict(manifest["preprocess"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise fail(f"bad preprocess section: {exc!r}") from exc
    try:
        num_anchors = anchor_spec_from_dict(manifest["anchor_spec"]).num_anchors
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"bad anchor_spec section: {exc!r}") from exc
    _validate_outputs(manifest["outputs"], num_anchors, fail)
    _validate_class_count(manifest, fail)
    _validate_input(manifest["input"], preprocess.input_size, fail)
    if require_files or manifest["files"]:
        _validate_files(manifest["files"], fail)
    postprocess = manifest.get("postprocess", {})
    if not isinstance(postprocess, dict):
        raise fail("postprocess must be an object")
    try:  # the settings a Detector starts from (unknown keys are provenance)
        DetectorOptions(**{k: v for k, v in postprocess.items()
                           if k in DetectorOptions.field_names()})
    except ValueError as exc:
        raise fail(f"postprocess: {exc}") from exc
    application = manifest.get("application", {})
    threshold = application.get("score_threshold", 0.0) if isinstance(application, dict) else -1
    if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise fail("application must be an object whose score_threshold is in [0, 1]")
    _validate_accuracy(manifest.get("accuracy"), fail)
    _validate_double_scale(manifest.get("double_scale"), preprocess.input_size,
                           manifest["files"], fail)


def verify_artifact_files(artifact_dir: str | os.PathLike[str], manifest: Mapping) -> None:
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


def check_file_name(out_dir: Path, name: str) -> None:
    if not name or name != Path(name).name or name in (".", "..", MANIFEST_NAME):
        raise ManifestError(f"{out_dir}: artifact file name {name!r} must be a plain file "
                            f"name (no folders) other than {MANIFEST_NAME}")


def check_sources(out_dir: Path, model_files: Mapping[str, str | os.PathLike[str]]) -> None:
    if not model_files:
        raise ManifestError(f"{out_dir}: an artifact needs at least one model file")
    for name, source in model_files.items():
        check_file_name(out_dir, name)
        if not Path(source).is_file():
            raise ManifestError(f"{out_dir}: source of {name!r} not found: {source}")


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
        if not (isinstance(shape, list) and len(shape) == 3
                and all(isinstance(v, int) for v in shape)):
            raise fail(f"output {entry['name']!r} needs a shape [batch, anchors, values], "
                       f"got {shape!r}")
        # Anchors (A) are axis 1 of every (N, A, k) head output; a mismatch means the anchor
        # spec is not the one the model was exported with, and boxes would be nonsense.
        if shape[1] != num_anchors:
            raise fail(f"output {entry['name']!r} has {shape[1]} anchors but anchor_spec "
                       f"generates {num_anchors}")


def _validate_class_count(manifest: Mapping[str, Any], fail: Any) -> None:
    """One class-logit column per class name (softmax heads: background first, one more)."""
    expected = len(manifest["class_names"]) + (manifest["head_family"] != "retinanet")
    for entry in manifest["outputs"]:
        if entry["name"] == "cls_logits" and entry["shape"][2] != expected:
            raise fail(f"the model scores {entry['shape'][2]} classes per anchor but the "
                       f"manifest names {len(manifest['class_names'])}: its model file and "
                       "manifest do not belong together")


def _validate_input(model_input: object, input_size: tuple[int, int], fail: Any) -> None:
    """``input`` is ``{name, shape: [N, 3, H, W], dtype}`` matching the pre-processing."""
    if not isinstance(model_input, dict) or not isinstance(model_input.get("name"), str):
        raise fail("input must be an object with a 'name' (and 'shape', 'dtype')")
    shape = model_input.get("shape")
    width, height = input_size
    if isinstance(shape, list) and len(shape) == 4 and shape[2:] != [height, width]:
        raise fail(f"input shape {shape} does not match preprocess input_size "
                   f"{[width, height]} (width, height)")


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


def _validate_accuracy(accuracy: object, fail: Any) -> None:
    """``accuracy`` is None (no check ran) or an ``accuracy_section``."""
    if accuracy is None:
        return
    if not isinstance(accuracy, dict):
        raise fail("accuracy must be null or an object")
    missing = [key for key in ACCURACY_KEYS if key not in accuracy]
    if missing:
        raise fail(f"accuracy section lacks {missing}")
    if not isinstance(accuracy["passed"], bool):
        raise fail(f"accuracy.passed must be true or false, got {accuracy['passed']!r}")
    for key in ("AP", "reference_AP", "delta_AP", "max_drop"):
        if not _is_number(accuracy[key]):
            raise fail(f"accuracy.{key} must be a number, got {accuracy[key]!r}")


def _validate_double_scale(section: object, input_size: tuple[int, int], files: object,
                           fail: Any) -> None:
    """``double_scale`` is absent / None or names a 2x model whose files are listed."""
    if section is None:
        return
    if not isinstance(section, dict):
        raise fail("double_scale must be null or an object")
    missing = [key for key in ("input_size", "anchor_spec", "files") if key not in section]
    if missing:
        raise fail(f"double_scale lacks {missing}")
    width, height = input_size
    if section["input_size"] != [2 * width, 2 * height]:
        raise fail(f"double_scale.input_size {section['input_size']} is not twice the input "
                   f"size {[width, height]}")
    try:
        levels = len(anchor_spec_from_dict(section["anchor_spec"]).feature_sizes)
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"bad double_scale.anchor_spec: {exc!r}") from exc
    coarse = section.get("coarse_levels_from_1x", 0)
    if isinstance(coarse, bool) or not isinstance(coarse, int) or not 0 <= coarse < levels:
        raise fail(f"double_scale.coarse_levels_from_1x must be a whole number in "
                   f"0..{levels - 1}, got {coarse!r}")
    names = section["files"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise fail("double_scale.files must be a non-empty list of file names")
    unlisted = [n for n in names if isinstance(files, dict) and files and n not in files]
    if unlisted:
        raise fail(f"double_scale.files {unlisted} are not in files (every model file is "
                   "hashed there)")
    _validate_accuracy(section.get("accuracy"), fail)
