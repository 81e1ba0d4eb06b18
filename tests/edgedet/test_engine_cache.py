import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgedet import engine_cache
from edgedet.backends import BackendError
from edgedet.engine_cache import (
    EngineKey,
    StaleEngineError,
    default_cache_dir,
    engine_path,
    find_or_build,
    find_or_load,
    load_engine,
    save_engine,
    sidecar_path,
)

SHA = hashlib.sha256(b"model").hexdigest()
ENGINE = b"\x00serialized engine\xff" * 100


def _key(**changes: object) -> EngineKey:
    fields: dict = {"model_sha256": SHA, "tensorrt_version": "8.6.2", "gpu_name": "Orin",
                    "compute_capability": "8.7", "builder_flags": ("int8", "fp16"),
                    "workspace_mb": 1024}
    return EngineKey(**{**fields, **changes})


def _saved(tmp_path: Path, key: EngineKey | None = None) -> Path:
    key = key or _key()
    path = engine_path(tmp_path, key)
    save_engine(path, ENGINE, key)
    return path


def test_the_slug_is_stable_readable_and_safe_as_a_file_name() -> None:
    slug = _key().slug()
    # A literal: a slug that changes between releases would orphan every cached engine.
    assert slug == "9372c470eeadd5ec-trt8.6.2-orin-sm87-fp16+int8-ws1024-340c29c5"
    assert slug == _key().slug() == _key(builder_flags=("fp16", "int8", "fp16")).slug()
    assert re.fullmatch(r"[a-z0-9.+-]+", slug) and len(slug) < 100
    odd = _key(gpu_name="NVIDIA GeForce RTX 4090 / (weird) name " * 4).slug()
    assert re.fullmatch(r"[a-z0-9.+-]+", odd) and len(odd) < 120


@pytest.mark.parametrize("change", [
    {"model_sha256": hashlib.sha256(b"other").hexdigest()},
    {"model_sha256": SHA[:-1] + ("0" if SHA[-1] != "0" else "1")},  # past the readable 16
    {"tensorrt_version": "10.3.0"},
    {"gpu_name": "NVIDIA H200"},
    {"compute_capability": "9.0"},
    {"builder_flags": ("fp16",)},
    {"workspace_mb": 2048},
])
def test_every_field_changes_the_slug(change: dict) -> None:
    assert _key(**change).slug() != _key().slug()


def test_bad_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown builder flag"):
        _key(builder_flags=("tf32",))
    with pytest.raises(ValueError, match="64 lower-case hex"):
        _key(model_sha256="abc")
    with pytest.raises(ValueError, match="workspace_mb"):
        _key(workspace_mb=0)


