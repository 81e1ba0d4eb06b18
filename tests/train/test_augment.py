import cv2
import numpy as np
import pytest

from train.augment import (
    RetinaAugmentation,
    SsdAugmentation,
    box_iou_one_to_many,
    drop_small_boxes,
    horizontal_flip,
    iou_constrained_crop,
    photometric_distort,
    zoom_out,
)


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A black 80x60 image with two white rectangles and their exact boxes."""
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 30, 25], [40, 30, 76, 58]], dtype=np.float32)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2, x1:x2] = 255
    return image, boxes, np.array([0, 1], dtype=np.int64)


def _assert_boxes_cover_white(image: np.ndarray, boxes: np.ndarray, tol: float) -> None:
    """Every box is (up to ``tol`` px) the bounding box of white pixels inside it."""
    white = image[..., 0] > 127
    for x1, y1, x2, y2 in boxes:
        region = white[round(y1):round(y2), round(x1):round(x2)]
        assert region.mean() > 0.8, "box does not sit on its object"
    assert white.sum() > 0


def test_hand_computed_flip_and_iou():
    image, boxes, _ = _scene()
    flipped, fboxes = horizontal_flip(image, boxes)
    np.testing.assert_array_equal(fboxes[0], [50, 5, 70, 25])  # x' = 80 - x
    _assert_boxes_cover_white(flipped, fboxes, 0)
    iou = box_iou_one_to_many(np.array([0, 0, 10, 10], np.float32),
                              np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32))
    np.testing.assert_allclose(iou, [1.0, 50 / 150])


def test_zoom_out_shifts_boxes_with_the_image():
    image, boxes, _ = _scene()
    for seed in range(5):
        canvas, out = zoom_out(image, boxes, np.random.default_rng(seed), (0, 0, 0))
        assert canvas.shape[0] >= 60 and canvas.shape[1] >= 80
        _assert_boxes_cover_white(canvas, out, 0)
        np.testing.assert_allclose(out[:, 2:] - out[:, :2], boxes[:, 2:] - boxes[:, :2])


def test_zoom_out_canvas_is_the_fill_colour_around_the_image():
    image, boxes, _ = _scene()
    for seed in range(5):
        canvas, out = zoom_out(image, boxes, np.random.default_rng(seed), (10, 120.4, 250.6))
        left, top = (int(v) for v in out[0, :2] - boxes[0, :2])
        expected = np.empty_like(canvas)
        expected[:] = (10, 120, 251)  # rounded to uint8
        expected[top:top + image.shape[0], left:left + image.shape[1]] = image
        np.testing.assert_array_equal(canvas, expected)


def test_crop_keeps_boxes_on_their_objects():
    image, boxes, labels = _scene()
    changed = 0
    for seed in range(30):
        out, oboxes, olabels = iou_constrained_crop(image, boxes, labels,
                                                    np.random.default_rng(seed))
        assert len(oboxes) == len(olabels) >= 1
        assert (oboxes[:, :2] >= 0).all()
        assert (oboxes[:, 2] <= out.shape[1]).all() and (oboxes[:, 3] <= out.shape[0]).all()
        _assert_boxes_cover_white(out, oboxes, 1)
        changed += out.shape != image.shape
    assert changed > 5


def test_full_recipes_are_deterministic_and_consistent():
    image, boxes, labels = _scene()
    ssd = SsdAugmentation(fill_bgr=(0.0, 0.0, 0.0))
    retina = RetinaAugmentation(input_size=(64, 48), pad_value=0)
    for augment in (ssd, retina):
        for seed in range(10):
            a = augment(image, boxes, labels, np.random.default_rng(seed))
            b = augment(image, boxes, labels, np.random.default_rng(seed))
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
            kept, _ = drop_small_boxes(a[1], a[2], 3.0)
            if augment is retina:
                assert a[0].shape == (48, 64, 3)
                # Only geometry changes, so white pixels stay on the (large enough) boxes.
                _assert_boxes_cover_white(a[0], kept, 1)


def test_photometric_distortion_keeps_uint8_and_changes_colours():
    image = np.full((8, 8, 3), 120, dtype=np.uint8)
    outs = [photometric_distort(image, np.random.default_rng(s)) for s in range(10)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert any(not np.array_equal(o, image) for o in outs)


def test_drop_small_boxes():
    boxes = np.array([[0, 0, 5, 5], [0, 0, 0.5, 5]], dtype=np.float32)
    _kept, labels = drop_small_boxes(boxes, np.array([3, 4]), 1.0)
    assert labels.tolist() == [3]


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_retina_scale_jitter_extremes(scale):
    image, boxes, labels = _scene()
    augment = RetinaAugmentation(input_size=(80, 60), scale_range=(scale, scale), pad_value=0,
                                 flip_prob=0.0)
    out, oboxes, _ = augment(image, boxes, labels, np.random.default_rng(0))
    assert out.shape == (60, 80, 3)
    if scale < 1:  # no cropping: sizes scale exactly
        np.testing.assert_allclose(oboxes[:, 2:] - oboxes[:, :2],
                                   (boxes[:, 2:] - boxes[:, :2]) * scale, atol=0.01)


@pytest.mark.parametrize(("interpolation", "flag"), [("area", cv2.INTER_AREA),
                                                      ("linear", cv2.INTER_LINEAR)])
def test_retina_shrinks_as_the_runtime_will(interpolation, flag):
    _, boxes, labels = _scene()
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    augment = RetinaAugmentation(input_size=(48, 36), scale_range=(1.0, 1.0),  # x0.6
                                 pad_value=0, flip_prob=0.0, interpolation=interpolation)
    out, _, _ = augment(image, boxes, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(out, cv2.resize(image, (48, 36), interpolation=flag))
    other = cv2.INTER_LINEAR if flag == cv2.INTER_AREA else cv2.INTER_AREA
    assert not np.array_equal(out, cv2.resize(image, (48, 36), interpolation=other))
