import importlib

import cv2
import numpy as np
import pytest

from edgedet.preprocess import (
    FrameError,
    PreprocessConfig,
    compute_transform,
    normalize_to_nchw,
    preprocess,
    preprocess_batch,
    resize_to_input,
    validate_frame,
)


def _frame(h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_stretch_shapes_colour_and_normalisation() -> None:
    frame = np.zeros((10, 20, 3), np.uint8)
    frame[..., 0] = 30  # blue
    frame[..., 2] = 200  # red
    cfg = PreprocessConfig((20, 10), color_order="rgb", mean=(100, 0, 0), std=(2, 1, 1))
    x, t = preprocess(frame, cfg)
    assert x.shape == (1, 3, 10, 20) and x.dtype == np.float32 and x.flags.c_contiguous
    # channel 0 is red after BGR→RGB: (200 - 100) / 2
    np.testing.assert_allclose(x[0, 0], 50.0)
    np.testing.assert_allclose(x[0, 2], 30.0)
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (1.0, 1.0, 0.0, 0.0)
    x_bgr, _ = preprocess(frame, PreprocessConfig((20, 10), color_order="bgr",
                                                  mean=(0, 0, 0), std=(1, 1, 1)))
    np.testing.assert_allclose(x_bgr[0, 0], 30.0)


@pytest.mark.parametrize("color_order", ["rgb", "bgr"])
def test_per_plane_normalisation_gives_the_broadcast_formulas_bits(color_order: str) -> None:
    """``normalize_to_nchw`` reads per-channel tables (``kernels.table_to_nchw``); the values
    must be bit for bit those of the plain ``(x - mean) / std`` over (H, W, 3) then a
    transpose, for every uint8 level of every channel."""
    from edgedet.preprocess import normalize_to_nchw

    image = _frame(37, 53)
    levels = np.arange(256, dtype=np.uint8)
    image.reshape(-1, 3)[:256] = np.stack([levels, levels[::-1], np.roll(levels, 77)], axis=1)
    cfg = PreprocessConfig((53, 37), color_order=color_order, mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375))
    ordered = image[..., ::-1] if color_order == "rgb" else image
    expected = ((ordered.astype(np.float32) - np.asarray(cfg.mean, np.float32))
                * (1.0 / np.asarray(cfg.std, np.float32))).transpose(2, 0, 1)[None]
    got = normalize_to_nchw(image, cfg)
    assert got.shape == (1, 3, 37, 53) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


def test_letterbox_geometry_and_padding() -> None:
    frame = np.full((100, 200, 3), 255, np.uint8)
    cfg = PreprocessConfig((64, 64), resize="letterbox", mean=(0, 0, 0), std=(1, 1, 1),
                           pad_value=0)
    x, t = preprocess(frame, cfg)
    # 200x100 → 64x32, centred vertically with 16 px bars
    assert (t.scale_x, t.scale_y, t.pad_x, t.pad_y) == (0.32, 0.32, 0.0, 16.0)
    assert np.all(x[0, :, :16] == 0) and np.all(x[0, :, 48:] == 0)
    assert np.all(x[0, :, 16:48] == 255)


@pytest.mark.parametrize("interpolation", ["area", "linear"])
@pytest.mark.parametrize("frame_size", [(640, 480), (480, 640), (333, 517), (320, 200),
                                        (100, 100), (160, 120), (25, 60)])
def test_letterbox_resizes_into_the_canvas_as_a_pasted_resize_would(
        interpolation: str, frame_size: tuple[int, int]) -> None:
    # Bars on the top and bottom, on the sides, none; shrinking, enlarging, the same size;
    # a fractional pad value (truncated, as np.full truncates it).
    frame = _frame(frame_size[1], frame_size[0])
    cfg = PreprocessConfig((160, 128), resize="letterbox", pad_value=114.7,
                           interpolation=interpolation)  # type: ignore[arg-type]
    canvas, t = resize_to_input(frame, cfg)
    nw, nh = round(frame_size[0] * t.scale_x), round(frame_size[1] * t.scale_y)
    shrink = nw < frame_size[0] and nh < frame_size[1] and interpolation == "area"
    resized = frame if (nw, nh) == frame_size else cv2.resize(
        frame, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    expected = np.full((128, 160, 3), 114.7, np.uint8)
    px, py = int(t.pad_x), int(t.pad_y)
    expected[py:py + nh, px:px + nw] = resized
    assert canvas.dtype == np.uint8 and canvas.flags.c_contiguous
    np.testing.assert_array_equal(canvas, expected)


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("frame_size", [(640, 480), (333, 517), (100, 100)])
def test_box_mapping_is_an_exact_inverse(resize: str, frame_size: tuple[int, int]) -> None:
    cfg = PreprocessConfig((320, 320), resize=resize)
    t = compute_transform(frame_size, cfg)
    boxes = np.array([[0, 0, 10, 20], [15.5, 7.25, 90, 99]], np.float32)
    np.testing.assert_allclose(t.boxes_to_frame(t.boxes_to_input(boxes)), boxes, atol=1e-4)


def test_box_mapping_hand_values_and_clipping() -> None:
    t = compute_transform((200, 100), PreprocessConfig((64, 64), resize="letterbox"))
    np.testing.assert_allclose(t.boxes_to_input([[0, 0, 200, 100]]), [[0, 16, 64, 48]])
    np.testing.assert_allclose(t.boxes_to_frame([[-5, 0, 70, 64]]), [[0, 0, 200, 100]])


def test_grayscale_bgra_and_float_frames_are_converted() -> None:
    gray = np.full((8, 8), 77, np.uint8)
    np.testing.assert_array_equal(validate_frame(gray), np.full((8, 8, 3), 77, np.uint8))
    assert validate_frame(gray[..., None]).shape == (8, 8, 3)
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 1] = 9
    assert validate_frame(bgra).shape == (8, 8, 3) and validate_frame(bgra)[0, 0, 1] == 9
    np.testing.assert_array_equal(validate_frame(np.full((4, 4, 3), 12.4)),
                                  np.full((4, 4, 3), 12, np.uint8))


