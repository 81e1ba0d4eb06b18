import numpy as np
import pytest

from edgedet.decoder import HeadDecoder
from edgedet.detections import Detections
from edgedet.options import DetectorOptions
from edgedet.preprocess import PreprocessConfig, compute_transform


@pytest.mark.parametrize("family", ["ssd", "passd", "retinanet"])
@pytest.mark.parametrize("nms_mode", ["hard", "soft+voting"])
def test_decoded_detections_pass_the_checks_they_skip(family: str, nms_mode: str) -> None:
    # Outputs a broken model could give: NaN and inf logits and box deltas, boxes reaching
    # into the letterbox bars and off the frame.
    rng = np.random.default_rng(5)
    num_anchors, num_classes = 600, 4
    priors = np.concatenate([rng.uniform(-40, 360, (num_anchors, 2)),
                             rng.uniform(4, 200, (num_anchors, 2))], axis=1).astype(np.float32)
    width = num_classes if family == "retinanet" else num_classes + 1
    outputs = {"cls_logits": rng.normal(0.0, 3.0, (1, num_anchors, width)).astype(np.float32),
               "box_deltas": rng.normal(0, 2.0, (1, num_anchors, 4)).astype(np.float32)}
    if family == "passd":
        outputs["propose_deltas"] = rng.normal(0, 0.5, (1, num_anchors, 4)).astype(np.float32)
    # Certain scores for the broken boxes below, in one class (a NaN box scoring in every
    # class would decay or suppress them all).
    outputs["cls_logits"][0, :5, -1] = 9.0
    outputs["box_deltas"][0, 0] = np.nan
    outputs["box_deltas"][0, 1] = [0, 0, np.inf, np.inf]
    outputs["box_deltas"][0, 2] = [-np.inf, 0, 0, 0]
    outputs["cls_logits"][0, 5] = np.nan
    outputs["cls_logits"][0, 6, -1] = np.inf
    decoder = HeadDecoder(family, priors, (10.0, 10.0, 5.0, 5.0), list(outputs),
                          [f"class{i}" for i in range(num_classes)],
                          DetectorOptions(score_threshold=0.3, nms_mode=nms_mode))
    transform = compute_transform((640, 360), PreprocessConfig((320, 320), resize="letterbox"))
    with np.errstate(all="ignore"):
        detections = decoder(outputs, transform)
    checked = Detections(detections.xyxy, detections.scores, detections.class_ids,
                         detections.class_names)  # raises where the skipped checks would
    assert len(detections) > 20
    assert detections.xyxy.dtype == np.float32 and detections.scores.dtype == np.float32
    assert detections.class_ids.dtype == np.int64
    assert isinstance(detections.class_names, tuple)
    for name in ("xyxy", "scores", "class_ids", "class_names"):
        np.testing.assert_array_equal(getattr(detections, name), getattr(checked, name))
    assert np.all(detections.xyxy[:, 2:] > detections.xyxy[:, :2])
    assert detections.xyxy.max() <= 640 and detections.xyxy.min() >= 0



def test_a_decoder_whose_class_names_do_not_match_the_scores_refuses() -> None:
    rng = np.random.default_rng(0)
    priors = np.array([[50, 50, 20, 20]] * 8, np.float32)
    outputs = {"cls_logits": rng.normal(2, 1, (8, 5)).astype(np.float32),
               "box_deltas": np.zeros((8, 4), np.float32)}
    decoder = HeadDecoder("ssd", priors, (10.0, 10.0, 5.0, 5.0), list(outputs), ["only"],
                          DetectorOptions(score_threshold=0.1))
    transform = compute_transform((100, 100), PreprocessConfig((100, 100)))
    with pytest.raises(ValueError, match="scores 4 classes but the decoder has 1 class names"):
        decoder(outputs, transform)
