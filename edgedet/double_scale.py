"""HAR-Net's double-scale testing (paper sec. III-E), as numpy bookkeeping over flat outputs.

The image is run twice: at the model's input size (1x) and at twice it (2x). With RetinaNet's
anchors (side 4 x stride at every level), level ``P_{l+1}`` of the 2x run has the same grid
and, in 1x pixels, the same anchors as ``P_l`` of the 1x run, so those maps are averaged; the
2x run's finest level (``P3`` at 2x: anchors of half the 1x ``P3`` size) adds the smallest
objects and the 1x run's coarsest level (``P7``) keeps the largest. The raw head outputs
(logits and box deltas) are what is averaged, the paper's "output maps", so the decoding after
the merge is the SDK's ordinary one with the merged priors::

    2x: [P3' | P4' .. P7']          1x: [P3 .. P6 | P7]
    merged: [P3' | (P3 + P4')/2 .. (P6 + P7')/2 | P7]      priors: [P3' / 2 | 1x priors]

One departure from that, measured: the shared levels at the coarse end take the 1x run alone
(``coarse_levels_from_1x``; ``COARSE_LEVELS_FROM_1X`` for new artifacts). A model trained at
one input size has never seen its coarsest 2x maps: the pruned HAR-Net's 2x ``P7'`` (the
zoo's model until 2026-12-06, ``checkpoints/harnet_pruned_ft``) scores
0.99-0.999 on any frame, a black one included, and averaged with the 1x ``P6`` it put a box
over the whole frame above the 0.4 application threshold in nearly every image (229 such
boxes in the 200 eval images). Large objects are the 1x run's to find (single-scale APl 61.7;
the paper's average 52.1). On the synthetic eval split (200 images, seed 1 / seed 3), AP of
single scale 33.16 / 33.15, the paper's merge 42.65 / 43.16, the coarsest pair from 1x
45.18 / 45.73, the two coarsest 46.65 / 46.96, no pair averaged (only ``P3'`` added) 44.37 /
44.74; none of the merges but the paper's leaves a whole-frame box.

Flat outputs are ``(A, k)`` arrays, levels concatenated in order, each level
``feature_h * feature_w * anchors_per_cell`` rows (``edgedet.anchors``).

In the SDK, ``DetectorOptions(double_scale=True)`` runs it on every backend: the artifact then
holds the model a second time at 2x input (``quantize/run.py --double-scale``, the manifest's
``double_scale`` section) and ``SecondScale`` is the 2x half of each ``detect`` call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgedet.anchors import GridAnchorSpec, anchor_spec_from_dict
from edgedet.attend_tail import AttendTail, attend_tail_for
from edgedet.backends import InferenceBackend
from edgedet.preprocess import PreprocessConfig, preprocess


class DoubleScaleError(ValueError):
    """Two anchor layouts that do not pair up as a 1x and a 2x run of one detector."""


# Shared levels at the coarse end that new artifacts take from the 1x run alone (the module
# docstring has the measurements); the manifest's double_scale section records the number,
# and one written before it, without the field, merges every shared level as the paper does.
COARSE_LEVELS_FROM_1X = 2


def _level_slices(spec: GridAnchorSpec) -> list[slice]:
    slices, start = [], 0
    for height, width in spec.feature_sizes:
        count = height * width * spec.anchors_per_cell
        slices.append(slice(start, start + count))
        start += count
    return slices


@dataclass(frozen=True)
class DoubleScaleLayout:
    """Where each merged row comes from; build with ``DoubleScaleLayout.of``."""

    slices_1x: tuple[slice, ...]
    slices_2x: tuple[slice, ...]
    priors_cxcywh: np.ndarray  # (A_merged, 4) in 1x input pixels
    coarse_levels_from_1x: int = 0  # shared levels at the coarse end not averaged

    @classmethod
    def of(cls, spec_1x: GridAnchorSpec, spec_2x: GridAnchorSpec,
           coarse_levels_from_1x: int = 0) -> DoubleScaleLayout:
        """The layout for a model's anchors at its input size and at twice that size;
        ``coarse_levels_from_1x`` of the shared levels, from the coarsest down, take the 1x
        run's outputs alone (0: every shared level averaged, the paper's merge).

        Raises ``DoubleScaleError`` unless every 2x level from the second on has the grid,
        stride and anchor size (in 1x pixels) of the 1x level below it, or when
        ``coarse_levels_from_1x`` is not a count of shared levels.
        """
        if not isinstance(spec_1x, GridAnchorSpec) or not isinstance(spec_2x, GridAnchorSpec):
            raise DoubleScaleError("double-scale testing needs grid anchors (RetinaNet family)")
        if tuple(2 * v for v in spec_1x.image_size) != tuple(spec_2x.image_size):
            raise DoubleScaleError(f"the second input {spec_2x.image_size} is not twice "
                                   f"{spec_1x.image_size}")
        levels = len(spec_1x.feature_sizes)
        if len(spec_2x.feature_sizes) != levels or levels < 2:
            raise DoubleScaleError("both runs need the same number (>= 2) of pyramid levels")
        if (spec_1x.scales, spec_1x.aspect_ratios) != (spec_2x.scales, spec_2x.aspect_ratios):
            raise DoubleScaleError("both runs need the same anchor scales and aspect ratios")
        if isinstance(coarse_levels_from_1x, bool) or not isinstance(
                coarse_levels_from_1x, int | np.integer) or not (
                0 <= coarse_levels_from_1x <= levels - 1):
            raise DoubleScaleError(f"coarse_levels_from_1x must be a whole number in 0.."
                                   f"{levels - 1} (the shared levels), got "
                                   f"{coarse_levels_from_1x!r}")
        for level in range(levels - 1):
            shared_1x = (tuple(spec_1x.feature_sizes[level]), spec_1x.strides[level],
                         spec_1x.base_sizes[level])
            shared_2x = (tuple(spec_2x.feature_sizes[level + 1]),
                         spec_2x.strides[level + 1] / 2, spec_2x.base_sizes[level + 1] / 2)
            if shared_1x != shared_2x:
                raise DoubleScaleError(
                    f"1x level {level} (grid, stride, anchor) {shared_1x} does not match 2x "
                    f"level {level + 1} {shared_2x} in 1x pixels")
        priors_1x, priors_2x = spec_1x.generate(), spec_2x.generate()
        slices_1x, slices_2x = _level_slices(spec_1x), _level_slices(spec_2x)
        finest_2x = priors_2x[slices_2x[0]] / 2.0  # (cx, cy, w, h) all scale with the image
        priors = np.concatenate([finest_2x, priors_1x], axis=0).astype(np.float32)
        return cls(tuple(slices_1x), tuple(slices_2x), priors, int(coarse_levels_from_1x))

    @property
    def num_anchors(self) -> int:
        return len(self.priors_cxcywh)

    def merge(self, outputs_1x: np.ndarray, outputs_2x: np.ndarray) -> np.ndarray:
        """``(A_1x, k)`` and ``(A_2x, k)`` raw outputs (or ``(1, A, k)``) -> ``(A_merged, k)``."""
        one = np.asarray(outputs_1x)
        two = np.asarray(outputs_2x)
        one = one[0] if one.ndim == 3 else one
        two = two[0] if two.ndim == 3 else two
        expected = (self.slices_1x[-1].stop, self.slices_2x[-1].stop)
        if (len(one), len(two)) != expected:
            raise DoubleScaleError(f"outputs have {len(one)} and {len(two)} anchors, the "
                                   f"layout {expected[0]} and {expected[1]}")
        parts = [two[self.slices_2x[0]]]
        shared = len(self.slices_1x) - 1
        for level in range(shared):
            if level >= shared - self.coarse_levels_from_1x:
                parts.append(one[self.slices_1x[level]])
            else:
                parts.append(0.5 * (one[self.slices_1x[level]] + two[self.slices_2x[level + 1]]))
        parts.append(one[self.slices_1x[-1]])
        return np.concatenate(parts, axis=0)

    def merge_outputs(self, outputs_1x: Mapping[str, np.ndarray],
                      outputs_2x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``merge`` applied to every named output the two runs share."""
        return {name: self.merge(outputs_1x[name], outputs_2x[name]) for name in outputs_1x}