@pytest.mark.parametrize(
    "frame, match",
    [
        ("not an image", "numpy array"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int16), "dtype"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), 300.0, np.float32), "0..255"),
    ],
)
def test_bad_frames_raise_clear_errors(frame: object, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        preprocess(frame, PreprocessConfig((32, 32)))  # type: ignore[arg-type]


def test_batch_of_mixed_sizes() -> None:
    x, transforms = preprocess_batch([_frame(48, 64), _frame(30, 30)], PreprocessConfig((32, 32)))
    assert x.shape == (2, 3, 32, 32)
    assert transforms[0].frame_size == (64, 48) and transforms[1].frame_size == (30, 30)
    with pytest.raises(FrameError):
        preprocess_batch([], PreprocessConfig((32, 32)))


def test_config_round_trip_and_validation() -> None:
    cfg = PreprocessConfig((320, 256), resize="letterbox", color_order="bgr")
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="resize"):
        PreprocessConfig((32, 32), resize="crop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std"):
        PreprocessConfig((32, 32), std=(1, 0, 1))
    linear = PreprocessConfig((32, 32), interpolation="linear")
    assert PreprocessConfig.from_dict(linear.to_dict()) == linear
    with pytest.raises(ValueError, match="interpolation must be 'area' or 'linear'"):
        PreprocessConfig((32, 32), interpolation="cubic")  # type: ignore[arg-type]


def test_configs_written_before_the_interpolation_field_mean_area() -> None:
    old = {"input_size": [32, 32], "resize": "stretch", "color_order": "rgb",
           "mean": [0, 0, 0], "std": [1, 1, 1], "pad_value": 114.0}
    assert PreprocessConfig.from_dict(old).interpolation == "area"


@pytest.mark.parametrize(("interpolation", "flag"), [("area", cv2.INTER_AREA),
                                                      ("linear", cv2.INTER_LINEAR)])
@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_shrinking_follows_the_interpolation(interpolation: str, flag: int, resize: str) -> None:
    frame = _frame(96, 128)  # -> 40x30 (stretch) or 40x30 in a 40x40 letterbox
    cfg = PreprocessConfig((40, 30) if resize == "stretch" else (40, 40), resize=resize,
                           color_order="bgr", mean=(0, 0, 0), std=(1, 1, 1),
                           interpolation=interpolation)  # type: ignore[arg-type]
    x, t = preprocess(frame, cfg)
    expected = cv2.resize(frame, (40, 30), interpolation=flag)
    py = int(t.pad_y)
    np.testing.assert_array_equal(x[0, :, py:py + 30].transpose(1, 2, 0), expected)
    other = cv2.INTER_LINEAR if flag == cv2.INTER_AREA else cv2.INTER_AREA
    assert not np.array_equal(expected, cv2.resize(frame, (40, 30), interpolation=other))


