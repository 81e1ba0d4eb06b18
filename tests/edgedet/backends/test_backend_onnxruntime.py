from pathlib import Path

import numpy as np
import pytest
import torch

from edgedet.backends import BackendError, create_backend, model_file_for
from edgedet.backends.onnxruntime import OnnxRuntimeBackend
from tests.edgedet.tiny_artifacts import OUTPUT_NAMES, TinyHead, export_onnx


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyHead]:
    model = TinyHead("passd", seed=4)
    path = tmp_path_factory.mktemp("ort") / "model.onnx"
    export_onnx(model, path, OUTPUT_NAMES["passd"], dynamic_batch=True)
    return path, model


def test_outputs_match_torch_by_name(tiny_onnx: tuple[Path, TinyHead]) -> None:
    path, model = tiny_onnx
    backend = OnnxRuntimeBackend(path, threads=1)
    assert backend.input_name == "images" and backend.output_names == OUTPUT_NAMES["passd"]
    assert backend.input_shape == (None, 3, 48, 64)  # dynamic batch
    images = np.random.default_rng(0).normal(size=(2, 3, 48, 64)).astype(np.float32)
    outputs = backend.run(images)
    with torch.no_grad():
        expected = model(torch.from_numpy(images))
    for name, tensor in zip(OUTPUT_NAMES["passd"], expected, strict=True):
        np.testing.assert_allclose(outputs[name], tensor.numpy(), atol=1e-4)
    assert outputs["cls_logits"].shape == (2, 120, 4)


def test_sessions_stop_their_threads_spinning_after_each_run(
        tiny_onnx: tuple[Path, TinyHead]) -> None:
    # Left spinning, a session's threads slow the next session's (or OpenVINO's) run 2x.
    for threads in (None, 2):
        backend = OnnxRuntimeBackend(tiny_onnx[0], threads=threads)
        options = backend._session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        if threads is not None:
            assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1


def test_create_backend_returns_onnxruntime(tiny_onnx: tuple[Path, TinyHead]) -> None:
    backend = create_backend("onnxruntime", tiny_onnx[0])
    assert isinstance(backend, OnnxRuntimeBackend) and backend.name == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend 'nosuch'"):
        create_backend("nosuch", tiny_onnx[0])


def test_an_unreadable_model_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(BackendError, match=r"onnxruntime cannot load .*broken\.onnx"):
        OnnxRuntimeBackend(path)


def test_model_file_for_picks_what_the_backend_reads() -> None:
    assert model_file_for("onnxruntime", ["report.json", "model.onnx"]) == "model.onnx"
    assert model_file_for("openvino", ["model.bin", "model.xml"]) == "model.xml"
    assert model_file_for("openvino", ["model.onnx"]) == "model.onnx"
    with pytest.raises(BackendError, match=r"reads \.onnx model files; this artifact has "
                                           r"\['model\.bin', 'model\.xml'\]"):
        model_file_for("onnxruntime", ["model.xml", "model.bin"])


def test_device_chooses_execution_providers(tiny_onnx: tuple[Path, TinyHead]) -> None:
    from edgedet.backends.onnxruntime import providers_for

    assert providers_for(None) == ["CPUExecutionProvider"]
    assert providers_for("CPU") == ["CPUExecutionProvider"]
    backend = create_backend("onnxruntime", tiny_onnx[0], device="cpu")
    assert backend.providers == ("CPUExecutionProvider",)  # type: ignore[attr-defined]
    # A provider this build lacks is named with the ones it has, not silently dropped.
    with pytest.raises(BackendError, match=r"no CUDAExecutionProvider here.*offers .*CPU"):
        create_backend("onnxruntime", tiny_onnx[0], device="cuda")
    for blank in (" ", ","):  # ran on the CPU without a word
        with pytest.raises(BackendError, match="names no execution provider"):
            providers_for(blank)
