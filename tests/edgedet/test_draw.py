import numpy as np
import pytest

from edgedet.detections import Detections
from edgedet.draw import class_color, draw_detections, draw_text_panel


def test_draw_detections_draws_inside_boxes_and_leaves_input_alone() -> None:
    frame = np.zeros((120, 160, 3), np.uint8)
    dets = Detections([[20, 30, 80, 90]], [0.87], [1], ("a", "b"))
    out = draw_detections(frame, dets, thickness=3)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert frame.max() == 0  # not modified in place
    assert out[100:, 100:].max() == 0  # far from the box nothing is drawn
    # the centre of a 3-px anti-aliased line carries the class colour
    np.testing.assert_allclose(out[60, 20], class_color(1), atol=2)
    np.testing.assert_allclose(out[60, 80], class_color(1), atol=2)
    assert out[60, 50].max() == 0  # inside the box is untouched


def test_class_colors_are_distinct() -> None:
    colors = {class_color(i) for i in range(20)}
    assert len(colors) == 20


def test_empty_detections_and_text_panel() -> None:
    frame = np.full((50, 80, 3), 200, np.uint8)
    np.testing.assert_array_equal(draw_detections(frame, Detections.empty()), frame)
    panel = draw_text_panel(frame, ["FPS 30.0"])
    assert (panel != frame).any() and panel[-1, -1].tolist() == [200, 200, 200]


def test_track_ids_colour_each_track_and_label_it() -> None:
    frame = np.zeros((120, 160, 3), np.uint8)
    dets = Detections([[20, 30, 80, 90]], [0.87], [1], ("a", "b"))
    out = draw_detections(frame, dets, thickness=3, track_ids=[7])
    np.testing.assert_allclose(out[60, 20], class_color(7), atol=2)  # the track's colour
    plain = draw_detections(frame, dets, thickness=3, track_ids=[7], color=class_color(1))
    # "#7 b 0.87" is a wider label than "b 0.87": it reaches further right above the box
    label_row = plain[20:29]
    assert label_row[:, 20:120].any(axis=2).sum() > draw_detections(
        frame, dets, thickness=3)[20:29, 20:120].any(axis=2).sum()
    with pytest.raises(ValueError, match="2 track ids for 1 detections"):
        draw_detections(frame, dets, track_ids=[1, 2])
    np.testing.assert_array_equal(draw_detections(frame, dets, thickness=3, track_ids=[7.0]),
                                  out)
    for bad in (["a"], [1.5], [np.nan]):
        with pytest.raises(ValueError, match="track_ids must be whole numbers"):
            draw_detections(frame, dets, track_ids=bad)


@pytest.mark.parametrize(("frame", "options", "message"), [
    (np.zeros((20, 20, 3), np.float32), {}, "BGR uint8"),
    (None, {}, "BGR uint8"),
    (np.zeros((0, 0, 3), np.uint8), {}, "BGR uint8"),
    (np.zeros((20, 20, 3), np.uint8), {"thickness": -1}, "thickness"),
    (np.zeros((20, 20, 3), np.uint8), {"color": (0, 255)}, "color"),
])
def test_bad_frames_and_options_are_named(frame, options: dict, message: str) -> None:
    detections = Detections([[2, 2, 10, 10]], [0.9], [0], ("a",))
    with pytest.raises(ValueError, match=message):
        draw_detections(frame, detections, **options)
