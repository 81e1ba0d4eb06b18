"""Atomic file writing: nothing half-written is ever left where a good file was."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def error_text(error: BaseException) -> str:
    """One line for the user: ``str(error)``, but an ``OSError`` of a path as "PATH: reason"
    (or "SOURCE -> DESTINATION: reason" for a rename) instead of Python's "[Errno 20] Not a
    directory: 'PATH'", with what to do about a file standing where a folder of the path
    should be (``mkdir`` under a file)."""
    paths = [error.filename, error.filename2] if isinstance(error, OSError) else []
    if not (isinstance(error, OSError) and error.strerror and paths[0] is not None
            and all(p is None or isinstance(p, str | bytes | os.PathLike) for p in paths)):
        return str(error)  # (a file descriptor's error has an int for its file name)
    where = " -> ".join(os.fsdecode(p) for p in paths if p is not None)
    # (EEXIST on a file reaches the user from mkdir(exist_ok=True) only: the exclusive
    # creates of temporary files here pick another name.)
    if error.filename2 is None and (error.errno == errno.ENOTDIR or (
            error.errno == errno.EEXIST and os.path.isfile(os.fsdecode(paths[0])))):
        return (f"{where}: a file stands where a folder of this path should be; give a path "
                "under a folder")
    return f"{where}: {error.strerror[:1].lower()}{error.strerror[1:]}"


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux's
    /proc/self/status): ``os.umask`` can only read it by setting another, and for that moment
    a file another thread creates would get the wrong permissions (0666 under a 077 umask)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # the fallback's brief window errs toward private files
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    If the body raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    os.chmod(tmp_name, 0o666 & ~current_umask())
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = None) -> None:
    """Serialise ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be (or become) a folder to write into, as the end of a sentence
    about it ("is a file", "lies under X, which is a file"), or None. For every command's
    ``--out``, before it writes anything (``mkdir`` would fail with a bare OS error)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return "is a file"
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        return f"lies under {above}, which is a file"
    return None


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files ``atomic_open`` left in ``directory`` when a process
    was killed mid-write; returns what was removed.

    Call it only where no other process may be writing (e.g. under ``exclusive_lock``).
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.glob(".*.tmp"):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


class DirectoryBusyError(RuntimeError):
    """Another process holds the lock of a directory it is writing."""


class OutputFolderError(OSError):
    """An output folder that cannot be created or locked (a read-only or virtual file system,
    no permission): the message names the folder and the OS's reason."""


def _folder_error(what: str, verb: str, directory: Path, error: OSError) -> OutputFolderError:
    """``what cannot VERB DIRECTORY: reason`` for an ``OSError`` of making or locking it."""
    reason = error_text(error)
    reason = reason.removeprefix(f"{directory}: ")  # (mkdir's error names the folder again)
    return OutputFolderError(f"{what} cannot {verb} {directory}: {reason}")


@contextlib.contextmanager
def exclusive_lock(directory: str | os.PathLike[str], what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (a ``.lock`` file in it) for the block.

    Two runs writing the same output folder would delete each other's temporaries and race
    for the artifact names; the second one stops at once with ``DirectoryBusyError``, which
    names the holder (``what`` and its process id, written into the lock file: a training
    run's folder refuses ``quantize/run.py`` as well as a second training). The lock is
    released by the OS when the process dies, so a killed run never leaves it held. A folder
    the OS will not create, or whose lock file it will not open, is an ``OutputFolderError``
    naming it (every command's bad ``--out``: exit 2, one line).
    """
    directory = Path(directory)
    lock_path = directory / ".lock"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; runs are trusted not to overlap
        yield
        return
    except OSError as error:
        raise _folder_error(what, "create", directory, error) from error
    try:
        handle = open(lock_path, "a")  # noqa: SIM115 (closed by the with below)
    except OSError as error:
        raise _folder_error(what, "write to", directory, error) from error
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryBusyError(f"{what} cannot write to {directory}: "
                                     f"{_lock_holder(lock_path)} is writing there (it holds "
                                     f"{lock_path}); wait for it or use another output "
                                     "folder") from None
        _HELD_LOCK_FDS.add(handle.fileno())
        try:
            handle.truncate(0)  # (append mode: the write lands at the new end, 0)
            handle.write(f"{what} (pid {os.getpid()})\n")
            handle.flush()
            yield
        finally:
            _HELD_LOCK_FDS.discard(handle.fileno())
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# An flock belongs to the open file, which a forked child (a DataLoader worker) shares: after
# a kill -9 of the run, its orphaned workers would keep the folder locked until they exit.
# Each child points its copies of the lock descriptors at /dev/null instead (dup2, so the
# child's file objects stay valid); the parent's lock is untouched, as it still has the file.
_HELD_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    if not _HELD_LOCK_FDS:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in _HELD_LOCK_FDS:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _lock_holder(lock_path: Path) -> str:
    """Who holds ``lock_path``, as its holder wrote it ("train/main.py (pid 123)"); "another
    process" where it wrote nothing readable (yet)."""
    try:
        holder = lock_path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        holder = ""
    return f"another process, {holder}," if holder else "another process"
