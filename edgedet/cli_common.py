"""What the ``edgedet`` subcommands share: the one-line error and loading a detector."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgedet.detector import Detector


class CliError(Exception):
    """An error to report to the user as one line, without a traceback."""


# The files `edgedet detect` takes as images (a folder's other files are not read).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# What a shell reports for a command ended by SIGPIPE: its stdout's reader left (``| head``).
SIGPIPE_STATUS = 128 + 13


def detach_stdout() -> None:
    """Point standard output at the null device once its reader has left, so that no later
    write or the interpreter's exit-time flush fails on the broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def path_argument(text: str) -> Path:
    """An argparse ``type`` for paths: ``Path(text)``, refusing an empty string, which
    ``Path`` would read as the current folder (``--out ''`` wrote a dataset there)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (it would mean the current folder)")
    return Path(text)


def option_overrides(args: argparse.Namespace) -> dict:
    """Detector options given on the command line (unset ones come from the manifest)."""
    names = ("score_threshold", "iou_threshold", "max_detections", "nms_mode", "threads",
             "device", "double_scale", "tiles")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def load_detector(args: argparse.Namespace) -> Detector:
    """The ``Detector`` of ``--model`` / ``--backend`` with the command line's options; a
    backend that cannot load it is a ``CliError``."""
    from edgedet.backends import BackendError
    from edgedet.detector import Detector

    try:
        return Detector(args.model, backend=args.backend,
                        allow_unchecked=getattr(args, "allow_unchecked", False),
                        **option_overrides(args))
    except BackendError as exc:
        raise CliError(str(exc)) from exc
