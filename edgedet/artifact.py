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
import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedet.manifest_schema import (  # the schema; re-exported, callers import from here
    ACCURACY_KEYS,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PRECISIONS,
    READABLE_FORMAT_VERSIONS,
    REQUIRED_KEYS,
    ManifestError,
    format_version_of,
    validate_manifest,
)
from edgedet.options import APPLICATION_SCORE_THRESHOLD

# Model files are named MODEL_STEM + the format's suffix: model.onnx, model.xml + model.bin.
MODEL_STEM = "model"
INPUT_NAME = "images"
# The 2x model of double-scale testing: DOUBLE_SCALE_STEM + the format's suffix.
DOUBLE_SCALE_STEM = "model_2x"
DEFAULT_NMS_MODE = "hard"

_HASH_CHUNK_BYTES = 1 << 20


class UncheckedArtifactError(ManifestError):
    """An artifact whose accuracy check failed or never ran (see ``check_summary``)."""


def check_summary(manifest: Mapping[str, Any]) -> str:
    """One line on the artifact's accuracy check, e.g. ``"passed: ΔAP -0.79 (max drop 1.0)"``,
    ``"FAILED: ΔAP -2.10 (max drop 1.0)"`` or ``"never ran"``."""
    accuracy = manifest.get("accuracy")
    if not accuracy:
        return "never ran"
    verdict = "passed" if accuracy["passed"] else "FAILED"
    why = f"; inconclusive: {accuracy['inconclusive']}" if accuracy.get("inconclusive") else ""
    return (f"{verdict}: AP {accuracy['AP']:.2f} vs reference {accuracy['reference_AP']:.2f}, "
            f"ΔAP {accuracy['delta_AP']:+.2f} (max drop {accuracy['max_drop']}){why}")


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
                     eval_data: Mapping[str, Any], allow_weak_reference: bool = False
                     ) -> dict[str, Any]:
    """The manifest's ``accuracy`` section from one artifact's accuracy-check metrics.

    Args:
        metrics: at least ``AP``, ``reference_AP`` and ``delta_AP`` (AP points, 0-100;
            ``delta_AP`` = artifact - reference, negative is a drop), plus any other figures.
        max_drop: the largest allowed drop in AP points.
        eval_data: which images were used (``{"data", "seed", "num_images", "sha256"}``).
        allow_weak_reference: let the AP difference alone decide where the reference scores
            no more than ``max_drop`` (a smoke test on an untrained model).

    Returns:
        ``{**metrics, "max_drop", "passed", "eval_data"}`` (the conversion pipeline adds
        ``checked_on``: the CPU and its kind, ``edgedet.cpu_features.host_description``);
        passed means
        ``-delta_AP <= max_drop`` and a reference AP above ``max_drop``: at or below it, an
        artifact that detects nothing would pass too, so the check proves nothing and fails
        unless ``allow_weak_reference`` (``"inconclusive"`` says why either way).
    """
    delta, reference = float(metrics["delta_AP"]), float(metrics["reference_AP"])
    section = {**dict(metrics), "max_drop": float(max_drop),
               "passed": -delta <= max_drop and (reference > max_drop or allow_weak_reference),
               "eval_data": dict(eval_data)}
    if reference <= max_drop:
        section["inconclusive"] = (f"the reference scores AP {reference:.2f}, not above the "
                                   f"allowed drop {max_drop:g}: an artifact that detects "
                                   "nothing would pass")
    return section


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
        "format_version": format_version_of({"preprocess": preprocess}),
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
    # The model files' bytes as checked against their sha256 (``load`` with ``verify_files``,
    # ``verify_files()``): a backend loads these, not the file again, so the model it runs is
    # the one checked even if the file is replaced or rewritten meanwhile.
    contents: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], verify_files: bool = True) -> Artifact:
        """The artifact in ``directory`` (see ``load_manifest``), with the verified
        ``contents`` of its model files when ``verify_files``."""
        manifest, contents = _load(Path(directory), verify_files)
        return cls(Path(directory), manifest, contents)

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
        # The format version of the manifest as staged, with the sections the target and
        # double-scale testing added after make_manifest (an attend tail's points block).
        full = {**manifest, "files": files, "format_version": format_version_of(manifest)}
        validate_manifest(full, source=f"staged artifact {directory}")
        return cls(directory, full)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def files(self) -> dict[str, Path]:
        """``{name in the artifact: path}`` of the model files."""
        return {name: self.directory / name for name in self.manifest["files"]}

    def verify_files(self) -> Mapping[str, bytes]:
        """Check every model file against its sha256 (``ManifestError`` naming a bad one);
        returns their contents as checked."""
        with _FolderReader(self.directory) as folder:
            return _verified_contents(folder, self.manifest)


