"""The tensorrt backend: its table entry, the ONNX Runtime fallback and ``edgedet build-engine``
run anywhere; building and running engines needs TensorRT and a GPU (``-m gpu``)."""

import importlib
import json
import re
import shutil
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgedet import Detector, backends
from edgedet.backends import BACKENDS, BackendError, BackendUnavailableError, create_backend
from edgedet.backends.onnxruntime import AUTO_PROVIDERS, providers_for
from edgedet.cli import main
from tests.edgedet.tiny_artifacts import OUTPUT_NAMES, TinyHead, export_onnx, write_artifact

TRTEXEC = ("trtexec --onnx=model.onnx --fp16 --memPoolSize=workspace:1024 "
           "--saveEngine=model.engine")


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (72 + 8 * i, 96, 3), dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="module")
def trt_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``jetson`` fp16 artifact: backend tensorrt, a plain float ONNX file."""
    return write_artifact(tmp_path_factory.mktemp("trt") / "tiny_trt", TinyHead("ssd", seed=3),
                          "ssd", backend="tensorrt", precision="fp16", name="tiny_trt")


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT looks not installed, whatever this machine has."""
    real = backends.is_available

    def is_available(name: str) -> bool:
        return name != "tensorrt" and real(name)

    monkeypatch.setattr("edgedet.backends.is_available", is_available)
    monkeypatch.setattr("edgedet.backend_choice.is_available", is_available)


def test_the_table_entry() -> None:
    spec = BACKENDS["tensorrt"]
    assert (spec.module, spec.implementation, spec.suffixes) == (
        "tensorrt", "edgedet.backends.tensorrt:TensorRTBackend", (".onnx",))
    # One execution context per thread: the backend itself is not thread-safe.
    assert spec.session_per_thread is True
    assert spec.fallback == "onnxruntime" and ".onnx" in BACKENDS[spec.fallback].suffixes
    assert "tensorrt" in spec.pip_package and "cuda-python" in spec.pip_package
    assert "python3-libnvinfer" in spec.pip_package and "cuda:N" in spec.device_help
    assert all(s.fallback is None for name, s in BACKENDS.items() if name != "tensorrt")


def test_auto_falls_back_to_onnxruntime_on_its_best_providers(
    trt_artifact: Path, no_tensorrt: None
) -> None:
    detector = Detector(trt_artifact)
    assert detector.backend_name == "onnxruntime"
    assert detector.fallback_reason == "tensorrt not installed"
    providers = providers_for("auto")
    assert detector.backend.providers == tuple(providers)  # type: ignore[attr-defined]
    assert (f"backend='onnxruntime' (fallback: tensorrt not installed; providers "
            f"{', '.join(providers)})") in repr(detector)
    assert repr(detector).startswith("Detector('tiny_trt', ")
    assert "precision='fp16'" in repr(detector) and "check='passed" in repr(detector)
    plain = Detector(trt_artifact, backend="onnxruntime")
    assert plain.fallback_reason is None and "fallback" not in repr(plain)
    for frame in _frames(3):
        ours, theirs = detector.detect(frame), plain.detect(frame)
        np.testing.assert_allclose(ours.xyxy, theirs.xyxy, atol=1e-4)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)


