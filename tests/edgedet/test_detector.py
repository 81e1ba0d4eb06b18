import dataclasses
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgedet import Detector, DetectorOptions, FrameError
from edgedet.anchors import anchor_spec_from_dict
from edgedet.artifact import ManifestError
from edgedet.backends import BackendUnavailableError
from edgedet.head_decoding import decode_head_outputs
from edgedet.options import APPLICATION_SCORE_THRESHOLD
from edgedet.postprocess import select_detections
from edgedet.preprocess import (
    PreprocessConfig,
    normalize_to_nchw,
    preprocess,
    resize_to_input,
    runs_in_one_pass,
)
from tests.edgedet.tiny_artifacts import (
    PLANTED_DELTAS,
    PlantedObjectHead,
    TinyHead,
    planted_anchor,
    tiny_anchor_spec,
    write_artifact,
)


def _frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """Noise frames of assorted sizes (the detector must take any size)."""
    rng = np.random.default_rng(seed)
    sizes = [(96, 128), (48, 64), (120, 90), (200, 320), (61, 47)]
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)
            for i in range(count)]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {
        "ssd": write_artifact(root / "ssd", TinyHead("ssd"), "ssd"),
        "passd_letterbox": write_artifact(root / "passd_lb", TinyHead("passd", seed=1), "passd",
                                          resize="letterbox"),
        "retinanet": write_artifact(root / "retina", TinyHead("retinanet", seed=2), "retinanet",
                                    postprocess={"score_threshold": 0.6, "iou_threshold": 0.5,
                                                 "max_detections": 20,
                                                 "nms_mode": "soft+voting",
                                                 "pre_nms_top_k": 100}),
        "ssd_dynamic": write_artifact(root / "ssd_dyn", TinyHead("ssd"), "ssd",
                                      dynamic_batch=True),
    }


