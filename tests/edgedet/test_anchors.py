import math

import numpy as np
import pytest

from edgedet.anchors import GridAnchorSpec, SsdPriorSpec, anchor_spec_from_dict


def test_grid_anchor_hand_values_and_order() -> None:
    spec = GridAnchorSpec((32, 16), ((2, 4),), (8,), (32.0,), scales=(1.0, 2.0),
                          aspect_ratios=(1.0, 4.0))
    priors = spec.generate()
    assert priors.shape == (2 * 4 * 4, 4) == (spec.num_anchors, 4)
    # first cell (y=0, x=0): centre (4, 4); shapes scale-major, ratio-minor
    np.testing.assert_allclose(priors[:4], [[4, 4, 32, 32], [4, 4, 64, 16],
                                            [4, 4, 64, 64], [4, 4, 128, 32]])
    # next cell is x=1 (row-major), then row y=1 starts after 4 cells
    np.testing.assert_allclose(priors[4, :2], [12, 4])
    np.testing.assert_allclose(priors[16, :2], [4, 12])


def test_grid_anchor_multi_level_concatenation() -> None:
    spec = GridAnchorSpec((64, 64), ((8, 8), (4, 4)), (8, 16), (32.0, 64.0),
                          scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)))
    priors = spec.generate()
    assert len(priors) == spec.num_anchors == (64 + 16) * 3
    np.testing.assert_allclose(priors[64 * 3, :], [8, 8, 64, 64])
    assert priors[2, 2] == pytest.approx(32 * 2 ** (2 / 3), rel=1e-6)


def test_ssd_priors_match_ssd_pytorch_layout() -> None:
    spec = SsdPriorSpec((300, 300), ((38, 38), (1, 1)), (8, 300), (30, 264), (60, 315),
                        ((2,), (2, 3)))
    priors = spec.generate()
    assert len(priors) == spec.num_anchors == 38 * 38 * 4 + 6
    s = math.sqrt(2)
    np.testing.assert_allclose(priors[:4], [[4, 4, 30, 30],
                                            [4, 4, math.sqrt(30 * 60), math.sqrt(30 * 60)],
                                            [4, 4, 30 * s, 30 / s], [4, 4, 30 / s, 30 * s]],
                               rtol=1e-5)
    # the 1x1 level: centre 150, boxes clipped to the image (315 → 300)
    last = priors[-6:]
    np.testing.assert_allclose(last[:, :2], 150)
    assert last[:, 2:].max() == pytest.approx(300)


def test_round_trip_and_errors() -> None:
    grid = GridAnchorSpec((320, 320), ((40, 40),), (8,), (32.0,), (1.0, 1.26))
    ssd = SsdPriorSpec((300, 300), ((19, 19),), (16,), (60,), (111,), ((2, 3),))
    for spec in (grid, ssd):
        again = anchor_spec_from_dict(spec.to_dict())
        assert again == spec
        np.testing.assert_array_equal(again.generate(), spec.generate())
    with pytest.raises(ValueError, match="one entry per level"):
        GridAnchorSpec((32, 32), ((4, 4),), (8, 16), (32.0,))
    with pytest.raises(ValueError, match="kind"):
        anchor_spec_from_dict({"kind": "yolo"})


@pytest.mark.parametrize(("field", "value"), [
    ("base_sizes", (float("nan"),)), ("base_sizes", (-32.0,)), ("strides", (0,)),
    ("aspect_ratios", (-1.0,)), ("scales", (float("inf"),)), ("aspect_ratios", (True,)),
    ("feature_sizes", ((4.5, 4),)), ("feature_sizes", ((0, 4),)), ("image_size", (32, -32)),
])
def test_sizes_that_would_give_nan_or_no_anchors_are_refused(field, value) -> None:
    # (A NaN base size loaded and then found nothing; a negative ratio failed in math.sqrt.)
    good = {"image_size": (32, 32), "feature_sizes": ((4, 4),), "strides": (8,),
            "base_sizes": (32.0,), "scales": (1.0,), "aspect_ratios": (1.0,)}
    GridAnchorSpec(**good)
    with pytest.raises(ValueError, match=f"anchor {field} must be"):
        GridAnchorSpec(**{**good, field: value})


def test_ssd_prior_sizes_are_checked_too() -> None:
    SsdPriorSpec((300, 300), ((19, 19),), (16,), (60,), (111,), ((2, 3),))
    with pytest.raises(ValueError, match="anchor min_sizes must be"):
        SsdPriorSpec((300, 300), ((19, 19),), (16,), (float("nan"),), (111,), ((2, 3),))
    with pytest.raises(ValueError, match="anchor aspect_ratios must be"):
        SsdPriorSpec((300, 300), ((19, 19),), (16,), (60,), (111,), ((2, -3),))
    SsdPriorSpec((300, 300), ((19, 19),), (16,), (60,), (111,), ((),))  # squares only


def test_whole_numbers_written_as_floats_read_as_feature_sizes() -> None:
    spec = GridAnchorSpec((32, 32), ((4, 4),), (8,), (32.0,))
    data = {**spec.to_dict(), "feature_sizes": [[4.0, 4.0]]}  # another tool's JSON
    assert anchor_spec_from_dict(data) == spec
    with pytest.raises(ValueError, match="whole numbers"):
        anchor_spec_from_dict({**spec.to_dict(), "feature_sizes": [[4.5, 4.0]]})
