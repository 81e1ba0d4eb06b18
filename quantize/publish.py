"""Copy a checked artifact into the package's model zoo under a zoo name.

    python quantize/publish.py runs/p/cpu/passd_mobilenet_int8 --name passd_mobilenet_int8

The artifact's file hashes are verified first; the copy is assembled beside the zoo entry and
renamed into place (via ``edgedet.artifact.write_artifact``), so a failed publish never
leaves a half-written zoo model. The manifest's ``name`` becomes the zoo name; the report
files travel with it. A double-scale 2x model (``quantize/run.py --double-scale``) travels only
if its own accuracy check passed: otherwise the entry is published without it (a warning
says so), since ``Detector(..., double_scale=True)`` would refuse it anyway, and the copies of
``report.md`` and ``report.json`` say at their top that the entry does not carry the 2x model
they also describe.
"""

from __future__ import annotations

import sys

from edgedet._repo import use_repo_root

use_repo_root(__file__)

import argparse
import json
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any

from edgedet._io import DirectoryBusyError, error_text, exclusive_lock
from edgedet.artifact import (
    ManifestError,
    UncheckedArtifactError,
    load_manifest,
    require_passed_check,
)
from edgedet.artifact_writer import clean_leftovers, write_artifact
from edgedet.backends import BACKENDS
from edgedet.zoo import ZOO_DIR
from quantize.report import REPORT_JSON, REPORT_MD

_WINDOWS_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                                   *(f"lpt{i}" for i in range(10))})


def publish(artifact_dir: str | os.PathLike[str], name: str,
            zoo_dir: str | os.PathLike[str] = ZOO_DIR, allow_inconclusive: bool = False
            ) -> Path:
    """Copy ``artifact_dir`` to ``zoo_dir/name`` with the manifest renamed; returns the copy.

    The copy carries the model files, the manifest and the conversion report (``report.*``
    and the ``*.png`` pictures); an inconclusive check (``--allow-weak-reference``: it proved
    nothing) is refused unless ``allow_inconclusive``, and a 2x model whose check was
    inconclusive is left out likewise."""
    artifact_dir = Path(artifact_dir)
    # Lower-case ASCII: no two entries that one folder holds on a case-insensitive disk, no
    # look-alike letters; not a name Windows reserves for devices.
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in _WINDOWS_DEVICE_NAMES:
        raise ValueError(f"zoo name must be lower-case letters, digits and underscores, "
                         f"starting with a letter (and not a Windows device name), got {name!r}")
    manifest = load_manifest(artifact_dir)  # verifies every file's sha256
    suffix = next((b for b in BACKENDS if name.endswith(f"_{b}")), None)
    if suffix is not None and manifest["backend"] != suffix:
        # Detector("X", backend=suffix) loads the entry named X_<suffix> for that backend.
        raise ValueError(f"zoo name {name!r} says backend {suffix!r}, but the artifact is a "
                         f"{manifest['backend']} build; name it without that suffix, or "
                         f"'..._{manifest['backend']}'")
    try:  # the zoo ships only checked models
        require_passed_check(manifest, str(artifact_dir))
    except UncheckedArtifactError as error:  # its text offers --allow-unchecked: not here
        problem = str(error).split("; its detections may be wrong")[0]
        raise UncheckedArtifactError(f"{problem}; the zoo takes only artifacts that passed "
                                     "their accuracy check (quantize/run.py)") from None
    if manifest["accuracy"].get("inconclusive"):  # converted with --allow-weak-reference
        if not allow_inconclusive:
            raise ValueError(f"{artifact_dir}'s accuracy check was inconclusive "
                             f"({manifest['accuracy']['inconclusive']}): it shows nothing "
                             "about the model; --allow-inconclusive publishes it anyway")
        print(f"warning: {artifact_dir}'s accuracy check was inconclusive: "
              f"{manifest['accuracy']['inconclusive']}", file=sys.stderr)
    shipped, left_out = _without_unchecked_second_scale(manifest, artifact_dir,
                                                        allow_inconclusive)
    model_files = {f: artifact_dir / f for f in shipped["files"]}
    # The report travels; hidden files (temporaries, a lock) and anything else do not.
    extra_files = {p.name: p for p in artifact_dir.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and (p.name in (REPORT_MD, REPORT_JSON) or p.suffix.lower() == ".png")}
    # The manifest keeps its files' hashes: write_artifact checks the copies against them.
    manifest = {**shipped, "name": name}
    with tempfile.TemporaryDirectory(prefix="edgedet-publish-") as scratch:
        if left_out:
            extra_files.update(_reports_saying_what_was_left_out(extra_files, name, left_out,
                                                                 Path(scratch)))
        # One publish at a time per zoo: clean_leftovers would take another run's staged copy
        # (or the entry it just moved aside) for a killed run's and remove or restore it.
        with exclusive_lock(zoo_dir, "quantize/publish.py"):
            clean_leftovers(zoo_dir)
            return write_artifact(Path(zoo_dir) / name, model_files, manifest, extra_files)


