"""``quantize.calibration``: specs, hashes, disjointness and SDK-identical preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.data.sample import Sample
from edgedet.preprocess import PreprocessConfig, preprocess
from quantize.calibration import (
    CALIBRATION_SEED,
    EVAL_SEED,
    TRAIN_SEED,
    ImageSet,
    calibration_inputs,
    check_calibration,
    check_disjoint,
    images_sha256,
    open_image_set,
)


def test_default_seeds_are_distinct_and_splits_disjoint():
    assert len({TRAIN_SEED, EVAL_SEED, CALIBRATION_SEED}) == 3
    calib = open_image_set("synthetic", 4, (64, 48), CALIBRATION_SEED, progress=False)
    evaluation = open_image_set("synthetic", 4, (64, 48), EVAL_SEED, progress=False)
    assert (calib.spec, evaluation.spec) == ("synthetic:2", "synthetic:1")
    assert calib.samples[0].image.shape == (48, 64, 3)
    assert calib.sha256 != evaluation.sha256
    check_disjoint(calib, evaluation)
    same = open_image_set("synthetic:1", 2, (64, 48), CALIBRATION_SEED, progress=False)
    with pytest.raises(ValueError, match="2 of 2 calibration images"):
        check_disjoint(same, evaluation)


def test_hash_depends_on_bytes_and_order():
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    def sample(image, i):
        return Sample(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), i, f"{i}.png")
    forward = images_sha256([sample(a, 1), sample(b, 2)])
    assert forward == images_sha256([sample(a.copy(), 1), sample(b.copy(), 2)])
    assert forward != images_sha256([sample(b, 1), sample(a, 2)])
    assert ImageSet("x", [sample(a, 1)], ("c",), None).describe()["num_images"] == 1


def test_inputs_are_the_sdk_preprocessing_and_bad_specs_fail():
    image_set = open_image_set("synthetic:5", 2, (64, 48), 0, progress=False)
    config = PreprocessConfig(input_size=(32, 32), resize="letterbox")
    inputs = calibration_inputs(image_set.samples, config)
    np.testing.assert_array_equal(inputs[1], preprocess(image_set.samples[1].image, config)[0])
    assert inputs[0].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="integer seed"):
        open_image_set("synthetic:x", 2, (64, 48), 0, progress=False)
    with pytest.raises(ValueError, match="SCHEME:PATH"):
        open_image_set("imagenet:/x", 2, (64, 48), 0, progress=False)


def _image_set(images: list[np.ndarray]) -> ImageSet:
    samples = [Sample(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), i + 1)
               for i, image in enumerate(images)]
    return ImageSet("coco:/data/calib", samples, ("a",), None)


def test_all_black_calibration_is_refused():
    black = _image_set([np.zeros((64, 64, 3), np.uint8)] * 5)
    with pytest.raises(ValueError, match=r"coco:/data/calib: all 5 images are constant"):
        check_calibration(black, (64, 64))
    with pytest.raises(ValueError, match="holds no images"):
        check_calibration(_image_set([]), (64, 64))


def test_constant_duplicate_and_tiny_calibration_images_warn():
    rng = np.random.default_rng(0)
    varied = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    mixed = _image_set(varied[:2] + [np.full((64, 64, 3), 255, np.uint8)] * 2)
    with pytest.warns(UserWarning, match="2 of 4 calibration images are constant"):
        check_calibration(mixed, (64, 64))
    assert mixed.stats["constant_images"] == 2 and mixed.describe()["stats"] == mixed.stats
    duplicates = _image_set([varied[0]] * 4 + [np.full((64, 64, 3), 40, np.uint8)])
    with pytest.warns(UserWarning, match="only 2 of 5 calibration images differ"):
        check_calibration(duplicates, (64, 64))
    tiny = _image_set([rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(3)])
    with pytest.warns(UserWarning, match=r"as small as 16x12 are upscaled 5\.3x"):
        check_calibration(tiny, (64, 64))


def test_good_calibration_images_pass_quietly(recwarn):
    images = open_image_set("synthetic", 6, (96, 72), CALIBRATION_SEED, progress=False)
    assert check_calibration(images, (96, 72)) == []
    assert images.stats["distinct_images"] == 6 and images.stats["constant_images"] == 0
    assert not recwarn.list
