"""``argparse`` types of ``train/main.py``'s flags (each error names what it expected)."""

from __future__ import annotations

import argparse
import json


def parse_size(text: str) -> tuple[int, int]:
    """``"320"`` → (320, 320); ``"1000x600"`` → (1000, 600) as (width, height)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--img-size: expected N or WxH, got {text!r}") \
            from error
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 32:
        raise argparse.ArgumentTypeError(f"--img-size: expected N or WxH >= 32, got {text!r}")
    return parts[0], parts[1]


def parse_minutes(text: str) -> float:
    """A number of minutes >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected minutes >= 0, got {text!r}")
    return value


def parse_model_arg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` → ``(key, value)``, the value JSON-decoded when it parses."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: object = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value
