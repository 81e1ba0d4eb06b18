"""Writing artifact directories so that nothing half-written or unchecked takes a good one's
place (the contract itself is ``edgedet.artifact``).

``write_artifact`` copies the files into a ``.NAME.new-*`` folder beside ``NAME``, writes the
complete manifest last, and swaps the folder into place in one step where the OS can
(``renameat2(RENAME_EXCHANGE)`` on Linux), else with two renames whose backup
``clean_leftovers`` puts back after a kill. Readers see the old artifact or the new one, never
a missing or partial one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgedet._io import current_umask, remove_stale_temporaries, write_json_atomic
from edgedet.artifact import (
    MANIFEST_NAME,
    ManifestError,
    check_file_name,
    check_sources,
    format_version_of,
    sha256_file,
    validate_manifest,
)


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
        manifest: the complete manifest; its ``files``, when present (a staged or loaded
            artifact's), must match the copies: what was checked is what ships.
        extra_files: other files to copy (report, pictures); not hashed, not needed to load.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ManifestError: no model file, a missing source file, a bad file name or manifest,
            or a copy whose hash differs from the manifest's.
    """
    out_dir = Path(out_dir)
    check_sources(out_dir, model_files)
    for name, source in (extra_files or {}).items():
        check_file_name(out_dir, name)
        if not Path(source).is_file():
            raise ManifestError(f"{out_dir}: source of {name!r} not found: {source}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    # mkdtemp makes a 0700 folder; the artifact should be readable like any other folder.
    staging.chmod(0o777 & ~current_umask())
    try:
        for name, source in {**(extra_files or {}), **model_files}.items():
            shutil.copyfile(source, staging / name)
        files = {name: sha256_file(staging / name) for name in model_files}
        expected = {name: str(digest).lower() for name, digest in
                    (manifest.get("files") or {}).items()}
        if expected and expected != files:
            differ = sorted(set(expected) ^ set(files)) or sorted(
                name for name in files if expected[name] != files[name])
            raise ManifestError(f"{out_dir}: the model files differ from the manifest's "
                                f"hashes: {', '.join(differ)}")
        # The oldest format whose readers apply the manifest as written (an older edgedet
        # then refuses one it would misread; ``format_version_of``).
        full = {**manifest, "files": files, "format_version": format_version_of(manifest)}
        validate_manifest(full, source=f"manifest for {out_dir}")
        write_json_atomic(staging / MANIFEST_NAME, full, indent=2)
        _replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _replace_directory(staging: Path, target: Path) -> None:
    """Put ``staging`` in the place of ``target`` so that ``target`` never goes missing.

    Where the OS can swap two directories in one step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``) the old artifact is swapped out and deleted. Elsewhere the old one
    is renamed to ``.NAME.old-*`` first and the new one renamed in; a kill between the two
    renames leaves that backup, which ``clean_leftovers`` puts back at the next run.
    """
    if not target.exists():
        os.replace(staging, target)
        return
    if _exchange_directories(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous artifact
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


def _exchange_directories(first: Path, second: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    OS, the C library or the file system cannot."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second),
                       rename_exchange)
    return result == 0


def _remove(path: Path) -> None:
    """A folder with what it holds, or a file or link (an entry that was one, swapped out)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(directory: str | os.PathLike[str]) -> list[str]:
    """Undo what a killed ``write_artifact`` left in ``directory``; returns what it did.

    ``.NAME.new-*`` (a copy that never got into place) is deleted; ``.NAME.old-*`` (the
    previous artifact, moved aside just before a kill) is renamed back to ``NAME`` when
    ``NAME`` is missing and deleted otherwise; ``.*.tmp`` files of interrupted atomic writes
    are deleted. Call it only while no other process writes there (``exclusive_lock``).
    """
    directory = Path(directory)
    done: list[str] = []
    if not directory.is_dir():
        return done
    for path in sorted(directory.iterdir()):
        name = path.name
        if not (name.startswith(".") and (path.is_dir() or path.is_symlink()
                                          or path.is_file())):
            continue
        stem, new, _ = name[1:].rpartition(".new-")
        if new and stem:
            _remove(path)
            done.append(f"removed unfinished {name}")
            continue
        stem, old, _ = name[1:].rpartition(".old-")
        if old and stem:
            if (directory / stem).exists():
                _remove(path)
                done.append(f"removed replaced {name}")
            else:
                os.replace(path, directory / stem)
                done.append(f"restored {stem} from {name}")
    done += [f"removed {p.name}" for p in remove_stale_temporaries(directory)]
    return done
