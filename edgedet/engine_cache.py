"""Cache of built TensorRT engines, keyed by everything an engine is only valid for.

A TensorRT engine is built for one model, one TensorRT version and one GPU (its compute
capability), with the builder flags and workspace it was built with; deserialised anywhere
else it fails or, worse, misbehaves. Each cached ``<slug>.engine`` therefore has a sidecar
``<slug>.engine.json`` holding its ``EngineKey`` and the engine file's sha256 and size, and
``load_engine`` refuses (``StaleEngineError``, never a crash) an engine whose sidecar is
missing, unreadable or different from what this machine needs, or whose bytes are not the ones
the sidecar describes. Pure Python: importable without TensorRT, a GPU or torch, so the CLI
and tests can use it anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedet._io import atomic_open, write_json_atomic
from edgedet.backends import BackendError

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"  # appended to the engine's name: <slug>.engine.json
BUILDER_FLAGS: tuple[str, ...] = ("fp16", "int8")


class StaleEngineError(BackendError):
    """A cached engine that must not be used here (the message says why and how to rebuild)."""


@dataclass(frozen=True)
class EngineKey:
    """What one engine is valid for.

    Attributes:
        model_sha256: hex sha256 of the ONNX file the engine was built from.
        tensorrt_version: ``tensorrt.__version__`` (engines do not cross versions).
        gpu_name: the CUDA device name, e.g. ``"Orin"``.
        compute_capability: ``"major.minor"``, e.g. ``"8.7"``.
        builder_flags: sorted subset of ``BUILDER_FLAGS`` (sorted on construction).
        workspace_mb: the builder's workspace memory-pool limit.
    """

    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    builder_flags: tuple[str, ...]
    workspace_mb: int

    def __post_init__(self) -> None:
        # Sorted so that ("int8", "fp16") and ("fp16", "int8") are one key and one file.
        object.__setattr__(self, "builder_flags", tuple(sorted(set(self.builder_flags))))
        unknown = [f for f in self.builder_flags if f not in BUILDER_FLAGS]
        if unknown:
            raise ValueError(f"unknown builder flag(s) {unknown}; known: {BUILDER_FLAGS}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.model_sha256):
            raise ValueError(f"model_sha256 must be 64 lower-case hex digits, "
                             f"got {self.model_sha256!r}")
        if not isinstance(self.workspace_mb, int) or self.workspace_mb < 1:
            raise ValueError(f"workspace_mb must be an integer >= 1, got {self.workspace_mb!r}")

    def slug(self) -> str:
        """A stable file-name stem, readable where it can be, distinct for every key.

        The readable part truncates the model hash and the GPU name, so a short hash of the
        whole key is appended: two keys never share a file.
        """
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
        return "-".join((self.model_sha256[:16], f"trt{_safe(self.tensorrt_version)}",
                         _safe(self.gpu_name)[:32] or "gpu",
                         f"sm{_safe(self.compute_capability).replace('.', '')}",
                         "+".join(self.builder_flags) or "fp32", f"ws{self.workspace_mb}",
                         digest[:8]))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "builder_flags": list(self.builder_flags)}

    @classmethod
    def from_dict(cls, data: Any) -> EngineKey:
        """The key in ``data`` (``to_dict``'s form); ValueError for anything else."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or sorted(data) != sorted(names):
            raise ValueError(f"an engine key needs exactly the fields {names}")
        text = [n for n in names[:4] if not isinstance(data[n], str)]
        flags = data["builder_flags"]
        if text or not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise ValueError("engine key fields have the wrong types")
        return cls(**{**data, "builder_flags": tuple(flags)})

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (sm {self.compute_capability})"


def _safe(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")


def default_cache_dir() -> Path:
    """``$EDGEDET_ENGINE_CACHE``, else ``$EDGEDET_CACHE_DIR/engines``, else
    ``$XDG_CACHE_HOME/edgedet/engines``, else ``~/.cache/edgedet/engines``."""
    env = os.environ
    if env.get("EDGEDET_ENGINE_CACHE"):
        return Path(env["EDGEDET_ENGINE_CACHE"]).expanduser()
    if env.get("EDGEDET_CACHE_DIR"):
        return Path(env["EDGEDET_CACHE_DIR"]).expanduser() / "engines"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "edgedet" / "engines"
    return Path.home() / ".cache" / "edgedet" / "engines"


def engine_path(cache_dir: str | os.PathLike[str], key: EngineKey) -> Path:
    """Where the engine of ``key`` lives in ``cache_dir`` (``<slug>.engine``)."""
    return Path(cache_dir) / f"{key.slug()}{ENGINE_SUFFIX}"


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar of engine file ``path`` (``<slug>.engine.json``)."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def save_engine(path: str | os.PathLike[str], engine_bytes: bytes, key: EngineKey) -> None:
    """Write ``engine_bytes`` to ``path`` and its sidecar, each atomically, sidecar last.

    The old sidecar goes first: a process killed at any point leaves either the previous
    complete pair, or an engine without (or with a non-matching) sidecar, which
    ``load_engine`` refuses; never an engine that looks valid but is not.
    """
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        sidecar_path(path).unlink()
    with atomic_open(path, "wb") as handle:
        handle.write(engine_bytes)
    write_json_atomic(sidecar_path(path), {
        "key": key.to_dict(), "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "engine_size": len(engine_bytes)}, indent=2)


def load_engine(path: str | os.PathLike[str], expected_key: EngineKey, *,
                artifact: str | os.PathLike[str] | None = None) -> bytes:
    """The bytes of engine ``path``, after checking them against its sidecar and
    ``expected_key``.

    Args:
        artifact: named in the rebuild hint of errors (default: ``ARTIFACT``).

    Raises:
        StaleEngineError: the engine or its sidecar is missing or unreadable, the sidecar's
            key differs from ``expected_key`` (the message says how), or the engine's size or
            sha256 differs from the sidecar's (truncated, or replaced by another file).
    """
    path = Path(path)
    hint = f"; rebuild with: edgedet build-engine {artifact or 'ARTIFACT'} --rebuild"
    try:
        sidecar = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        found = EngineKey.from_dict(sidecar["key"])
        recorded_sha, recorded_size = str(sidecar["engine_sha256"]), sidecar["engine_size"]
    except FileNotFoundError:
        raise StaleEngineError(f"TensorRT engine {path} has no sidecar {sidecar_path(path).name} "
                               f"(a build was interrupted, or the file was copied without it)"
                               f"{hint}") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise StaleEngineError(f"the sidecar of TensorRT engine {path} is unreadable ({exc})"
                               f"{hint}") from None
    if found != expected_key:
        raise StaleEngineError(f"TensorRT engine {path} was built for {found.describe()}, this "
                               f"is {expected_key.describe()}; differs in "
                               f"{_differences(found, expected_key)}{hint}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StaleEngineError(f"cannot read TensorRT engine {path}: {exc}{hint}") from None
    if len(data) != recorded_size or hashlib.sha256(data).hexdigest() != recorded_sha:
        raise StaleEngineError(f"TensorRT engine {path} is truncated or not the file its sidecar "
                               f"describes ({len(data)} bytes, sidecar says {recorded_size})"
                               f"{hint}")
    return data


def _differences(found: EngineKey, expected: EngineKey) -> str:
    """``"tensorrt_version 8.6.2 -> 10.3.0, ..."`` (engine's value -> this machine's)."""
    changes = []
    for name, old in found.to_dict().items():
        new = getattr(expected, name)
        new = list(new) if isinstance(new, tuple) else new
        if old != new:
            if name == "model_sha256":
                old, new = f"{old[:12]}...", f"{new[:12]}..."
            changes.append(f"{name} {old} -> {new}")
    return ", ".join(changes)


def find_or_build(cache_dir: str | os.PathLike[str], key: EngineKey,
                  build: Callable[[], bytes], *, rebuild: bool = False,
                  artifact: str | os.PathLike[str] | None = None) -> Path:
    """The path of a valid cached engine for ``key`` (``find_or_load``'s path)."""
    return find_or_load(cache_dir, key, build, rebuild=rebuild, artifact=artifact)[0]


def find_or_load(cache_dir: str | os.PathLike[str], key: EngineKey,
                 build: Callable[[], bytes], *, rebuild: bool = False,
                 artifact: str | os.PathLike[str] | None = None) -> tuple[Path, bytes]:
    """``(path, bytes)`` of a valid cached engine for ``key``, calling ``build`` only when
    needed: the bytes are the ones checked (or built and saved), so a caller deserializes
    them without reading the file again.

    Without an engine file for ``key``, ``build()`` makes one and it is saved. With one that is
    valid, it is reused. With one that is stale (``load_engine``'s checks), ``StaleEngineError``
    says so, unless ``rebuild``: then, as always with ``rebuild``, it is built again and
    replaced atomically. Concurrent builders of one key (processes, threads) take turns on a
    lock file, and a waiter finding the engine built meanwhile reuses it.

    Raises:
        StaleEngineError: a stale engine is in the way and ``rebuild`` is False.
        BackendError (or anything ``build`` raises): the build failed; nothing is saved.
    """
    path = engine_path(cache_dir, key)
    if not rebuild and path.exists():
        # Stale, or another process is saving it right now: look again under its lock.
        with contextlib.suppress(StaleEngineError):
            return path, load_engine(path, key, artifact=artifact)
    with _build_lock(path):
        if not rebuild and path.exists():
            return path, load_engine(path, key, artifact=artifact)
        data = build()
        save_engine(path, data, key)
    return path, data


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Block until this process holds the build lock of engine ``path``.

    A build can take minutes on a Jetson; a second process (or thread) that needs the same
    engine should wait and reuse it, not build it again. flock locks are per open file, so
    threads of one process exclude each other too; the OS drops the lock of a killed process.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; concurrent builds only waste time
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
