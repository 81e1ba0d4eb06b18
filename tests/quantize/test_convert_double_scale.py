"""``quantize/run.py --double-scale``: each artifact gains its 2x model and a checked
``double_scale`` section, and ``Detector(double_scale=True)`` reproduces the reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedet.data.synthetic import SYNTHETIC_CLASSES, SyntheticConfig, SyntheticScenes
from edgedet.detector import Detector
from edgedet.double_scale import DoubleScaleError
from edgedet.models.checkpoint import build_from_checkpoint
from edgedet.models.torch_backend import TorchBackend
from edgedet.preprocess import PreprocessConfig
from quantize.convert import ConvertConfig, convert
from tests.detections_match import assert_same_detections
from tests.quantize.conftest import small_daipnet
from tests.quantize.test_pruning import INPUT_SIZE, tiny_harnet
from tests.quantize.tiny_checkpoint import write_tiny_checkpoint
from train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def harnet_checkpoint(tmp_path_factory):
    model = tiny_harnet()
    config = {**model.config, "class_names": list(SYNTHETIC_CLASSES),
              "input_size": list(INPUT_SIZE),
              "preprocess": PreprocessConfig(input_size=INPUT_SIZE).to_dict(),
              "anchor_spec": model.anchor_spec(INPUT_SIZE).to_dict(),
              "box_coder_weights": list(model.box_coder_weights),
              "head_family": model.head_family,
              "output_names": list(model.export_output_names),
              "postprocess": {"score_threshold": 0.01}, "model_name": "tiny_harnet"}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "harnet", model, config)


def test_double_scale_artifact_is_built_checked_and_runs(harnet_checkpoint, tmp_path):
    report = convert(ConvertConfig(checkpoint=harnet_checkpoint, target="cpu",
                                   out=tmp_path / "out", precisions=("fp32",), eval_size=4,
                                   double_scale=True, progress=False,
                                   allow_weak_reference=True))
    entry = report.artifacts[0]
    assert entry.passed and entry.double_scale is not None and entry.double_scale["passed"]
    assert entry.double_scale["delta_AP"] == pytest.approx(0.0, abs=0.05)
    manifest = json.loads((tmp_path / "out" / entry.name / "manifest.json").read_text())
    section = manifest["double_scale"]
    assert section["files"] == ["model_2x.onnx"] and "model_2x.onnx" in manifest["files"]
    assert section["input_size"] == [2 * INPUT_SIZE[0], 2 * INPUT_SIZE[1]]
    assert section["accuracy"]["passed"]

    # The deployed double-scale detector against the PyTorch model run at both scales.
    deployed = Detector(tmp_path / "out" / entry.name, double_scale=True, settings="evaluation")
    model, _ = build_from_checkpoint(harnet_checkpoint)
    reference = Detector(tmp_path / "out" / entry.name, settings="evaluation",
                         backend=TorchBackend(model, INPUT_SIZE, "cpu"), double_scale=True,
                         double_scale_backend=TorchBackend(model, tuple(section["input_size"]),
                                                           "cpu"))
    single = Detector(tmp_path / "out" / entry.name, settings="evaluation")
    frame = next(iter(SyntheticScenes(1, seed=3, config=SyntheticConfig(image_size=(200, 150)))))
    want, got = reference.detect(frame.image), deployed.detect(frame.image)
    assert len(want) > 0
    assert_same_detections(got, want, score_atol=2e-3, box_atol=0.5,
                           score_threshold=deployed.options.score_threshold)
    # The second scale changes the answer (more anchors, averaged logits).
    assert len(single.detect(frame.image)) != len(got) or not np.allclose(
        single.detect(frame.image).scores, got.scores)


def test_models_whose_levels_do_not_pair_are_refused_before_any_work(tmp_path):
    """DAIPNet's SSD priors (sizes fixed fractions of the image per level) do not pair up
    across scales; PASSD's and the RetinaNet family's grid anchors (4 x stride) do."""
    model = small_daipnet()
    size = (300, 300)
    config = {**model.config, "class_names": ["a", "b", "c"], "input_size": list(size),
              "preprocess": PreprocessConfig(input_size=size).to_dict(),
              "anchor_spec": model.anchor_spec(size).to_dict(),
              "box_coder_weights": list(model.box_coder_weights),
              "head_family": model.head_family,
              "output_names": list(model.export_output_names)}
    daipnet = save_checkpoint(tmp_path / "daipnet", model, config)
    with pytest.raises(DoubleScaleError, match="grid anchors"):
        convert(ConvertConfig(checkpoint=daipnet, target="cpu", out=tmp_path / "out",
                              precisions=("fp32",), eval_size=2, double_scale=True,
                              progress=False))
    assert not (tmp_path / "out").exists()
    passd = write_tiny_checkpoint(tmp_path / "passd")  # pairs: accepted
    report = convert(ConvertConfig(checkpoint=passd, target="cpu", out=tmp_path / "passd_out",
                                   precisions=("fp32",), eval_size=2, double_scale=True,
                                   progress=False, allow_weak_reference=True))
    assert report.artifacts[0].double_scale is not None
    # The cpu target's PASSD leaves its attend tap sum to the SDK at both scales: the 2x
    # model's tail reads the 2x model's own (twice as large) levels, and the merged outputs
    # are the PyTorch model's at the two scales.
    import torch

    from edgedet.preprocess import preprocess

    with Detector(tmp_path / "passd_out" / "tiny_passd_fp32", backend="onnxruntime",
                  double_scale=True, allow_unchecked=True) as detector:
        second = detector._second_scale
        assert detector._attend_tail is not None and second.attend_tail is not None
        sizes_1x = [(lv.height, lv.width) for lv in detector._attend_tail.spec.levels]
        sizes_2x = [(lv.height, lv.width) for lv in second.attend_tail.spec.levels]
        assert sizes_2x == [(2 * h, 2 * w) for h, w in sizes_1x]
        frame = (np.random.default_rng(5).random((96, 128, 3)) * 255).astype(np.uint8)
        resized = detector.preprocess(frame)[0]
        got_1x = detector.run_model(resized)
        images_2x = preprocess(frame, second.preprocess_config)[0]
        got_2x = second.attend_tail(second.backend.run(images_2x))
    model, _ = build_from_checkpoint(passd)
    with torch.no_grad():
        for images, got in ((resized, got_1x), (images_2x, got_2x)):
            expected = model.eval()(torch.from_numpy(images))
            for name in ("cls_logits", "box_deltas"):
                np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=0,
                                           atol=1e-4 * float(expected[name].abs().max()))
