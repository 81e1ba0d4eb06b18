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
    """Put the folder above ``script``'s folder (the repository root) first on ``sys.path``,
    so that the script imports that checkout's ``edgedet``, ``train`` and ``quantize``."""
    root = Path(script).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # Importing this function imported whichever ``edgedet`` came first on the path before the
    # root was: an installed one, which for a script of another checkout (a git worktree beside
    # an editable install) is not the script's own. Forget it, so the script's next import of
    # ``edgedet`` finds the checkout's (nothing has used it yet but this call).
    loaded = sys.modules.get("edgedet")
    own = root / "edgedet"
    if (loaded is not None and (own / "__init__.py").is_file()
            and Path(loaded.__file__ or "").resolve().parent != own):
        for name in [n for n in sys.modules if n == "edgedet" or n.startswith("edgedet.")]:
            del sys.modules[name]
