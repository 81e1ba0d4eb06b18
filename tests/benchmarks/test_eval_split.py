import json

import pytest

from benchmarks.eval_split import KEYS, main
from edgedet.detector import Detector
from quantize.accuracy import coco_metrics, run_detector

pytest.importorskip("onnxruntime")


def test_scores_a_zoo_model_like_the_accuracy_check_on_another_seed(capsys):
    assert main(["--models", "passd_mobilenet_int8", "--seed", "5", "--images", "3",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["seed"] == 5 and row["images"] == 3 and row["backend"] == "onnxruntime"
    # The same numbers as scoring the detector by hand on the same frames.
    from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes

    detector = Detector("passd_mobilenet_int8", settings="evaluation")
    samples = list(SyntheticScenes(3, seed=5, config=SyntheticConfig(image_size=(640, 480))))
    want = coco_metrics(samples, run_detector(detector.detect, samples, False).detections,
                        detector.class_names)
    assert [row[k] for k in KEYS] == pytest.approx([want[k] for k in KEYS])


def test_a_model_the_backend_cannot_read_is_skipped_by_name(capsys):
    # The zoo's _tflite files under --backend openvino: the others still run.
    assert main(["--models", "passd_mobilenet_int8_tflite,passd_mobilenet_int8", "--images",
                 "1", "--backend", "openvino", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["model"] for line in out.splitlines()] == ["passd_mobilenet_int8"]
    assert "passd_mobilenet_int8_tflite: skipped, backend 'openvino' reads" in err
    assert main(["--models", "passd_mobilenet_int8_tflite", "--images", "1", "--backend",
                 "openvino"]) == 2
    assert "error: no model ran on --backend openvino" in capsys.readouterr().err


def test_bad_arguments_are_refused(capsys):
    for argv, message in ((["--images", "0"], "--images"),
                          (["--backend", "bogus"], "--backend 'bogus'"),  # a traceback before
                          (["--models", ""], "give at least one model")):  # ran every model
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
