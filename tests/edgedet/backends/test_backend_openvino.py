import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from edgedet import Detector
from edgedet.backends import BackendError
from edgedet.preprocess import (
    FrameError,
    PreprocessConfig,
    normalize_to_nchw,
    resize_to_input,
)
from tests.detections_match import assert_same_detections
from tests.edgedet.tiny_artifacts import TinyHead, write_artifact

ov = pytest.importorskip("openvino")
from edgedet.backends.openvino import OpenVinoBackend  # noqa: E402


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ov")
    model = TinyHead("passd", seed=7)
    return {
        "onnx": write_artifact(root / "onnx", model, "passd", resize="letterbox"),
        "ir": write_artifact(root / "ir", model, "passd", resize="letterbox", backend="openvino"),
        "ir_int8": write_artifact(root / "ir8", model, "passd", backend="openvino",
                                  precision="int8"),
    }


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in [(96, 128, 3), (100, 60, 3), (48, 64, 3)]]


def test_float_ops_run_in_f32_in_fp32_and_int8_artifacts(artifacts: dict[str, Path]) -> None:
    # The CPU plugin would pick bf16 on CPUs that have it; the ops INT8 artifacts keep in
    # float (sampling coordinates, attention) are the ones that cannot afford it.
    fp32 = OpenVinoBackend(artifacts["ir"] / "model.xml")
    assert fp32.inference_precision == "f32"
    int8 = OpenVinoBackend(artifacts["ir_int8"] / "model.xml")
    assert int8.inference_precision == "f32"


def test_openvino_agrees_with_onnxruntime(artifacts: dict[str, Path]) -> None:
    reference = Detector(artifacts["onnx"], backend="onnxruntime")
    on_onnx = Detector(artifacts["onnx"], backend="openvino")  # OpenVINO reads ONNX too
    on_ir = Detector(artifacts["ir"])  # auto: the artifact's own backend
    assert on_ir.backend_name == "openvino" and on_onnx.backend_name == "openvino"
    compared = 0
    for frame in _frames():
        expected = reference.detect(frame)
        for detector in (on_onnx, on_ir):
            dets = detector.detect(frame)
            assert_same_detections(dets, expected, score_atol=1e-4, box_atol=1e-2,
                                   score_threshold=reference.options.score_threshold)
            compared += len(dets)
    assert compared > 0


def test_raw_outputs_agree_with_onnxruntime(artifacts: dict[str, Path]) -> None:
    images = np.random.default_rng(1).normal(size=(1, 3, 48, 64)).astype(np.float32)
    expected = Detector(artifacts["onnx"], backend="onnxruntime").run_model(images)
    outputs = Detector(artifacts["ir"]).run_model(images)
    assert set(outputs) == set(expected)
    for name in expected:
        np.testing.assert_allclose(outputs[name], expected[name], atol=1e-4)