def _reference(artifact_dir: Path, frame: np.ndarray) -> tuple[np.ndarray, ...]:
    """What detect() must return, computed step by step from the manifest with ORT directly."""
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    images, transform = preprocess(frame, PreprocessConfig.from_dict(manifest["preprocess"]))
    session = ort.InferenceSession(str(artifact_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    names = [o["name"] for o in manifest["outputs"]]
    raw = dict(zip(names, session.run(names, {"images": images}), strict=True))
    boxes, scores = decode_head_outputs(
        manifest["head_family"], {k: v[0] for k, v in raw.items()},
        anchor_spec_from_dict(manifest["anchor_spec"]).generate(),
        tuple(manifest["box_coder_weights"]))
    xyxy, kept_scores, class_ids = select_detections(boxes, scores, **manifest["postprocess"])
    frame_xyxy = transform.boxes_to_frame(xyxy)
    visible = (frame_xyxy[:, 2] > frame_xyxy[:, 0]) & (frame_xyxy[:, 3] > frame_xyxy[:, 1])
    return frame_xyxy[visible], kept_scores[visible], class_ids[visible]


@pytest.mark.parametrize(("kind", "frame_size"), [
    ("ssd", (128, 96)), ("passd_letterbox", (128, 96)),
    ("passd_letterbox", (128, 64))])  # (bars above and below)
def test_a_frame_that_halves_gives_the_two_steps_detections(
        artifacts: dict[str, Path], kind: str, frame_size: tuple[int, int]) -> None:
    # detect() then resizes and normalises in one pass (preprocess) into the 64x48 input;
    # the two steps as run_frames does them must give the same detections, bit for bit.
    detector = Detector(artifacts[kind], backend="onnxruntime", settings="evaluation")
    width, height = frame_size
    frame = np.random.default_rng(width + height).integers(0, 256, (height, width, 3),
                                                           dtype=np.uint8)
    assert runs_in_one_pass(frame, detector.preprocess_config)
    resized, transform = resize_to_input(frame, detector.preprocess_config)
    images = normalize_to_nchw(resized, detector.preprocess_config)
    expected = detector.decoder(detector.run_model(images), transform)
    got = detector.detect(frame)
    assert len(got) > 0
    np.testing.assert_array_equal(got.xyxy, expected.xyxy)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.class_ids, expected.class_ids)


def _assert_same(a, b) -> None:
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


@pytest.mark.parametrize("kind", ["ssd", "passd_letterbox", "retinanet"])
def test_detect_equals_step_by_step_reference(artifacts: dict[str, Path], kind: str) -> None:
    # The reference applies the manifest's postprocess section: the evaluation settings.
    detector = Detector(artifacts[kind], backend="onnxruntime", settings="evaluation")
    total = 0
    for frame in _frames(3, seed=5):
        dets = detector.detect(frame)
        ref_xyxy, ref_scores, ref_classes = _reference(artifacts[kind], frame)
        np.testing.assert_allclose(dets.xyxy, ref_xyxy, atol=1e-4)
        np.testing.assert_allclose(dets.scores, ref_scores, atol=1e-6)
        np.testing.assert_array_equal(dets.class_ids, ref_classes)
        assert dets.class_names == ("circle", "square", "triangle")
        h, w = frame.shape[:2]
        assert np.all(dets.xyxy >= 0) and np.all(dets.xyxy[:, [0, 2]] <= w)
        assert np.all(dets.xyxy[:, [1, 3]] <= h)
        total += len(dets)
    assert total > 0  # the comparison saw real detections, not three empty results


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    anchor, _ = planted_anchor()
    model = PlantedObjectHead(tiny_anchor_spec().num_anchors, anchor, class_id=1,
                              deltas=PLANTED_DELTAS)
    return {resize: write_artifact(root / resize, model, "ssd", resize=resize)
            for resize in ("stretch", "letterbox")}


def test_planted_object_is_the_only_detection_at_hand_computed_frame_box(
    planted: dict[str, Path]
) -> None:
    # Prior (28, 20, 32, 32) moved by the planted deltas: centre (31.2, 18.4), size 48 x 32,
    # i.e. input box (7.2, 2.4, 55.2, 34.4). A 128x96 frame is stretched by 1/2 to 64x48.
    anchor, prior = planted_anchor()
    assert np.allclose(tiny_anchor_spec().generate()[anchor], prior)
    dets = Detector(planted["stretch"]).detect(np.zeros((96, 128, 3), np.uint8))
    assert len(dets) == 1
    np.testing.assert_allclose(dets.xyxy[0], [14.4, 4.8, 110.4, 68.8], atol=1e-3)
    assert dets.labels == ["square"]
    # softmax of (0, 0, 10, 0): e^10 / (e^10 + 3)
    assert dets.scores[0] == pytest.approx(np.exp(10) / (np.exp(10) + 3), rel=1e-5)


def test_planted_object_in_a_letterboxed_frame(planted: dict[str, Path]) -> None:
    # 128x64 frame → scale 1/2 to 64x32, padded 8 px above and below to 64x48. Input box
    # (7.2, 2.4, 55.2, 34.4) → frame ((7.2 - 0) * 2, (2.4 - 8) * 2, ...) = (14.4, -11.2, 110.4,
    # 52.8), top clipped to 0.
    dets = Detector(planted["letterbox"]).detect(np.full((64, 128, 3), 40, np.uint8))
    assert len(dets) == 1
    np.testing.assert_allclose(dets.xyxy[0], [14.4, 0.0, 110.4, 52.8], atol=1e-3)


@pytest.mark.parametrize("kind", ["ssd", "ssd_dynamic"])
def test_detect_batch_equals_detect_per_frame(artifacts: dict[str, Path], kind: str) -> None:
    detector = Detector(artifacts[kind])
    frames = _frames(5, seed=2)
    batch = detector.detect_batch(frames)
    assert len(batch) == 5
    for frame, dets in zip(frames, batch, strict=True):
        _assert_same(dets, detector.detect(frame))
    assert detector.detect_batch([]) == []


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_threads_get_the_same_results_as_sequential_calls(artifacts: dict[str, Path],
                                                          backend: str) -> None:
    detector = Detector(artifacts["ssd"], backend=backend)
    frames = _frames(8, seed=3)
    sequential = [detector.detect(f) for f in frames]
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []

    def worker(thread_id: int) -> None:
        try:
            for _ in range(3):
                for i, frame in enumerate(frames):
                    results[(thread_id, i)] = detector.detect(frame)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 4 * len(frames)
    for (_, i), dets in results.items():
        _assert_same(dets, sequential[i])


@pytest.mark.parametrize("bad", [
    None, np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10, 2), np.uint8),
    np.zeros((10, 10, 3), np.int32), np.full((10, 10, 3), np.nan, np.float32), "frame.jpg",
    np.full((10, 10, 3), 0.5, np.float32),  # the 0..1 scale: would read as a black frame
])
def test_bad_frames_raise_frame_error(artifacts: dict[str, Path], bad: object) -> None:
    detector = Detector(artifacts["ssd"])
    with pytest.raises(FrameError):
        detector.detect(bad)  # type: ignore[arg-type]


