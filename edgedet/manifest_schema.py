"""What an artifact manifest must hold, and the check of it (``validate_manifest``).

``edgedet.artifact`` owns the artifact contract (the directory layout, loading, hashing, the
accuracy check's summary); this module is its schema: the keys the runtime reads, the values
it can use, and ``ManifestError``, the one error for an artifact that cannot be loaded.
``edgedet.artifact`` re-exports all of it, so callers import from there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from edgedet.anchors import anchor_spec_from_dict
from edgedet.attend_tail import SECTION as ATTEND_TAIL
from edgedet.attend_tail import AttendTailSpec
from edgedet.backends import BACKENDS
from edgedet.head_decoding import HEAD_FAMILIES
from edgedet.options import DetectorOptions
from edgedet.preprocess import PreprocessConfig

MANIFEST_NAME = "manifest.json"
# The newest manifest format this edgedet reads and writes. Version 2 added
# preprocess.interpolation "linear": an edgedet that reads only version 1 ignores the field and
# would shrink frames by area averaging, not the way the model was trained, silently. Version 3
# added the attend tail's ``points`` block (the SDK computes PASSD's sampling points from the
# model's propose_deltas): an edgedet that reads version 2 looks for per-level points outputs
# and refused such a manifest with a message about missing outputs. So a manifest says the
# oldest format whose readers get it right (``format_version_of``), which older edgedets
# keep reading as before; a newer one is refused as written by a newer edgedet.
FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS: tuple[int, ...] = (1, 2, 3)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

# Keys the runtime needs; the rest are provenance: source (checkpoint, calibration), accuracy,
# kept_out_of_int8 (op names left in float), accuracy_control (INT8 under --max-drop as a
# target: calibration method, each layer returned to float with its sensitivity rank and why,
# every step's ΔAP and latency; quantize/accuracy_control.py), tensorrt (engine build),
# float_precision (OpenVINO INT8: what its float ops compute in; the IR itself carries the
# hint the backend applies, quantize/openvino_precision.py), weight_storage (float16: the
# model file stores its float weights as float16 behind casts to float32;
# quantize/weight_storage.py), int8_weight_bits (7: the INT8 weights of an ONNX Runtime model
# in -64..64, for x86 CPUs without VNNI; absent: 8).
REQUIRED_KEYS: tuple[str, ...] = (
    "format_version", "name", "head_family", "class_names", "preprocess", "anchor_spec",
    "box_coder_weights", "outputs", "input", "precision", "backend", "files",
)
# The accuracy section (``manifest["accuracy"]``, None until a check ran): these keys at least.
ACCURACY_KEYS: tuple[str, ...] = ("AP", "reference_AP", "delta_AP", "max_drop", "passed",
                                  "eval_data")


class ManifestError(ValueError):
    """An artifact that cannot be written or loaded: a bad manifest, or a missing / corrupt
    model file (the message names the file or the field)."""


def format_version_of(manifest: Mapping[str, Any]) -> int:
    """The ``format_version`` of ``manifest``: the oldest whose readers apply all of it (3
    where an attend tail, the main model's or the 2x model's, computes its sampling points;
    2 where the pre-processing shrinks linearly; 1 otherwise)."""
    second = manifest.get("double_scale")
    tails = (manifest.get(ATTEND_TAIL),
             second.get(ATTEND_TAIL) if isinstance(second, Mapping) else None)
    if any(isinstance(tail, Mapping) and "points" in tail for tail in tails):
        return 3
    preprocess = manifest.get("preprocess")
    linear = isinstance(preprocess, Mapping) and preprocess.get("interpolation") == "linear"
    return 2 if linear else 1


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
    # (A version-1 manifest that shrinks linearly, written in the days before version 2, is
    # read as it says.)
    version = manifest["format_version"]
    if isinstance(version, bool) or version not in READABLE_FORMAT_VERSIONS:
        raise fail(f"format_version {version!r} is not supported (this edgedet reads "
                   f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}; a newer edgedet wrote "
                   f"it, or it is not a manifest)")
    for key, allowed in (("head_family", HEAD_FAMILIES), ("precision", PRECISIONS),
                         ("backend", tuple(BACKENDS))):
        if not isinstance(manifest[key], str) or manifest[key] not in allowed:
            raise fail(f"{key} {manifest[key]!r} is not one of {allowed}")
    names = manifest["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise fail("class_names must be a non-empty list of strings")
    weights = manifest["box_coder_weights"]
    if not (isinstance(weights, list) and len(weights) == 4
            and all(_is_number(w) and w > 0 for w in weights)):
        raise fail(f"box_coder_weights must be 4 positive numbers, got {weights!r}")
    try:
        preprocess = PreprocessConfig.from_dict(manifest["preprocess"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise fail(f"bad preprocess section: {exc!r}") from exc
    unstated = [key for key in ("mean", "std") if key not in manifest["preprocess"]]
    if unstated:  # PreprocessConfig's defaults (0 / 1) would feed raw pixel values silently
        raise fail(f"preprocess lacks {unstated}: the normalisation the model was trained with")
    try:
        num_anchors = anchor_spec_from_dict(manifest["anchor_spec"]).num_anchors
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"bad anchor_spec section: {exc!r}") from exc
    _validate_outputs(manifest["outputs"], num_anchors, fail)
    if manifest.get(ATTEND_TAIL) is not None:
        _validate_attend_tail(manifest[ATTEND_TAIL], manifest["anchor_spec"],
                              manifest["outputs"], fail, manifest.get("box_coder_weights"))
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
    if not isinstance(manifest.get("application", {}), dict):
        raise fail("application must be an object")
    try:  # the settings a Detector starts from by default: postprocess, then application
        DetectorOptions.from_manifest(manifest, "application")
    except (TypeError, ValueError) as exc:
        raise fail(f"application: {exc}") from exc
    _validate_accuracy(manifest.get("accuracy"), fail)
    _validate_double_scale(manifest.get("double_scale"), preprocess.input_size,
                           manifest["files"], fail)
    if (manifest.get("double_scale") or {}).get(ATTEND_TAIL) is not None:
        _validate_second_attend_tail(manifest, fail)



def _is_number(value: object) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        return False


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


def _validate_attend_tail(section: object, anchor_spec: object, outputs: list,
                          fail: Any, box_coder_weights: object = None) -> AttendTailSpec:
    """An ``attend_tail`` section parses for ``anchor_spec``'s levels and makes listed
    ``outputs`` of their widths for every anchor."""
    spec_of_anchors = anchor_spec_from_dict(anchor_spec)  # type: ignore[arg-type]
    spec = AttendTailSpec.from_section(section, spec_of_anchors.feature_sizes, fail)
    made = sum(lv.height * lv.width for lv in spec.levels) * spec.anchors
    if made != spec_of_anchors.num_anchors:
        raise fail(f"{ATTEND_TAIL} makes {made} rows but anchor_spec generates "
                   f"{spec_of_anchors.num_anchors}")
    widths = {e["name"]: e["shape"][2] for e in outputs}
    for name, size in spec.outputs:
        if widths.get(name) != size:
            raise fail(f"{ATTEND_TAIL} makes {name!r} of {size} values, but outputs lists "
                       f"{'it with ' + str(widths[name]) if name in widths else 'no such output'}")
    source = spec.points_from
    if source is not None:
        if widths.get(source.output) != 4 or source.output in dict(spec.outputs):
            raise fail(f"{ATTEND_TAIL}.points come from {source.output!r}, which outputs must "
                       f"list with 4 values per anchor (box deltas), not one the tail makes")
        strides = tuple(float(s) for s in getattr(spec_of_anchors, "strides", ()))
        if source.strides != strides:
            raise fail(f"{ATTEND_TAIL}.points.strides {list(source.strides)} are not "
                       f"anchor_spec's {list(strides)}")
        if box_coder_weights is not None and source.box_coder_weights != tuple(
                float(w) for w in box_coder_weights):  # type: ignore[union-attr]
            raise fail(f"{ATTEND_TAIL}.points.box_coder_weights "
                       f"{list(source.box_coder_weights)} are not the manifest's "
                       f"{list(box_coder_weights)}")  # type: ignore[call-overload]
    return spec


def _validate_second_attend_tail(manifest: Mapping[str, Any], fail: Any) -> None:
    """The 2x model's ``double_scale.attend_tail``: its own levels and scales, the same head
    (anchors, taps, outputs, bias, points block) as the 1x model's section."""
    section = manifest["double_scale"]

    def fail_2x(problem: str) -> Exception:
        return fail(f"double_scale.{problem}")

    spec_2x = _validate_attend_tail(section[ATTEND_TAIL], section["anchor_spec"],
                                    manifest["outputs"], fail_2x,
                                    manifest.get("box_coder_weights"))
    if manifest.get(ATTEND_TAIL) is None:
        raise fail_2x(f"{ATTEND_TAIL} needs the 1x model's {ATTEND_TAIL} too")
    spec = AttendTailSpec.from_section(
        manifest[ATTEND_TAIL], anchor_spec_from_dict(manifest["anchor_spec"]).feature_sizes)
    if (spec_2x.anchors, spec_2x.taps, spec_2x.outputs, spec_2x.points_from) != (
            spec.anchors, spec.taps, spec.outputs, spec.points_from) or not np.array_equal(
                spec_2x.bias, spec.bias):
        raise fail_2x(f"{ATTEND_TAIL} must have the 1x section's anchors, taps, outputs, bias "
                      "and points block (one head at two scales)")


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
