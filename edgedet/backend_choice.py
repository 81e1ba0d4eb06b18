"""Which backend runs an artifact: the one asked for, or for ``"auto"`` the artifact's own,
else its table entry's fallback where that is installed and reads the model file
(``Detector``'s ``backend`` argument)."""

from __future__ import annotations

from collections.abc import Mapping

from edgedet.artifact import main_model_files
from edgedet.backends import (
    BACKENDS,
    BackendError,
    BackendUnavailableError,
    is_available,
    model_file_for,
    pip_package,
)


def choose_backend(requested: str, manifest: Mapping) -> tuple[str, str | None]:
    """The backend to run ``manifest``'s artifact with (see ``Detector``'s ``backend``), and
    why it is a fallback (None when it is the requested or the artifact's own)."""
    if requested not in (*BACKENDS, "auto"):
        raise ValueError(f"unknown backend {requested!r}; choose one of "
                         f"{', '.join((*BACKENDS, 'auto'))} or pass a loaded backend")
    if requested != "auto":
        return requested, None
    native = str(manifest["backend"])
    if is_available(native):
        return native, None
    fallback = BACKENDS[native].fallback
    if fallback is not None and is_available(fallback) and can_read(fallback, manifest):
        return fallback, f"{native} not installed"
    hint = ""
    for other in BACKENDS:
        if other != native and is_available(other) and can_read(other, manifest):
            hint = f", or pass backend={other!r} (installed, and it reads this model)"
            break
    if not hint and fallback is not None and can_read(fallback, manifest):
        hint = f", or install {fallback} to run it there: pip install {pip_package(fallback)}"
    raise BackendUnavailableError(
        f"artifact {manifest['name']!r} was exported for {native}, which is not installed: "
        f"pip install {pip_package(native)} (or pip install 'edgedet[{native}]'){hint}")


def can_read(backend: str, manifest: Mapping) -> bool:
    """Whether ``backend`` reads one of the artifact's model files."""
    try:
        model_file_for(backend, main_model_files(manifest))
    except BackendError:
        return False
    return True
