"""The one bootstrap of the repository's scripts (``python quantize/run.py``, ``train/main.py``).

Run as a script, Python puts the script's own folder on ``sys.path``, not the repository root,
so ``import quantize`` / ``import train`` would fail; the scripts call ``use_repo_root`` first
so that these folders import the same way as under pytest. The installed package never needs
it: ``train/`` and ``quantize/`` are the repository's, not the wheel's.
"""

from __future__ import annotations

import sys
from pathlib import Path


def use_repo_root(script: str) -> None:
    """Put the folder above ``script``'s folder (the repository root) first on ``sys.path``."""
    root = str(Path(script).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
