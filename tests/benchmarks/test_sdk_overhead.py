import json

import numpy as np
import pytest

from benchmarks.sdk_overhead import STAGES, main
from edgedet import Detector
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.preprocess import normalize_to_nchw, resize_to_input

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", ["passd_mobilenet_int8", "harnet_pruned_int8"])
def test_the_timed_stages_are_the_ones_detect_runs(name):
    # Stretch (PASSD) and letterbox (HAR-Net): the benchmark's resize + normalise give
    # detect()'s model input bit for bit, so it times what detect() does.
    detector = Detector(name, backend="onnxruntime")
    frame = SyntheticScenes(1, seed=3, config=SyntheticConfig(image_size=(640, 480)))[0].image
    config = detector.preprocess_config
    staged = normalize_to_nchw(resize_to_input(frame, config)[0], config)
    np.testing.assert_array_equal(staged, detector.preprocess(frame)[0])


def test_sdk_overhead_json_has_every_stage(capsys):
    assert main(["--zoo", "harnet_pruned_int8", "--frames", "1", "--rounds", "1",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"] == 1 and report["rows"]
    for row in report["rows"]:
        assert row["model"] == "harnet_pruned_int8"
        assert all(row[stage] > 0 for stage in STAGES)
        sdk = row["resize"] + row["normalise"] + row["decode"] + row["select"]
        assert row["overhead"] == pytest.approx(sdk / row["runtime"])


def test_sdk_overhead_rejects_zero_rounds():
    with pytest.raises(SystemExit):
        main(["--rounds", "0"])


def test_sdk_overhead_names_an_unknown_model_before_timing(capsys):
    with pytest.raises(SystemExit):
        main(["--zoo", "no_such_model"])
    assert "'no_such_model' is neither an artifact directory" in capsys.readouterr().err
