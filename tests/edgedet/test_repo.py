"""``use_repo_root``: a script imports its own checkout's ``edgedet``, not an installed one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """\
from edgedet._repo import use_repo_root

use_repo_root(__file__)

import edgedet
import edgedet.marker

print(edgedet.__file__)
print(edgedet.marker.WHO)
"""


def _run(script: Path) -> list[str]:
    # This repository plays the installed package: first on the path, as an editable install is.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.split()


def test_a_script_of_another_checkout_imports_that_checkouts_edgedet(tmp_path: Path) -> None:
    """A git worktree beside an editable install: the worktree's package, not the installed."""
    other = tmp_path / "worktree"
    (other / "edgedet").mkdir(parents=True)
    (other / "edgedet" / "__init__.py").write_text("")
    (other / "edgedet" / "_repo.py").write_text((REPO / "edgedet" / "_repo.py").read_text())
    (other / "edgedet" / "marker.py").write_text("WHO = 'worktree'\n")
    (other / "train").mkdir()
    (other / "train" / "script.py").write_text(SCRIPT)

    package_file, who = _run(other / "train" / "script.py")

    assert Path(package_file).resolve() == (other / "edgedet" / "__init__.py").resolve()
    assert who == "worktree"


def test_a_script_of_the_checkout_already_imported_keeps_its_package() -> None:
    """The usual case (the script's checkout is the installed one): nothing is imported twice."""
    import edgedet
    from edgedet._repo import use_repo_root

    use_repo_root(str(REPO / "train" / "main.py"))

    assert sys.modules["edgedet"] is edgedet
    assert str(REPO) in sys.path