def test_key_dict_round_trip() -> None:
    key = _key()
    data = json.loads(json.dumps(key.to_dict()))
    assert data["builder_flags"] == ["fp16", "int8"]
    assert EngineKey.from_dict(data) == key
    for bad in ([], {**data, "extra": 1}, {k: v for k, v in data.items() if k != "gpu_name"},
                {**data, "gpu_name": 7}, {**data, "builder_flags": "fp16"}):
        with pytest.raises(ValueError, match=r"an engine key needs exactly the fields|"
                                             r"engine key fields have the wrong types"):
            EngineKey.from_dict(bad)


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    for name in ("EDGEDET_ENGINE_CACHE", "EDGEDET_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "edgedet" / "engines"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgedet" / "engines"
    monkeypatch.setenv("EDGEDET_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "engines"
    monkeypatch.setenv("EDGEDET_ENGINE_CACHE", str(tmp_path / "engines"))
    assert default_cache_dir() == tmp_path / "engines"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    assert path == tmp_path / f"{_key().slug()}.engine"
    assert sidecar_path(path) == tmp_path / f"{_key().slug()}.engine.json"
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar == {"key": _key().to_dict(), "engine_size": len(ENGINE),
                       "engine_sha256": hashlib.sha256(ENGINE).hexdigest()}
    assert load_engine(path, _key()) == ENGINE


def test_a_stale_engine_is_a_backend_error() -> None:
    assert issubclass(StaleEngineError, BackendError)


@pytest.mark.parametrize(("expected", "message"), [
    ({"tensorrt_version": "10.3.0"},
     r"built for TensorRT 8\.6\.2 on Orin \(sm 8\.7\), this is TensorRT 10\.3\.0 on Orin.*"
     r"tensorrt_version 8\.6\.2 -> 10\.3\.0"),
    ({"gpu_name": "NVIDIA H200", "compute_capability": "9.0"},
     r"this is TensorRT 8\.6\.2 on NVIDIA H200 \(sm 9\.0\); differs in gpu_name Orin -> "
     r"NVIDIA H200, compute_capability 8\.7 -> 9\.0"),
    ({"model_sha256": hashlib.sha256(b"other").hexdigest()}, r"differs in model_sha256 "),
    ({"builder_flags": ("fp16",)}, r"builder_flags \['fp16', 'int8'\] -> \['fp16'\]"),
])
def test_an_engine_for_another_key_is_stale(tmp_path: Path, expected: dict,
                                            message: str) -> None:
    path = _saved(tmp_path)
    with pytest.raises(StaleEngineError, match=message) as info:
        load_engine(path, _key(**expected), artifact="runs/jetson/fp16")
    assert "rebuild with: edgedet build-engine runs/jetson/fp16 --rebuild" in str(info.value)


def _drop_sidecar(path: Path) -> None:
    sidecar_path(path).unlink()


def _truncate(path: Path) -> None:
    path.write_bytes(ENGINE[:-7])


def _garbage_sidecar(path: Path) -> None:
    sidecar_path(path).write_bytes(b"\x00\xff{not json")


def _wrong_shape_sidecar(path: Path) -> None:
    sidecar_path(path).write_text(json.dumps({"key": [1, 2], "engine_size": "x"}))


def _foreign_engine(path: Path) -> None:
    path.write_bytes(b"x" * len(ENGINE))  # right size, other bytes


def _engine_gone(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(("damage", "message"), [
    (_drop_sidecar, r"has no sidecar .*\.engine\.json \(a build was interrupted"),
    (_truncate, rf"truncated or not the file its sidecar describes \({len(ENGINE) - 7} bytes"),
    (_garbage_sidecar, "sidecar of TensorRT engine .* is unreadable"),
    (_wrong_shape_sidecar, "sidecar of TensorRT engine .* is unreadable"),
    (_foreign_engine, "truncated or not the file its sidecar describes"),
    (_engine_gone, "cannot read TensorRT engine"),
])
def test_a_damaged_engine_or_sidecar_is_stale(tmp_path: Path, damage, message: str) -> None:
    path = _saved(tmp_path)
    damage(path)
    with pytest.raises(StaleEngineError, match=message) as info:
        load_engine(path, _key())
    assert "rebuild with: edgedet build-engine ARTIFACT --rebuild" in str(info.value)


def test_a_save_killed_before_the_sidecar_leaves_no_valid_looking_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C between the two writes

    monkeypatch.setattr(engine_cache, "write_json_atomic", killed)
    path = engine_path(tmp_path, _key())
    with pytest.raises(KeyboardInterrupt):
        save_engine(path, ENGINE, _key())
    assert path.read_bytes() == ENGINE  # the engine is there, but...
    with pytest.raises(StaleEngineError, match="no sidecar"):
        load_engine(path, _key())
    with pytest.raises(StaleEngineError, match="no sidecar"):  # ...never reused silently
        find_or_build(tmp_path, _key(), lambda: pytest.fail("must not build"))


def test_a_save_failing_mid_engine_leaves_no_valid_engine_and_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved(tmp_path)  # a valid engine that a rebuild is replacing
    real_open = engine_cache.atomic_open

    @contextlib.contextmanager
    def disk_full(target: Path, mode: str = "w") -> Iterator[object]:
        with real_open(target, mode) as handle:

            class HalfWriter:
                def write(self, data: bytes) -> None:
                    handle.write(data[: len(data) // 2])
                    raise OSError("No space left on device")

            yield HalfWriter()

    monkeypatch.setattr(engine_cache, "atomic_open", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_engine(path, b"new engine bytes", _key())
    with pytest.raises(StaleEngineError):  # neither the old engine nor half of the new one
        load_engine(path, _key())
    assert not list(tmp_path.glob(".*.tmp"))


def test_find_or_build_builds_once_then_reuses(tmp_path: Path) -> None:
    calls: list[int] = []

    def build() -> bytes:
        calls.append(1)
        return ENGINE

    path = find_or_build(tmp_path / "cache", _key(), build)
    assert path == engine_path(tmp_path / "cache", _key()) and len(calls) == 1
    assert find_or_build(tmp_path / "cache", _key(), build) == path and len(calls) == 1
    assert load_engine(path, _key()) == ENGINE
    # Another key is another file, built once too.
    other = find_or_build(tmp_path / "cache", _key(tensorrt_version="10.3.0"), build)
    assert other != path and len(calls) == 2


def test_find_or_load_hands_over_the_bytes_it_checked_or_built(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    # The TensorRT backend deserializes these bytes: the engine file is read once per load
    # (it was read again after the check), and a built engine is not read back at all.
    import edgedet.engine_cache as engine_cache

    reads: list[Path] = []
    real_load = engine_cache.load_engine

    def counting(path, key, **kwargs):
        reads.append(Path(path))
        return real_load(path, key, **kwargs)

    monkeypatch.setattr(engine_cache, "load_engine", counting)
    path, data = find_or_load(tmp_path, _key(), lambda: ENGINE)
    assert (path, data, reads) == (engine_path(tmp_path, _key()), ENGINE, [])
    again, data = find_or_load(tmp_path, _key(), lambda: pytest.fail("must not build"))
    assert (again, data, reads) == (path, ENGINE, [path])


def test_find_or_build_refuses_a_stale_engine_unless_rebuilding(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    path.write_bytes(b"truncated")
    with pytest.raises(StaleEngineError, match="truncated"):
        find_or_build(tmp_path, _key(), lambda: pytest.fail("must not build"))
    assert find_or_build(tmp_path, _key(), lambda: b"rebuilt", rebuild=True) == path
    assert load_engine(path, _key()) == b"rebuilt"
    # rebuild also replaces a valid engine
    find_or_build(tmp_path, _key(), lambda: b"again", rebuild=True)
    assert load_engine(path, _key()) == b"again"


def test_a_failed_build_saves_nothing(tmp_path: Path) -> None:
    def failing() -> bytes:
        raise BackendError("TensorRT could not build an engine")

    with pytest.raises(BackendError, match="could not build"):
        find_or_build(tmp_path, _key(), failing)
    assert not engine_path(tmp_path, _key()).exists()
    assert find_or_build(tmp_path, _key(), lambda: ENGINE).read_bytes() == ENGINE


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def slow_build() -> bytes:
        calls.append(1)
        time.sleep(0.2)
        return ENGINE

    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(
        find_or_build(tmp_path, _key(), slow_build))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(paths)) == 1 and len(paths) == 4
    assert load_engine(paths[0], _key()) == ENGINE


def test_a_reader_during_another_process_s_save_waits_for_it(tmp_path: Path) -> None:
    # The quick look without the lock found the engine of a save in progress without its
    # sidecar (written last) and called it stale ("rebuild with --rebuild"); it now looks
    # again under the build lock, which the saver holds.
    from edgedet.engine_cache import _build_lock

    path = engine_path(tmp_path, _key())
    path.parent.mkdir(parents=True, exist_ok=True)
    saving, reader_started = threading.Event(), threading.Event()

    def saver() -> None:
        with _build_lock(path):
            path.write_bytes(ENGINE)  # the engine is in place, its sidecar not yet
            saving.set()
            reader_started.wait(30)
            time.sleep(0.3)  # (the reader is then past its quick look, at the lock)
            save_engine(path, ENGINE, _key())

    thread = threading.Thread(target=saver)
    thread.start()
    assert saving.wait(30)
    reader_started.set()
    try:
        found = find_or_build(tmp_path, _key(), lambda: pytest.fail("must not build"))
    finally:
        thread.join()
    assert found == path and load_engine(path, _key()) == ENGINE