class _FolderReader:
    """Reads the files of one artifact folder through one open handle of the folder.

    ``quantize/publish.py`` replaces a zoo entry by exchanging two folders in one rename, so
    a reader opening each file by its path could get the old manifest and the new model file
    (a review's 40-second race: 2.4% of loads mixed). Through the folder's handle every file
    comes from the folder as it was when it was opened. Where the OS cannot open files
    relative to a folder (Windows), the paths are used.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None
        if not directory.is_dir():
            raise ManifestError(f"artifact directory not found: {directory}")
        if os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY"):
            try:
                self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise ManifestError(f"cannot open artifact directory {directory}: "
                                    f"{exc.strerror}") from exc

    def __enter__(self) -> _FolderReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, name: str) -> bytes | None:
        """The bytes of file ``name`` in the folder; None when it is not a regular file there
        (missing, a folder, a FIFO that would block)."""
        if self._fd is None:
            path = self.directory / name
            return path.read_bytes() if path.is_file() else None
        try:  # (non-blocking: opening a FIFO would wait for a writer)
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=self._fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            os.set_blocking(fd, True)
            with open(fd, "rb", closefd=False) as handle:
                return handle.read()
        finally:
            os.close(fd)


def _load(artifact_dir: Path, verify_files: bool) -> tuple[dict, dict[str, bytes]]:
    """The manifest and (when ``verify_files``) the checked model files' bytes, both read
    through one handle of the folder (``_FolderReader``)."""
    manifest_path = artifact_dir / MANIFEST_NAME
    with _FolderReader(artifact_dir) as folder:
        raw = folder.read(MANIFEST_NAME)
        if raw is None:
            raise ManifestError(f"{manifest_path} not found: not an edgedet artifact directory "
                                "(the conversion pipeline writes manifest.json last)")
        try:
            manifest = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"{manifest_path} is not valid JSON: {exc}") from exc
        validate_manifest(manifest, source=str(manifest_path))
        return manifest, _verified_contents(folder, manifest) if verify_files else {}


def load_manifest(artifact_dir: str | os.PathLike[str], verify_files: bool = True) -> dict:
    """Read, validate and (by default) hash-check the artifact in ``artifact_dir``.

    Returns:
        The manifest as a dict (JSON types).

    Raises:
        ManifestError: the directory or manifest is missing, the manifest is not valid JSON or
            lacks / mistypes a field the runtime needs, or a listed file is missing or its
            sha256 differs (the message names the file).
    """
    return _load(Path(artifact_dir), verify_files)[0]


def verify_artifact_files(artifact_dir: str | os.PathLike[str], manifest: Mapping) -> None:
    """Check every file listed in ``manifest["files"]`` exists and has the listed sha256.

    Raises:
        ManifestError: naming the first missing or mismatching file.
    """
    with _FolderReader(Path(artifact_dir)) as folder:
        _verified_contents(folder, manifest)


def _verified_contents(folder: _FolderReader, manifest: Mapping) -> dict[str, bytes]:
    contents = {}
    for name, expected in manifest["files"].items():
        path = folder.directory / name
        data = folder.read(name)
        if data is None:
            raise ManifestError(f"model file missing: {path} (listed in {MANIFEST_NAME})")
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.lower():
            raise ManifestError(
                f"model file {path} is corrupt or truncated: sha256 {actual[:16]}... "
                f"({len(data)} bytes) does not match {expected[:16]}... from "
                f"{MANIFEST_NAME}; re-copy or re-export the artifact"
            )
        contents[name] = data
    return contents


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


__all__ = [
    "ACCURACY_KEYS", "DEFAULT_NMS_MODE", "DOUBLE_SCALE_STEM", "FORMAT_VERSION", "INPUT_NAME",
    "MANIFEST_NAME", "MODEL_STEM", "PRECISIONS", "READABLE_FORMAT_VERSIONS", "REQUIRED_KEYS",
    "Artifact", "ManifestError", "UncheckedArtifactError", "accuracy_section",
    "check_file_name", "check_sources", "check_summary", "double_scale_files",
    "format_version_of", "load_manifest", "main_model_files", "make_manifest",
    "require_passed_check", "sha256_file", "validate_manifest", "verify_artifact_files",
]