def test_the_fallback_gets_device_auto_only_when_none_was_given(
    trt_artifact: Path, no_tensorrt: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices: list[str | None] = []

    def spy(name: str, model_path: Path, threads: int | None = None,
            device: str | None = None, contents: dict | None = None) -> object:
        devices.append(device)
        return create_backend(name, model_path, threads=threads, device=device,
                              contents=contents)

    monkeypatch.setattr("edgedet.detector.create_backend", spy)
    Detector(trt_artifact)
    Detector(trt_artifact, device="cpu")
    Detector(trt_artifact, backend="onnxruntime")
    assert devices == ["auto", "cpu", None]
    # A TensorRT device the fallback does not know: the error says why ONNX Runtime runs it.
    with pytest.raises(BackendError, match=r"^tensorrt is not used here \(tensorrt not "
                                           r"installed\), so onnxruntime runs this model, and: "):
        Detector(trt_artifact, device="bogus:7")


def test_an_explicit_tensorrt_that_is_missing_says_what_to_install(
    trt_artifact: Path, no_tensorrt: None
) -> None:
    with pytest.raises(BackendUnavailableError,
                       match=r"backend 'tensorrt' is not installed: pip install tensorrt "
                             r"cuda-python .*python3-libnvinfer"):
        Detector(trt_artifact, backend="tensorrt")


def test_without_tensorrt_or_its_fallback_auto_names_both_options(
    trt_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def only_openvino(name: str) -> bool:
        return name == "openvino"

    monkeypatch.setattr("edgedet.backend_choice.is_available", only_openvino)
    with pytest.raises(BackendUnavailableError,
                       match=r"exported for tensorrt, which is not installed: pip install "
                             r"tensorrt cuda-python.*or pass backend='openvino'"):
        Detector(trt_artifact)


def test_with_no_runtime_at_all_auto_names_the_extra_and_the_fallback(
    trt_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgedet.backend_choice.is_available", lambda name: False)
    with pytest.raises(BackendUnavailableError,
                       match=r"or pip install 'edgedet\[tensorrt\]'\), or install onnxruntime "
                             r"to run it there: pip install onnxruntime"):
        Detector(trt_artifact)


def test_providers_auto_keeps_the_available_ones_in_order_ending_with_cpu(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    real = providers_for("auto")
    assert real[-1] == "CPUExecutionProvider"
    assert set(real) <= set(ort.get_available_providers()) | {"CPUExecutionProvider"}
    assert real == [p for p in AUTO_PROVIDERS if p in real]
    for available, expected in [
        (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
         ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
        (["AzureExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
         ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        (["CPUExecutionProvider", "TensorrtExecutionProvider"],
         ["TensorrtExecutionProvider", "CPUExecutionProvider"]),
        (["AzureExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ]:
        monkeypatch.setattr(ort, "get_available_providers", lambda a=available: list(a))
        assert providers_for("auto") == providers_for(" AUTO ") == expected


def test_build_engine_without_tensorrt_says_how_to_install(
    trt_artifact: Path, no_tensorrt: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build-engine", str(trt_artifact)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("edgedet build-engine: error: TensorRT's Python package is not "
                          "installed")
    for needed in ("python3-libnvinfer", "--system-site-packages",
                   "pip install tensorrt cuda-python"):
        assert needed in err
    # With the trtexec command the jetson target records, that is offered as well.
    copy = shutil.copytree(trt_artifact, tmp_path / "with_trtexec")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tensorrt"] = {"trtexec": TRTEXEC, "builder_flags": ["fp16"],
                            "checked_against": ["8.6", "10.1"]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["build-engine", str(copy), "--rebuild", "--workspace", "512"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "python3-libnvinfer" in lines[0] and TRTEXEC in lines[1]


def test_build_engine_refuses_other_artifacts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cpu = write_artifact(tmp_path / "cpu", TinyHead("ssd"), "ssd", checked=False)
    assert main(["build-engine", str(cpu)]) == 2
    assert "is for backend onnxruntime, not tensorrt" in capsys.readouterr().err
    assert main(["build-engine", str(tmp_path / "nowhere")]) == 2
    assert "neither an artifact directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["build-engine", "--help"])
    assert info.value.code == 0 and "--rebuild" in capsys.readouterr().out


# ------------------------------------------- the backend's own logic, on stand-in runtimes


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[types.SimpleNamespace]:
    """``edgedet.backends.tensorrt`` imported against ``fake_tensorrt``'s stand-ins, with an
    engine cache in ``tmp_path``."""
    from tests.edgedet.backends import fake_tensorrt

    cuda = fake_tensorrt.FakeCudaRuntime()
    for name, module in fake_tensorrt.make_modules(cuda=cuda).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "edgedet.backends.tensorrt", raising=False)
    monkeypatch.delattr(backends, "tensorrt", raising=False)
    monkeypatch.setenv("EDGEDET_ENGINE_CACHE", str(tmp_path / "engines"))
    monkeypatch.delenv("EDGEDET_TRT_WORKSPACE_MB", raising=False)
    monkeypatch.setattr(fake_tensorrt._Builder, "builds", 0)
    module = importlib.import_module("edgedet.backends.tensorrt")
    yield types.SimpleNamespace(module=module, cuda=cuda, cache=tmp_path / "engines",
                                builder=fake_tensorrt._Builder)
    # The module is bound to the stand-ins: never leave it for a real import to find.
    sys.modules.pop("edgedet.backends.tensorrt", None)
    if getattr(backends, "tensorrt", None) is module:
        delattr(backends, "tensorrt")


def test_on_stand_ins_it_builds_once_caches_and_matches_onnxruntime(
    trt_artifact: Path, fake: types.SimpleNamespace
) -> None:
    detector = Detector(trt_artifact, backend="tensorrt")
    assert detector.backend_name == "tensorrt" and detector.fallback_reason is None
    assert "backend='tensorrt', precision='fp16'" in repr(detector)
    (engine,) = fake.cache.glob("*.engine")
    assert "-trt10.3.0-fake-gpu-sm87-fp16-ws1024-" in engine.name
    built = json.loads(engine.read_bytes()[len(b"FAKETRT1"):])
    assert built["flags"] == ["FP16"] and built["workspace"] == 1024 << 20
    reference = Detector(trt_artifact, backend="onnxruntime")
    for frame in _frames(3):
        images, _ = reference.preprocess(frame)
        ours, theirs = detector.run_model(images), reference.run_model(images)
        assert sorted(ours) == sorted(theirs)
        for name in theirs:
            assert ours[name].dtype == np.float32
            np.testing.assert_array_equal(ours[name], theirs[name])
    Detector(trt_artifact, backend="tensorrt")
    assert fake.builder.builds == 1  # the second load deserialized the cached engine


def test_on_stand_ins_each_thread_gets_its_own_context(
    trt_artifact: Path, fake: types.SimpleNamespace
) -> None:
    detector = Detector(trt_artifact, backend="tensorrt")
    frames = _frames(3)
    single = [detector.detect(frame) for frame in frames]
    results: dict[int, list] = {}

    def work(index: int) -> None:
        results[index] = [detector.detect(frame) for frame in frames]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake.cuda.streams == 9 and fake.builder.builds == 1  # 1 + 8 threads, one build
    for index in range(8):
        for got, want in zip(results[index], single, strict=True):
            np.testing.assert_array_equal(got.xyxy, want.xyxy)
            np.testing.assert_array_equal(got.scores, want.scores)


def test_on_stand_ins_bad_engines_are_stale_and_buffers_are_freed(
    trt_artifact: Path, fake: types.SimpleNamespace
) -> None:
    from edgedet.engine_cache import EngineKey, StaleEngineError, save_engine

    backend = fake.module.TensorRTBackend(trt_artifact / "model.onnx", device="cuda:0")
    assert backend.input_shape == (1, 3, 48, 64) and backend.input_name == "images"
    with pytest.raises(BackendError, match=r"takes input of shape \[1, 3, 48, 64\], got "
                                           r"\[2, 3, 48, 64\]"):
        backend.run(np.zeros((2, 3, 48, 64), np.float32))
    assert len(fake.cuda.allocations) == 3
    backend.close()
    assert not fake.cuda.allocations
    engine = backend.engine_path
    key = EngineKey.from_dict(json.loads(Path(f"{engine}.json").read_text())["key"])
    save_engine(engine, b"not an engine" * 10, key)  # a sidecar vouches for foreign bytes
    with pytest.raises(StaleEngineError, match=r"cannot deserialize .*build-engine .*tiny_trt "
                                               r"--rebuild"):
        Detector(trt_artifact, backend="tensorrt")
    engine.write_bytes(b"trunc")
    with pytest.raises(StaleEngineError, match="truncated"):
        Detector(trt_artifact, backend="tensorrt")
    with pytest.raises(BackendError, match="no CUDA device 3: this machine has 1"):
        Detector(trt_artifact, backend="tensorrt", device="3")


def test_on_stand_ins_build_errors_name_the_file(
    trt_artifact: Path, fake: types.SimpleNamespace, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(BackendError, match=r"TensorRT cannot parse .*broken\.onnx: "
                                           r"ModelImporter"):
        fake.module.build_engine_bytes(broken, ("fp16",), 256)
    dynamic = tmp_path / "dynamic.onnx"
    export_onnx(TinyHead("ssd"), dynamic, OUTPUT_NAMES["ssd"], dynamic_batch=True)
    with pytest.raises(BackendError, match="input 'images' has dynamic shape"):
        fake.module.build_engine_bytes(dynamic, ("fp16",), 256)
    monkeypatch.setattr(fake.builder, "build_serialized_network", lambda *a: None)
    with pytest.raises(BackendError, match=r"could not build an engine from .*model\.onnx "
                                           r"\(flags fp16, workspace 1024 MB\)"):
        Detector(trt_artifact, backend="tensorrt")
    assert not list(fake.cache.glob("*.engine"))


def test_on_stand_ins_build_engine_builds_reuses_and_rebuilds(
    trt_artifact: Path, fake: types.SimpleNamespace, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["build-engine", str(trt_artifact)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"engine: .*\.engine \(built in [0-9.]+ s", out)
    assert "key: TensorRT 10.3.0 on Fake GPU (sm 8.7), flags fp16, workspace 1024 MB" in out
    assert "note:" not in out
    assert main(["build-engine", str(trt_artifact)]) == 0
    assert "already cached, reused" in capsys.readouterr().out
    assert main(["build-engine", str(trt_artifact), "--rebuild"]) == 0
    assert "built in" in capsys.readouterr().out and fake.builder.builds == 2
    # The backend then loads what the command built.
    Detector(trt_artifact, backend="tensorrt")
    assert fake.builder.builds == 2
    other = tmp_path / "elsewhere"
    assert main(["build-engine", str(trt_artifact), "--cache-dir", str(other),
                 "--workspace", "512"]) == 0
    out = capsys.readouterr().out
    assert f"EDGEDET_ENGINE_CACHE={other}" in out and "EDGEDET_TRT_WORKSPACE_MB=512" in out
    assert len(list(other.glob("*-ws512-*.engine"))) == 1
    assert main(["build-engine", str(trt_artifact), "--device", "1"]) == 2
    assert "no CUDA device 1" in capsys.readouterr().err
    (engine,) = fake.cache.glob("*.engine")
    engine.write_bytes(b"trunc")
    assert main(["build-engine", str(trt_artifact)]) == 2
    assert "--rebuild" in capsys.readouterr().err
    monkeypatch.setattr(fake.builder, "build_serialized_network", lambda *a: None)
    assert main(["build-engine", str(trt_artifact), "--rebuild"]) == 1
    assert "could not build an engine" in capsys.readouterr().err


def test_without_cuda_python_the_backend_says_what_to_install(
    trt_artifact: Path, fake: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    def forget_the_backend_module() -> None:  # so that the next use imports it again
        sys.modules.pop("edgedet.backends.tensorrt", None)
        monkeypatch.delattr(backends, "tensorrt", raising=False)

    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # None: "import fails"
    forget_the_backend_module()
    with pytest.raises(BackendUnavailableError, match="also needs cuda-python: pip install "
                                                      "cuda-python"):
        Detector(trt_artifact, backend="tensorrt")
    forget_the_backend_module()
    assert main(["build-engine", str(trt_artifact)]) == 2
    assert "needs cuda-python" in capsys.readouterr().err


# ----------------------------------------------------------------- with TensorRT and a GPU


def _tensorrt_backend_module():
    """``edgedet.backends.tensorrt`` where TensorRT, cuda-python and a CUDA GPU are here."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt "
                        "cuda-python on x86; JetPack's python3-libnvinfer on Jetson)")
    try:
        from edgedet.backends import tensorrt as module
    except BackendUnavailableError as exc:  # cuda-python missing
        pytest.skip(str(exc))
    try:
        module.gpu_properties(0)
    except BackendError as exc:
        pytest.skip(f"no usable CUDA GPU: {exc}")
    return module


@pytest.mark.gpu
def test_tensorrt_matches_onnxruntime_and_is_the_same_from_8_threads(
    trt_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tensorrt_backend_module()
    monkeypatch.setenv("EDGEDET_ENGINE_CACHE", str(tmp_path / "engines"))
    detector = Detector(trt_artifact, backend="tensorrt")
    assert detector.fallback_reason is None and "fallback" not in repr(detector)
    engines = list((tmp_path / "engines").glob("*.engine"))
    assert len(engines) == 1 and Path(f"{engines[0]}.json").is_file()
    assert "fp16" in engines[0].name
    reference = Detector(trt_artifact, backend="onnxruntime")
    frames = _frames(4)
    for frame in frames:
        images, _ = reference.preprocess(frame)
        ours, theirs = detector.run_model(images), reference.run_model(images)
        assert set(ours) >= set(theirs)
        for name, expected in theirs.items():
            np.testing.assert_allclose(ours[name], expected, atol=1e-2, err_msg=name)

    single = [detector.detect(frame) for frame in frames]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = [detector.detect(frame) for frame in frames for _ in range(3)]
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(list((tmp_path / "engines").glob("*.engine"))) == 1  # reused, not rebuilt
    for index in range(8):
        for position, got in enumerate(results[index]):
            want = single[position // 3]
            np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-4)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
            np.testing.assert_array_equal(got.class_ids, want.class_ids)


@pytest.mark.gpu
def test_build_engine_builds_reuses_and_a_corrupt_engine_is_stale(
    trt_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    _tensorrt_backend_module()
    from edgedet.engine_cache import EngineKey, StaleEngineError, save_engine

    monkeypatch.setenv("EDGEDET_ENGINE_CACHE", str(tmp_path / "engines"))
    assert main(["build-engine", str(trt_artifact)]) == 0
    out = capsys.readouterr().out
    assert "built in" in out and "flags fp16" in out
    assert main(["build-engine", str(trt_artifact)]) == 0
    assert "already cached" in capsys.readouterr().out
    (engine,) = (tmp_path / "engines").glob("*.engine")
    engine.write_bytes(engine.read_bytes()[:1000])
    with pytest.raises(StaleEngineError, match="rebuild with: edgedet build-engine"):
        Detector(trt_artifact, backend="tensorrt")
    assert main(["build-engine", str(trt_artifact)]) == 2
    assert "--rebuild" in capsys.readouterr().err
    assert main(["build-engine", str(trt_artifact), "--rebuild"]) == 0
    Detector(trt_artifact, backend="tensorrt").detect(_frames(1)[0])
    # Bytes TensorRT cannot deserialize (with a sidecar that vouches for them): stale too.
    key = EngineKey.from_dict(json.loads(Path(f"{engine}.json").read_text())["key"])
    save_engine(engine, b"not an engine" * 100, key)
    with pytest.raises(StaleEngineError, match=r"cannot deserialize .*--rebuild"):
        Detector(trt_artifact, backend="tensorrt")


@pytest.mark.gpu
def test_an_unparsable_onnx_file_is_named(tmp_path: Path) -> None:
    module = _tensorrt_backend_module()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(BackendError, match=r"TensorRT cannot parse .*broken\.onnx"):
        module.build_engine_bytes(broken, ("fp16",), 256)