def test_detect_batch_names_the_bad_frame(artifacts: dict[str, Path]) -> None:
    detector = Detector(artifacts["ssd"])
    with pytest.raises(FrameError, match="frame 1:"):
        detector.detect_batch([_frames(1)[0], np.zeros((4, 4, 5), np.uint8)])
    with pytest.raises(FrameError, match="got one frame of shape"):
        detector.detect_batch(_frames(1)[0])  # not a batch: its rows would be gray frames
    with pytest.raises(FrameError, match="got one frame of shape"):
        detector.detect_batch(np.zeros((48, 64, 1), np.uint8))  # one gray frame, (H, W, 1)
    with pytest.raises(ValueError, match="N >= 1"):
        detector.run_model(np.zeros((0, 3, 48, 64), np.float32))
    height, width = 48, 64
    assert detector.input_size == (width, height)
    for wrong in ((1, height, width, 3), (1, 3, height, width + 1), (3, height, width)):
        with pytest.raises(ValueError, match=r"run_model takes images \(N, 3, 48, 64\)"):
            detector.run_model(np.zeros(wrong, np.float32))


def test_gray_and_bgra_frames_are_accepted(artifacts: dict[str, Path]) -> None:
    detector = Detector(artifacts["ssd"])
    bgr = _frames(1)[0]
    gray = bgr[:, :, 0]
    from_gray = detector.detect(gray)
    assert len(from_gray) > 0  # (the random model finds boxes in noise)
    _assert_same(from_gray, detector.detect(np.dstack([gray, gray, gray])))
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])
    _assert_same(detector.detect(bgra), detector.detect(bgr))


def test_options_come_from_the_manifest_and_kwargs_override(artifacts: dict[str, Path]) -> None:
    evaluation = Detector(artifacts["retinanet"], settings="evaluation")
    assert evaluation.options == DetectorOptions(score_threshold=0.6, iou_threshold=0.5,
                                                 max_detections=20, nms_mode="soft+voting",
                                                 pre_nms_top_k=100)
    # By default the manifest's application section sets the score threshold on top.
    default = Detector(artifacts["retinanet"])
    assert default.options == dataclasses.replace(
        evaluation.options, score_threshold=APPLICATION_SCORE_THRESHOLD)
    frame = _frames(1, seed=9)[0]
    shown = default.detect(frame)
    assert np.all(shown.scores > APPLICATION_SCORE_THRESHOLD)
    with pytest.raises(ValueError, match="settings must be one of"):
        Detector(artifacts["retinanet"], settings="paper")
    with pytest.raises(ValueError, match="settings must be one of"):  # options= or not
        Detector(artifacts["retinanet"], options=DetectorOptions(), settings="eval")
    with pytest.raises(ValueError, match="pass one or the other"):  # it would be ignored
        Detector(artifacts["retinanet"], options=DetectorOptions(), settings="evaluation")
    strict = Detector(artifacts["retinanet"], score_threshold=0.9, nms_mode="hard", threads=1)
    assert strict.options.score_threshold == 0.9 and strict.options.nms_mode == "hard"
    assert strict.options.max_detections == 20  # untouched keys still from the manifest
    loose = Detector(artifacts["ssd"], score_threshold=0.3).detect(frame)
    tight = Detector(artifacts["ssd"], score_threshold=0.6).detect(frame)
    assert len(tight) < len(loose)
    assert np.all(tight.scores > 0.6)
    capped = Detector(artifacts["ssd"], score_threshold=0.3, max_detections=2).detect(frame)
    assert len(capped) == 2
    given = Detector(artifacts["ssd"], options=DetectorOptions(score_threshold=0.7),
                     max_detections=3)
    assert given.options == DetectorOptions(score_threshold=0.7, max_detections=3)


def test_unknown_option_is_a_type_error_listing_valid_ones(artifacts: dict[str, Path]) -> None:
    with pytest.raises(TypeError, match=r"score_thresh.*valid options: score_threshold, "
                                        r"iou_threshold"):
        Detector(artifacts["ssd"], score_thresh=0.5)