def test_enlarging_is_linear_whatever_the_interpolation() -> None:
    frame = _frame(12, 16)
    for interpolation in ("area", "linear"):
        cfg = PreprocessConfig((32, 24), color_order="bgr", mean=(0, 0, 0), std=(1, 1, 1),
                               interpolation=interpolation)  # type: ignore[arg-type]
        x, _ = preprocess(frame, cfg)
        np.testing.assert_array_equal(
            x[0].transpose(1, 2, 0), cv2.resize(frame, (32, 24), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("size", ["320", 320, [320], [320, 256, 3]])
def test_from_dict_refuses_an_input_size_that_is_not_width_and_height(size: object) -> None:
    with pytest.raises(ValueError, match=r"input_size must be \[width, height\]"):
        PreprocessConfig.from_dict({"input_size": size})


def test_preprocess_needs_a_preprocess_config() -> None:
    with pytest.raises(TypeError, match="config must be a PreprocessConfig"):
        preprocess(np.zeros((8, 8, 3), np.uint8), None)  # type: ignore[arg-type]


def test_configs_from_lists_hash_and_compare_as_tuples_and_normalise() -> None:
    from edgedet.preprocess import normalize_to_nchw

    listed = PreprocessConfig([40, 30], mean=[1, 2, 3], std=np.array([4.0, 5.0, 6.0]))
    tupled = PreprocessConfig((40, 30), mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    assert listed == tupled and hash(listed) == hash(tupled)
    x, _ = preprocess(_frame(30, 40), listed)
    np.testing.assert_array_equal(x, preprocess(_frame(30, 40), tupled)[0])
    with pytest.raises(FrameError, match="uint8"):
        normalize_to_nchw(_frame(30, 40).astype(np.float32), tupled)


# (The module: ``edgedet.preprocess`` as an attribute of the package is the function.)
pre = importlib.import_module("edgedet.preprocess")


def _two_steps(frame: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    resized, _ = resize_to_input(frame, cfg)
    return normalize_to_nchw(resized, cfg)


@pytest.mark.parametrize(("frame_size", "input_size", "resize"), [
    ((640, 480), (320, 256), "letterbox"),  # bars above and below
    ((512, 512), (320, 256), "letterbox"),  # bars on the sides
    ((640, 480), (320, 240), "stretch"),  # no bars
    ((62, 46), (31, 23), "stretch"),  # odd sizes
])
@pytest.mark.parametrize("color_order", ["rgb", "bgr"])
def test_a_frame_that_halves_runs_in_one_pass_with_the_two_steps_bits(
        frame_size: tuple[int, int], input_size: tuple[int, int], resize: str,
        color_order: str) -> None:
    cfg = PreprocessConfig(input_size, resize=resize, color_order=color_order,  # type: ignore[arg-type]
                           pad_value=114.7)
    frame = _frame(frame_size[1], frame_size[0])
    frame[:2, :2] = 255  # the extremes: blocks of 255s and of 0s
    frame[2:4, :2] = 0
    frame[4:6, :2] = np.array([1, 0], np.uint8)[:, None, None]  # a mean of a half: rounds up
    transform = compute_transform(frame_size, cfg)
    expected = _two_steps(frame, cfg).view(np.uint32)
    np.testing.assert_array_equal(pre._one_pass(frame, cfg, transform).view(np.uint32),
                                  expected)
    assert pre.runs_in_one_pass(frame, cfg)  # so preprocess takes it
    images, got_transform = preprocess(frame, cfg)
    assert got_transform == resize_to_input(frame, cfg)[1] == transform
    np.testing.assert_array_equal(images.view(np.uint32), expected)


def test_the_one_pass_runs_where_it_applies_and_nowhere_else(monkeypatch) -> None:
    calls: list[int] = []
    real = pre._one_pass
    monkeypatch.setattr(pre, "_one_pass", lambda *a: calls.append(1) or real(*a))
    cfg = PreprocessConfig((320, 256), resize="letterbox")
    preprocess(_frame(480, 640), cfg)
    assert calls
    calls.clear()
    for frame, config in [
            (_frame(480, 640), PreprocessConfig((320, 256), interpolation="linear")),
            (_frame(479, 640), cfg),  # 2 x 1.996: not half
            (_frame(960, 1280), cfg),  # 4 x 4 blocks: OpenCV's own loop is faster
            (_frame(720, 960), PreprocessConfig((320, 240))),  # 3 x 3
            (_frame(128, 160), PreprocessConfig((160, 128))),  # the input size already
            (_frame(100, 100), cfg),  # enlarged
            (_frame(960, 1280)[::2, ::2], cfg),  # a view with gaps (the two steps read it)
            (_read_only(_frame(480, 640)), cfg)]:  # (the kernel would compile once more)
        np.testing.assert_array_equal(preprocess(frame, config)[0],
                                      _two_steps(np.ascontiguousarray(frame), config))
    assert not calls


def _read_only(frame: np.ndarray) -> np.ndarray:
    frame.flags.writeable = False
    return frame


def test_a_one_pass_that_disagrees_with_opencv_is_not_used(monkeypatch) -> None:
    """Another OpenCV could round its area shrink otherwise: each frame size is checked once
    against the two steps, and a mismatch keeps them."""
    real = pre._one_pass
    monkeypatch.setattr(pre, "_one_pass", lambda *a: real(*a) + np.float32(1e-3))
    pre._one_pass_agrees.cache_clear()
    try:
        cfg = PreprocessConfig((320, 256), resize="letterbox")
        frame = _frame(480, 640)
        np.testing.assert_array_equal(preprocess(frame, cfg)[0], _two_steps(frame, cfg))
        assert pre._one_pass_agrees((640, 480), cfg) is False
    finally:
        pre._one_pass_agrees.cache_clear()
