import json
from collections import defaultdict

import numpy as np
import pytest

from benchmarks.sdk_overhead import STAGES, main, time_stages
from edgedet import Detector
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", ["passd_mobilenet_int8", "harnet_pruned_int8"])
def test_the_timed_stages_are_the_ones_detect_runs(name, backend, monkeypatch):
    # Stretch (PASSD) and letterbox (HAR-Net), normalised by numpy (ONNX Runtime) or by the
    # runtime (OpenVINO): the benchmark's stages feed the model what detect() feeds it, so
    # its runtime stage gives detect()'s raw outputs bit for bit.
    if backend == "openvino":
        pytest.importorskip("openvino")
    detector = Detector(name, backend=backend)
    frame = SyntheticScenes(1, seed=3, config=SyntheticConfig(image_size=(640, 480)))[0].image
    outputs = time_stages(detector, frame, defaultdict(list))
    seen: list[dict[str, np.ndarray]] = []

    def recording(run):  # type: ignore[no-untyped-def]
        def call(inputs: np.ndarray) -> dict[str, np.ndarray]:
            seen.append(run(inputs))
            return seen[-1]
        return call

    # (detect() runs run_model where the SDK normalises, run_frames where the runtime does.)
    for method in ("run_frames", "run_model"):
        monkeypatch.setattr(detector, method, recording(getattr(detector, method)))
    detector.detect(frame)
    (expected,) = seen
    assert sorted(outputs) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(outputs[key], value)


@pytest.mark.parametrize("caches", ["cold", "warm", "evicted"])
def test_sdk_overhead_json_has_every_stage(capsys, caches):
    assert main(["--zoo", "harnet_pruned_int8", "--frames", "1", "--rounds", "1",
                 "--caches", caches, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 1 and report["rows"] and report["caches"] == caches
    for row in report["rows"]:
        # each backend's own build of it where the zoo has one (NAME_openvino, NAME_tflite)
        assert row["model"] in ("harnet_pruned_int8", f"harnet_pruned_int8_{row['backend']}")
        runtime_normalises = row["backend"] == "openvino"
        # 640x480 into HAR-Net's 320x256 letterbox: 2 x 2 blocks, one pass elsewhere
        assert row["one_pass"] is not runtime_normalises
        for stage in STAGES:
            if stage == "normalise" and (runtime_normalises or row["one_pass"]):
                assert row[stage] == 0.0
            else:
                assert row[stage] > 0, stage
        sdk = row["resize"] + row["normalise"] + row["decode"] + row["select"]
        assert row["overhead"] == pytest.approx(sdk / row["runtime"])


def test_a_zoo_model_and_its_backend_build_are_timed_once_under_its_own_name(capsys):
    pytest.importorskip("ai_edge_litert")
    assert main(["--zoo", "harnet_pruned_int8", "harnet_pruned_int8_tflite", "--frames", "1",
                 "--rounds", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    pairs = [(row["model"], row["backend"]) for row in rows]
    assert len(pairs) == len(set(pairs))  # each file once
    assert ("harnet_pruned_int8_tflite", "tflite") in pairs
    assert ("harnet_pruned_int8", "tflite") not in pairs  # the sibling, not under the base name


def test_warm_runs_each_stage_twice_and_cold_infers_before_the_frame_stages():
    calls: list[str] = []

    class Recorder:
        """Stands in for a Detector: records the order of its calls."""
        normalizes_in_runtime = False
        preprocess_config = Detector("harnet_pruned_int8", backend="onnxruntime"
                                     ).preprocess_config

        def __init__(self):
            self.decoder = self

        def runtime_call(self, frame):
            return lambda: calls.append("infer")

        def run_model(self, images):
            calls.append("run")
            return {}

        def candidates(self, outputs):
            calls.append("decode")
            return np.zeros((0, 4)), np.zeros((0, 1))

        def select(self, boxes, scores):
            calls.append("select")

    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    times = {stage: [] for stage in STAGES}
    time_stages(Recorder(), frame, times, "warm")
    assert calls == ["run", "run", "decode", "decode", "select", "select"]
    assert all(len(values) == 1 for values in times.values())
    calls.clear()
    time_stages(Recorder(), frame, times, "cold")
    assert calls == ["infer", "infer", "run", "decode", "select"]
    calls.clear()
    time_stages(Recorder(), frame, times, "evicted", np.zeros(16, dtype=np.uint8))
    assert calls == ["run", "decode", "select"]


def test_sdk_overhead_rejects_zero_rounds(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--rounds", "0"])
    assert stopped.value.code == 2 and "--rounds" in capsys.readouterr().err


def test_sdk_overhead_names_an_unknown_model_before_timing(capsys):
    with pytest.raises(SystemExit):
        main(["--zoo", "no_such_model"])
    assert "'no_such_model' is neither an artifact directory" in capsys.readouterr().err