def test_each_thread_gets_its_own_infer_request(artifacts: dict[str, Path]) -> None:
    backend = OpenVinoBackend(artifacts["ir"] / "model.xml")
    requests = []

    def grab() -> None:
        requests.append(backend._float_model()._request())
        requests.append(backend._float_model()._request())

    threads = [threading.Thread(target=grab) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [id(r) for r in requests]
    assert len(set(ids)) == 3  # one per thread, reused within the thread


def test_outputs_are_copies_not_request_buffers(artifacts: dict[str, Path]) -> None:
    backend = OpenVinoBackend(artifacts["ir"] / "model.xml")
    rng = np.random.default_rng(2)
    first_images, second_images = rng.normal(size=(2, 1, 3, 48, 64)).astype(np.float32)
    first = backend.run(first_images)
    kept = {k: v.copy() for k, v in first.items()}
    backend.run(second_images)
    for name in kept:
        np.testing.assert_array_equal(first[name], kept[name])


def test_onnxruntime_cannot_run_an_ir_artifact(artifacts: dict[str, Path]) -> None:
    with pytest.raises(BackendError, match=r"'onnxruntime' reads \.onnx"):
        Detector(artifacts["ir"], backend="onnxruntime")


def test_an_unreadable_model_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.xml"
    path.write_text("<net>not really</ne")
    with pytest.raises(BackendError, match=r"openvino cannot load .*broken\.xml"):
        OpenVinoBackend(path)


def test_device_reaches_openvino(artifacts: dict[str, Path]) -> None:
    detector = Detector(artifacts["ir"], device="CPU")
    assert detector.backend.device == "CPU"  # type: ignore[attr-defined]
    # A device this machine lacks is named with the ones it has.
    with pytest.raises(BackendError, match=r"no device 'NOSUCH' here; available: "):
        Detector(artifacts["ir"], device="NOSUCH")
    # OpenVINO's names are capitals; "cpu" asks for the same device, " " for none.
    assert Detector(artifacts["ir"], device="cpu").backend.device == "CPU"  # type: ignore
    with pytest.raises(BackendError, match=r"no device '' here"):
        Detector(artifacts["ir"], device=" ")


@pytest.mark.parametrize("color_order", ["rgb", "bgr"])
def test_frame_runner_normalises_as_numpy_does(artifacts: dict[str, Path],
                                               color_order: str) -> None:
    # OpenVINO's PrePostProcessor takes over normalize_to_nchw: the same outputs from the
    # resized uint8 frame as from the normalised float input, in either channel order.
    backend = OpenVinoBackend(artifacts["ir"] / "model.xml")
    config = PreprocessConfig((64, 48), resize="letterbox", color_order=color_order,
                              mean=(10.0, 120.0, 200.0), std=(30.0, 60.0, 90.0))
    run_frames = backend.frame_runner(config)
    for frame in _frames():
        resized = resize_to_input(frame, config)[0]
        expected = backend.run(normalize_to_nchw(resized, config))
        outputs = run_frames(resized[None])
        assert set(outputs) == set(expected)
        for name in expected:
            np.testing.assert_allclose(outputs[name], expected[name], atol=1e-4)
    # The channel order matters for this frame, so the test would see a swap gone wrong.
    swapped = dataclasses.replace(config, color_order="bgr" if color_order == "rgb" else "rgb")
    resized = resize_to_input(_frames()[0], config)[0]
    moved = backend.run(normalize_to_nchw(resized, swapped))["cls_logits"]
    assert np.abs(moved - run_frames(resized[None])["cls_logits"]).max() > 1e-3


def test_detector_hands_openvino_resized_frames(artifacts: dict[str, Path]) -> None:
    on_ir = Detector(artifacts["ir"])
    assert on_ir.normalizes_in_runtime
    assert not Detector(artifacts["onnx"], backend="onnxruntime").normalizes_in_runtime
    frames = _frames()
    resized = resize_to_input(frames[0], on_ir.preprocess_config)[0]
    by_frame = on_ir.run_frames(resized[None])
    by_images = on_ir.run_model(normalize_to_nchw(resized, on_ir.preprocess_config))
    for name in by_images:
        np.testing.assert_allclose(by_frame[name], by_images[name], atol=1e-4)
    # detect_batch stacks the resized frames (the IR's batch is 1: run in chunks).
    for single, batched in zip([on_ir.detect(f) for f in frames], on_ir.detect_batch(frames),
                               strict=True):
        np.testing.assert_array_equal(single.xyxy, batched.xyxy)
        np.testing.assert_array_equal(single.scores, batched.scores)
    # runtime_call: the model alone, fed as detect() feeds it (the frame on OpenVINO).
    on_ort = Detector(artifacts["onnx"], backend="onnxruntime")
    for detector in (on_ir, on_ort):
        expected = detector.run_model(detector.preprocess(frames[0])[0])
        for name, value in detector.runtime_call(frames[0])().items():
            np.testing.assert_allclose(value, expected[name], atol=1e-4)
    # Frames that are not resize_to_input's output are named, not silently cast.
    for detector in (on_ir, on_ort):
        with pytest.raises(FrameError, match=r"resized frames \(N, 48, 64, 3\) uint8"):
            detector.run_frames(resized[None].astype(np.float32))
        with pytest.raises(FrameError, match="got \\(1, 48, 63, 3\\)"):
            detector.run_frames(resized[None, :, :63])
        with pytest.raises(FrameError, match="got \\(0, 48, 64, 3\\)"):
            detector.run_frames(resized[None][:0])



def test_threads_reach_the_cpu_plugin_behind_auto(artifacts: dict[str, Path]) -> None:
    # AUTO refuses INFERENCE_NUM_THREADS in its own config; the thread count was dropped.
    backend = OpenVinoBackend(artifacts["ir"] / "model.xml", threads=1, device="AUTO:CPU")
    assert backend._core.get_property("CPU", "INFERENCE_NUM_THREADS") == 1
    frame = np.zeros((1, 3, *backend.input_shape[2:]), np.float32)
    assert set(backend.run(frame)) == set(backend.output_names)
    plain = OpenVinoBackend(artifacts["ir"] / "model.xml", threads=1)  # CPU: its own config
    assert plain._core.get_property("CPU", "INFERENCE_NUM_THREADS") == 0  # untouched default