@pytest.mark.parametrize("bad", [
    {"score_threshold": 1.5}, {"iou_threshold": 0.0}, {"max_detections": 0},
    {"max_detections": 2.5}, {"nms_mode": "fast"}, {"pre_nms_top_k": -1}, {"threads": 0},
    {"threads": True}, {"threads": 10**6},  # a million runtime threads hung the machine
])
def test_out_of_range_options_are_value_errors(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        DetectorOptions(**bad)


def test_numpy_numbers_are_options_too() -> None:
    options = DetectorOptions(score_threshold=np.float32(0.5), iou_threshold=np.float64(0.3),
                              tiles=np.int64(2), threads=np.int32(2))
    assert options == DetectorOptions(score_threshold=0.5, iou_threshold=0.3, tiles=2, threads=2)
    assert type(options.score_threshold) is float and type(options.tiles) is int  # JSON-ready
    with pytest.raises(ValueError, match="score_threshold"):
        DetectorOptions(score_threshold=np.bool_(True))


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"backend": None}, TypeError, "backend must be a backend name"),
    ({"options": {"tiles": 2}}, TypeError, "options must be a DetectorOptions"),
    ({"allow_unchecked": "no"}, TypeError, "allow_unchecked must be True or False"),
])
def test_arguments_of_the_wrong_kind_are_named(artifacts: dict[str, Path], kwargs: dict,
                                               error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Detector(artifacts["ssd"], **kwargs)
    with pytest.raises(ValueError, match="got ''"):  # Path("") would be the current folder
        Detector("")


def test_info_and_class_names(artifacts: dict[str, Path]) -> None:
    detector = Detector(artifacts["ssd"])
    assert detector.class_names == ("circle", "square", "triangle")
    assert detector.info["name"] == "tiny" and detector.info["backend"] == "onnxruntime"
    detector.info["class_names"].append("x")  # a copy: the detector is unaffected
    assert len(detector.info["class_names"]) == 3
    assert detector.input_size == (64, 48) and "onnxruntime" in repr(detector)


def test_a_flipped_byte_in_the_model_stops_loading_naming_the_file(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    copy = shutil.copytree(artifacts["ssd"], tmp_path / "copy")
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"model\.onnx is corrupt or truncated"):
        Detector(copy)


def test_auto_backend_without_its_runtime_says_what_to_install(
    artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edgedet.backend_choice.is_available", lambda name: name == "openvino")
    with pytest.raises(BackendUnavailableError,
                       match=r"pip install onnxruntime \(or pip install "
                             r"'edgedet\[onnxruntime\]'\), or pass backend='openvino'"):
        Detector(artifacts["ssd"])


def test_unknown_backend_and_unknown_model(artifacts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        Detector(artifacts["ssd"], backend="tvm")
    with pytest.raises(ValueError, match="neither an artifact directory"):
        Detector("no_such_model_anywhere")
    with pytest.raises(ManifestError, match=r"manifest\.json not found"):
        Detector(tmp_path)


def test_a_manifest_that_disagrees_with_the_model_is_rejected(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    copy = shutil.copytree(artifacts["ssd"], tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["outputs"][0]["name"] = "scores"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"model\.onnx has outputs .*'scores'"):
        Detector(copy)


def test_the_sdk_loads_and_detects_with_torch_unimportable(artifacts: dict[str, Path]) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "import edgedet.backends.onnxruntime, edgedet.backends.openvino, edgedet.artifact\n"
        "from edgedet import Detector\n"
        f"dets = Detector({str(artifacts['ssd'])!r}).detect(np.zeros((96, 128, 3), np.uint8))\n"
        # list(): a runtime's background thread may still be importing modules
        "assert not [m for m, mod in list(sys.modules.items())"
        " if m.startswith('torch') and mod]\n"
        "print(len(dets))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    expected = Detector(artifacts["ssd"]).detect(np.zeros((96, 128, 3), np.uint8))
    assert int(result.stdout) == len(expected)


def test_an_unchecked_or_failed_artifact_is_refused_unless_allowed(tmp_path: Path) -> None:
    from edgedet.artifact import UncheckedArtifactError

    unchecked = write_artifact(tmp_path / "unchecked", TinyHead("ssd"), "ssd", checked=False)
    with pytest.raises(UncheckedArtifactError,
                       match=r"no accuracy check.*allow_unchecked=True"):
        Detector(unchecked)
    assert "never ran" in repr(Detector(unchecked, allow_unchecked=True))

    failed = write_artifact(tmp_path / "failed", TinyHead("ssd"), "ssd")
    manifest = json.loads((failed / "manifest.json").read_text())
    manifest["accuracy"].update(passed=False, delta_AP=-3.5)
    (failed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UncheckedArtifactError, match=r"failed its accuracy check.*-3\.50"):
        Detector(failed)
    detector = Detector(failed, allow_unchecked=True)
    assert detector.info["accuracy"]["passed"] is False and "FAILED" in detector.check

    checked = Detector(write_artifact(tmp_path / "ok", TinyHead("ssd"), "ssd"))
    assert checked.check.startswith("passed") and "check='passed" in repr(checked)


def test_a_manifest_naming_fewer_classes_than_the_model_scores_is_refused(
        artifacts: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "fewer_classes"
    shutil.copytree(artifacts["ssd"], broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["class_names"] = manifest["class_names"][:1]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="the manifest names 1: its model file and manifest"):
        Detector(broken).detect(_frames(1)[0])