class SecondScale:
    """The 2x run of double-scale testing: the frame pre-processed at twice the model's input
    size, run through the 2x model, merged with the 1x run's raw outputs.

    Args:
        backend: the 2x model (input ``(1, 3, 2H, 2W)``).
        preprocess_config: the artifact's pre-processing with the 2x input size.
        layout: ``DoubleScaleLayout.of(1x anchors, 2x anchors)``.
    """

    def __init__(self, backend: InferenceBackend, preprocess_config: PreprocessConfig,
                 layout: DoubleScaleLayout, attend_tail: AttendTail | None = None) -> None:
        self.backend = backend
        self.preprocess_config = preprocess_config
        self.layout = layout
        self.attend_tail = attend_tail

    @classmethod
    def from_manifest(cls, manifest: Mapping, backend: InferenceBackend,
                      threads: int | None = None) -> SecondScale:
        """The second scale of an artifact manifest whose ``double_scale`` section names the
        2x model that ``backend`` has loaded (with the section's own ``attend_tail``, run on
        ``threads``, where the 2x model hands over PASSD's tables: ``edgedet.attend_tail``).

        Raises:
            DoubleScaleError: the artifact has no 2x model, its anchors do not pair with the
                1x model's, or ``backend`` does not take the 2x input, lacks an output of
                the 1x model or hands over tables of another type than the section reads.
        """
        section = manifest.get("double_scale")
        if not section:
            raise DoubleScaleError(
                f"artifact {manifest.get('name')!r} has no 2x model for double-scale testing; "
                "convert it with quantize/run.py --double-scale")
        width, height = (int(v) for v in section["input_size"])
        layout = DoubleScaleLayout.of(anchor_spec_from_dict(manifest["anchor_spec"]),
                                      anchor_spec_from_dict(section["anchor_spec"]),
                                      section.get("coarse_levels_from_1x", 0))
        shape = tuple(backend.input_shape)
        if len(shape) != 4 or shape[2] not in (height, None) or shape[3] not in (width, None):
            raise DoubleScaleError(f"{backend.model_path} takes input {list(shape)}, not the "
                                   f"2x input (N, 3, {height}, {width})")
        try:  # the 2x model's table types checked at load, as the 1x model's
            tail = attend_tail_for({"attend_tail": section.get("attend_tail"),
                                    "anchor_spec": section["anchor_spec"]},
                                   backend.output_names, threads,
                                   getattr(backend, "output_dtypes", None))
        except ValueError as error:
            raise DoubleScaleError(f"{backend.model_path} (the 2x model): {error}") from None
        made = (tail.outputs_after(backend.output_names) if tail is not None
                else set(backend.output_names))
        wanted = [entry["name"] for entry in manifest.get("outputs", [])]
        missing = [name for name in wanted if name not in made]
        if missing:  # else the first frame would fail on a missing output
            raise DoubleScaleError(f"{backend.model_path} has outputs "
                                   f"{list(backend.output_names)}, without the 1x model's "
                                   f"{missing}: it is not this artifact's 2x model")
        config = PreprocessConfig.from_dict({**manifest["preprocess"],
                                             "input_size": [width, height]})
        return cls(backend, config, layout, tail)

    def merge(self, frame: np.ndarray, outputs_1x: Mapping[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
        """Run ``frame`` (BGR uint8) at 2x and merge with its 1x ``(1, A, k)`` outputs."""
        images, _ = preprocess(frame, self.preprocess_config)
        outputs_2x = self.backend.run(images)
        if self.attend_tail is not None:
            outputs_2x = self.attend_tail(outputs_2x)
        return self.layout.merge_outputs(outputs_1x, outputs_2x)


__all__ = ["COARSE_LEVELS_FROM_1X", "DoubleScaleError", "DoubleScaleLayout", "SecondScale"]