def _without_unchecked_second_scale(manifest: dict[str, Any], artifact_dir: Path,
                                    allow_inconclusive: bool = False
                                    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(manifest, None)``, or ``manifest`` less its 2x model (section and files) unless that
    model's check passed (conclusively, or ``allow_inconclusive``), with ``{"files": [...],
    "why": ...}`` saying what was left out."""
    section = manifest.get("double_scale")
    if not section:
        return manifest, None
    accuracy = section.get("accuracy")
    inconclusive = bool(accuracy and accuracy.get("inconclusive")) and not allow_inconclusive
    if accuracy and accuracy.get("passed") and not inconclusive:
        return manifest, None
    why = ("passed an inconclusive accuracy check" if inconclusive
           else "failed its accuracy check" if accuracy else "has no accuracy check")
    print(f"warning: {artifact_dir}'s double-scale 2x model ({', '.join(section['files'])}) "
          f"{why}; publishing without it (the copied reports say so at their top)",
          file=sys.stderr)
    second_files = set(section["files"])
    files = {name: digest for name, digest in manifest["files"].items()
             if name not in second_files}
    return ({**manifest, "files": files, "double_scale": None},
            {"files": sorted(second_files), "why": why})


def _reports_saying_what_was_left_out(extra_files: dict[str, Path], name: str,
                                      left_out: dict[str, Any], scratch: Path
                                      ) -> dict[str, Path]:
    """Copies of the artifact's ``report.md`` / ``report.json`` (those it has) in ``scratch``
    that open with what the zoo entry ``name`` does not carry."""
    files = ", ".join(left_out["files"])
    replaced: dict[str, Path] = {}
    if REPORT_MD in extra_files:
        text = extra_files[REPORT_MD].read_text(encoding="utf-8")
        note = (f"> **Published as zoo model `{name}` without its double-scale 2x model** "
                f"({files}): that model {left_out['why']}. What this report says about the "
                "2x model describes a file this zoo entry does not carry.\n\n")
        replaced[REPORT_MD] = scratch / REPORT_MD
        replaced[REPORT_MD].write_text(note + text, encoding="utf-8")
    if REPORT_JSON in extra_files:
        try:
            report = json.loads(extra_files[REPORT_JSON].read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{extra_files[REPORT_JSON]} is not readable JSON: {error}"
                             ) from error
        if isinstance(report, dict):
            report = {"published_without": {"double_scale": left_out}, **report}
            replaced[REPORT_JSON] = scratch / REPORT_JSON
            replaced[REPORT_JSON].write_text(json.dumps(report, indent=2) + "\n",
                                             encoding="utf-8")
    return replaced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quantize/publish.py",
        description="Copy a checked artifact directory into the package's model zoo "
        "(edgedet/zoo/NAME), verifying its files and renaming it in the manifest.")
    parser.add_argument("artifact", type=Path, help="artifact directory (from quantize/run.py)")
    parser.add_argument("--name", required=True, help="zoo name, e.g. passd_mobilenet_int8")
    parser.add_argument("--zoo-dir", type=Path, default=ZOO_DIR,
                        help="zoo folder (default: the package's edgedet/zoo)")
    parser.add_argument("--allow-inconclusive", action="store_true",
                        help="publish an artifact whose check was inconclusive (converted with "
                        "--allow-weak-reference; refused by default), and its 2x model in that "
                        "case (left out by default)")
    args = parser.parse_args(argv)
    if argv is None:  # the process's own command: a SIGTERM stops it like Ctrl-C, so that
        # the staged copy is removed now rather than by the next publish
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        out = publish(args.artifact, args.name, args.zoo_dir, args.allow_inconclusive)
    except (ManifestError, ValueError, OSError, DirectoryBusyError) as error:
        print(f"publish: error: {error_text(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("publish: interrupted; the zoo entry is as it was", file=sys.stderr)
        return 130
    print(f"published {args.artifact} as zoo model {args.name!r}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
