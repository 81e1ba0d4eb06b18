"""``edgedet._io``: atomic writes keep the permissions a plain open() would give."""

from __future__ import annotations

import builtins
import os
import stat
from pathlib import Path

import pytest

from edgedet import _io
from edgedet._io import (
    OutputFolderError,
    current_umask,
    exclusive_lock,
    write_bytes_atomic,
    write_json_atomic,
)

LINUX_PROC = Path("/proc/self/status").is_file()


@pytest.fixture()
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_atomic_writes_get_the_umask_s_permissions(tmp_path: Path, umask_027) -> None:
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    write_json_atomic(tmp_path / "b.json", {"a": 1})
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
    assert current_umask() == 0o027


@pytest.mark.skipif(not LINUX_PROC, reason="reads /proc/self/status")
def test_the_umask_is_read_without_setting_it(umask_027, monkeypatch) -> None:
    # Setting it, even briefly, gave files other threads created at that moment mode 0666.
    def no_umask(mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(_io.os, "umask", no_umask)
    assert current_umask() == 0o027


def test_without_proc_the_umask_is_read_by_setting_it_back(umask_027, monkeypatch) -> None:
    real_open = builtins.open

    def no_proc(file, *args, **kwargs):
        if str(file) == "/proc/self/status":
            raise FileNotFoundError(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # and left as it was


def test_a_killed_process_s_forked_children_do_not_keep_its_folder_locked(tmp_path: Path) -> None:
    # A DataLoader worker is a forked child; after a kill -9 of the run it lives on for a while
    # and, sharing the lock's open file, used to keep the folder locked until it exited.
    import signal
    import subprocess
    import sys

    from edgedet._io import DirectoryBusyError, exclusive_lock

    script = (
        "import os, signal, sys, time\n"
        "from edgedet._io import exclusive_lock\n"
        "with exclusive_lock(sys.argv[1], 'test'):\n"
        "    child = os.fork()\n"
        "    if child == 0:\n"
        "        null = os.open(os.devnull, os.O_RDWR)\n"  # (the test's pipes close now)
        "        os.dup2(null, 1)\n"
        "        os.dup2(null, 2)\n"
        "        time.sleep(120)\n"
        "        os._exit(0)\n"
        "    print(child, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr
    orphan = int(run.stdout.split()[0])
    try:
        os.kill(orphan, 0)  # the orphan is alive while the folder is locked again
        with exclusive_lock(tmp_path, "second run"):
            assert (tmp_path / ".lock").read_text() == f"second run (pid {os.getpid()})\n"
    except DirectoryBusyError as error:
        raise AssertionError(f"the orphaned child kept the lock: {error}") from None
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_error_text_names_the_path_and_says_what_is_wrong(tmp_path: Path) -> None:
    from edgedet._io import error_text

    (tmp_path / "a_file").write_text("x")
    errors = []
    for attempt in (lambda: (tmp_path / "a_file" / "sub").mkdir(parents=True, exist_ok=True),
                    lambda: (tmp_path / "a_file").mkdir(parents=True, exist_ok=True),
                    lambda: (tmp_path / "missing.txt").read_text()):
        with pytest.raises(OSError) as caught:
            attempt()
        errors.append(error_text(caught.value))
    assert errors[0] == (f"{tmp_path / 'a_file' / 'sub'}: a file stands where a folder of this "
                         "path should be; give a path under a folder")
    assert errors[1] == errors[0].replace(str(tmp_path / "a_file" / "sub"),
                                          str(tmp_path / "a_file"))
    assert errors[2] == f"{tmp_path / 'missing.txt'}: no such file or directory"
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(OSError) as caught:  # a rename names both ends
        os.replace(tmp_path / "a_file", tmp_path / "a_folder")
    assert error_text(caught.value) == (f"{tmp_path / 'a_file'} -> {tmp_path / 'a_folder'}: "
                                        "is a directory")
    with pytest.raises(OSError) as caught:  # a file descriptor's: its own text
        os.stat(99999)
    assert error_text(caught.value) == str(caught.value)
    assert error_text(ValueError("plain")) == "plain"
    assert error_text(OSError("no path")) == "no path"


def test_a_folder_that_cannot_be_created_or_locked_is_an_error_naming_it(tmp_path: Path,
                                                                         monkeypatch) -> None:
    (tmp_path / "file").write_text("x")
    run = tmp_path / "file" / "run"
    with pytest.raises(OutputFolderError) as error, exclusive_lock(run, "x"):
        pass
    assert str(error.value) == (f"x cannot create {run}: a file stands where a folder of this "
                                "path should be; give a path under a folder")
    real_open = builtins.open

    def no_lock_file(file, *args, **kwargs):
        if str(file).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_lock_file)
    with pytest.raises(OutputFolderError) as error, exclusive_lock(tmp_path / "run", "x"):
        pass
    assert str(error.value) == (f"x cannot write to {tmp_path}/run: {tmp_path}/run/.lock: "
                                "permission denied")
    assert isinstance(error.value, OSError)  # callers that catch OSError still do
