"""Argument checks the benchmark scripts share: a bad value is a usage error (exit 2) before
anything is built, loaded or timed."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence


def require_at_least(parser: argparse.ArgumentParser, least: float,
                     **values: float | None) -> None:
    """Each of ``values`` (flag name with ``_`` for ``-``: value) is at least ``least``."""
    for name, value in values.items():
        if value is not None and not value >= least:  # also nan
            parser.error(f"--{name.replace('_', '-')} must be >= {least:g}, got {value}")


def require_checkpoint(parser: argparse.ArgumentParser, path: str) -> None:
    """``path`` names a checkpoint file (X, X.safetensors or X.json)."""
    from edgedet.models.checkpoint import CheckpointError, checkpoint_weights_path

    try:
        checkpoint_weights_path(path)
    except CheckpointError as error:
        parser.error(str(error))


def require_zoo_models(parser: argparse.ArgumentParser, names: Iterable[str]) -> list[str]:
    """``names`` as a list, each a zoo model or artifact folder (a typo is a usage error
    before minutes of loading)."""
    from edgedet.zoo import resolve_model

    names = list(names)
    for name in names:
        try:
            resolve_model(name)
        except ValueError as error:
            parser.error(str(error))
    return names


def require_choices(parser: argparse.ArgumentParser, flag: str, values: Sequence[str],
                    choices: Sequence[str]) -> None:
    """Each of a comma-separated flag's ``values`` is one of ``choices``."""
    unknown = [v for v in values if v not in choices]
    if unknown or not values:
        parser.error(f"{flag}: unknown {unknown or 'empty list'}; choose from "
                     f"{', '.join(choices)}")
