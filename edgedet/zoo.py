"""The model zoo: artifact directories shipped inside the package, ``edgedet/zoo/<name>/``.

A zoo model is an ordinary artifact directory (``manifest.json`` + model files) that the
conversion pipeline wrote into the package; ``Detector("<name>")`` loads it offline.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from edgedet.artifact import MANIFEST_NAME, ManifestError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


def list_models() -> list[str]:
    """Names of the models shipped in the zoo (sorted; empty when none are installed).

    Hidden folders are not models: ``.NAME.new-*`` / ``.NAME.old-*`` are a publish's staged
    copy and the entry it moved aside (``quantize/publish.py``), in place for a moment, or
    until the next publish after a killed one."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir()
                  if not p.name.startswith(".") and (p / MANIFEST_NAME).is_file())


def zoo_model_dir(name: str) -> Path:
    """The artifact directory of zoo model ``name``.

    Raises:
        ValueError: no such zoo model (the message lists the available ones).
    """
    models = list_models()
    if name not in models:
        raise ValueError(f"no zoo model named {name!r}; available: "
                         f"{', '.join(models) if models else 'none installed'}")
    return ZOO_DIR / name


def resolve_model(name_or_path: str | os.PathLike[str], backend: str | None = None) -> Path:
    """A zoo name or an artifact directory → the artifact directory to load.

    An existing artifact directory wins over a zoo model of the same name: a path is the more
    explicit request (a folder without a manifest does not hide a zoo model). A zoo model is
    built for one backend; its builds for other backends are the zoo models named
    ``<name>_<backend>`` (``passd_mobilenet_int8_openvino``), and asking for ``name`` with
    such a ``backend`` loads that sibling.

    Raises:
        ValueError: neither an existing directory nor a zoo model name.
    """
    path = Path(name_or_path)
    name = os.fspath(name_or_path)
    if path.is_dir() and ((path / MANIFEST_NAME).exists() or name not in list_models()):
        return path
    if backend is not None and f"{name}_{backend}" in list_models():
        return ZOO_DIR / f"{name}_{backend}"
    if name in list_models():
        return ZOO_DIR / name
    models = list_models()
    raise ValueError(
        f"model {name!r} is neither an artifact directory (with {MANIFEST_NAME}) nor a zoo "
        f"model; zoo models: {', '.join(models) if models else 'none installed'}"
    )


def model_summary(artifact_dir: str | os.PathLike[str]) -> dict:
    """A one-row description of an artifact, read from its manifest without hashing files.

    Keys: ``name``, ``architecture``, ``precision``, ``backend``, ``input_size`` ``[W, H]``,
    ``num_classes``, ``size_mb`` (model files), ``AP`` (from the accuracy check, or None),
    ``path``.

    Raises:
        ManifestError: the manifest is missing, not JSON, or lacks / mistypes a field.
    """
    artifact_dir = Path(artifact_dir)
    manifest_path = artifact_dir / MANIFEST_NAME
    try:  # read leniently (listing stays fast and takes older manifests), but never crash
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest.get("files") or {}
        size_bytes = sum((artifact_dir / f).stat().st_size for f in files
                         if (artifact_dir / f).is_file())
        accuracy = manifest.get("accuracy") or {}
        summary = {
            "name": manifest.get("name", artifact_dir.name),
            "architecture": manifest.get("architecture"),
            "precision": manifest.get("precision"),
            "backend": manifest.get("backend"),
            "input_size": (manifest.get("preprocess") or {}).get("input_size"),
            "num_classes": len(manifest.get("class_names") or []),
            "size_mb": size_bytes / 1e6,
            "AP": accuracy.get("AP"),
            "path": str(artifact_dir),
        }
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise ManifestError(f"{manifest_path}: not a readable artifact manifest ({exc})"
                            ) from exc
    # The listing formats these; a mistyped one must be named here, not crash it there.
    for key in ("name", "architecture", "precision", "backend"):
        if summary[key] is not None and not isinstance(summary[key], str):
            raise ManifestError(f"{manifest_path}: {key} is {summary[key]!r}, not a string")
    size = summary["input_size"]
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ManifestError(f"{manifest_path}: preprocess.input_size is {size!r}, not "
                            "[width, height]")
    ap = summary["AP"]
    if ap is not None and (isinstance(ap, bool) or not isinstance(ap, int | float)
                           or not math.isfinite(ap)):  # (and JSON has no NaN to list)
        raise ManifestError(f"{manifest_path}: accuracy.AP is {ap!r}, not a number")
    return summary
