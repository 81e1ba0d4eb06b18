"""Double-scale testing's merge: levels paired by grid, anchors equal in 1x pixels."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.anchors import GridAnchorSpec
from edgedet.double_scale import DoubleScaleError, DoubleScaleLayout
from edgedet.models.harnet import harnet_resnet18_small


def _specs(width: int = 320, height: int = 256) -> tuple[GridAnchorSpec, GridAnchorSpec]:
    model = harnet_resnet18_small(num_classes=2, img_size=(width, height))
    return model.anchor_spec((width, height)), model.anchor_spec((2 * width, 2 * height))


def test_outputs_that_are_the_anchors_merge_into_the_merged_anchors():
    """A 'model' whose raw outputs are its own anchors (in 1x pixels) is the known answer: the
    averaged levels hold two equal anchor sets, so the merge must give the merged priors."""
    spec_1x, spec_2x = _specs()
    layout = DoubleScaleLayout.of(spec_1x, spec_2x)
    merged = layout.merge(spec_1x.generate(), spec_2x.generate() / 2.0)
    np.testing.assert_allclose(merged, layout.priors_cxcywh, rtol=0, atol=1e-4)
    finest_2x = spec_2x.feature_sizes[0][0] * spec_2x.feature_sizes[0][1] * 9
    assert layout.num_anchors == finest_2x + spec_1x.num_anchors
    # The extra level: anchors half the size of the 1x finest level, at half its stride.
    assert layout.priors_cxcywh[:finest_2x, 2:].min() == pytest.approx(
        spec_1x.generate()[:, 2:].min() / 2, rel=1e-5)


def test_merge_averages_shared_levels_and_keeps_the_extra_ones_by_hand():
    spec_1x = GridAnchorSpec((64, 64), ((2, 2), (1, 1)), (32, 64), (128.0, 256.0))
    spec_2x = GridAnchorSpec((128, 128), ((4, 4), (2, 2)), (32, 64), (128.0, 256.0))
    layout = DoubleScaleLayout.of(spec_1x, spec_2x)
    one = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])  # 1x: 4 cells at level 0, 1 at level 1
    two = np.arange(20, dtype=float)[:, None] * 10  # 2x: 16 cells, then 4
    merged = layout.merge(one, two)
    expected = [*(10.0 * np.arange(16)),                   # 2x level 0, the extra fine level
                *((np.array([1, 2, 3, 4]) + 10.0 * np.arange(16, 20)) / 2),  # averaged
                5.0]                                        # 1x level 1, the extra coarse level
    np.testing.assert_array_equal(merged[:, 0], expected)
    assert layout.merge_outputs({"a": one[None]}, {"a": two[None]})["a"].shape == (21, 1)


def test_coarse_levels_from_1x_take_the_1x_outputs_alone_by_hand():
    """Three levels, two shared: with the coarsest shared level from 1x, only the finer
    shared level is averaged; the priors (1x anchors there either way) do not change."""
    spec_1x = GridAnchorSpec((64, 64), ((4, 4), (2, 2), (1, 1)), (16, 32, 64),
                             (64.0, 128.0, 256.0))
    spec_2x = GridAnchorSpec((128, 128), ((8, 8), (4, 4), (2, 2)), (16, 32, 64),
                             (64.0, 128.0, 256.0))
    one = np.arange(21, dtype=float)[:, None]  # 16 + 4 + 1 cells
    two = 100 + np.arange(84, dtype=float)[:, None]  # 64 + 16 + 4 cells
    paper = DoubleScaleLayout.of(spec_1x, spec_2x)
    ours = DoubleScaleLayout.of(spec_1x, spec_2x, coarse_levels_from_1x=1)
    expected = [*two[:64, 0], *(one[:16, 0] + two[64:80, 0]) / 2, *one[16:20, 0], one[20, 0]]
    np.testing.assert_array_equal(ours.merge(one, two)[:, 0], expected)
    assert not np.array_equal(paper.merge(one, two), ours.merge(one, two))
    np.testing.assert_array_equal(ours.priors_cxcywh, paper.priors_cxcywh)
    everything = DoubleScaleLayout.of(spec_1x, spec_2x, coarse_levels_from_1x=2)
    np.testing.assert_array_equal(everything.merge(one, two)[:, 0], [*two[:64, 0], *one[:, 0]])
    for bad in (3, -1, 1.0, True):
        with pytest.raises(DoubleScaleError, match="coarse_levels_from_1x"):
            DoubleScaleLayout.of(spec_1x, spec_2x, coarse_levels_from_1x=bad)


def test_layouts_that_do_not_pair_are_refused():
    spec_1x, spec_2x = _specs()
    with pytest.raises(DoubleScaleError, match="not twice"):
        DoubleScaleLayout.of(spec_1x, spec_1x)
    # Anchors sized per level in a way that does not scale with the image (SSD-like).
    fixed_1x = GridAnchorSpec((64, 64), ((2, 2), (1, 1)), (32, 64), (30.0, 45.0))
    fixed_2x = GridAnchorSpec((128, 128), ((4, 4), (2, 2)), (32, 64), (30.0, 45.0))
    with pytest.raises(DoubleScaleError, match="does not match"):
        DoubleScaleLayout.of(fixed_1x, fixed_2x)
    layout = DoubleScaleLayout.of(spec_1x, spec_2x)
    with pytest.raises(DoubleScaleError, match="anchors"):
        layout.merge(np.zeros((10, 4)), np.zeros((10, 4)))
