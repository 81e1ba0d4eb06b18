"""``HeadDecoder``: one image's raw head outputs → ``Detections`` in frame pixels.

The single definition of the SDK's decoding and selection, built from an artifact manifest
(or a checkpoint config, which holds the same keys). ``Detector`` uses it after every backend,
the conversion pipeline's accuracy check scores its PyTorch reference through a ``Detector``
that uses it, and training-time evaluation uses it too, so the three report one number::

    outputs {name: (A, k)} ── decode_head_candidates ──► boxes_xyxy (n, 4), scores (n, K)
        of the n anchors that can pass the score threshold
        ── select_detections (threshold, top-k, NMS) ──► frame pixels ──► Detections

Each step is one call of a compiled kernel (``edgedet.kernels``): per frame, a few hundred
numpy calls cost 0.5-0.7 ms with the caches cold after an inference, the kernels 0.2-0.3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edgedet import kernels
from edgedet.anchors import anchor_spec_from_dict
from edgedet.detections import Detections
from edgedet.head_decoding import HEAD_FAMILIES, decode_head_candidates
from edgedet.options import DetectorOptions
from edgedet.postprocess import select_detections
from edgedet.preprocess import FrameTransform


class HeadDecoder:
    """Turns one image's raw head outputs into ``Detections``; numpy and compiled kernels
    (``edgedet.kernels``, loaded when the decoder is built), thread-safe.

    Args:
        head_family: one of ``edgedet.head_decoding.HEAD_FAMILIES``.
        priors_cxcywh: ``(A, 4)`` anchors in input pixels.
        box_coder_weights: the model's 4 box coder weights.
        output_names: the raw outputs it reads, in the model's order.
        class_names: the K class names.
        options: thresholds, top-k and NMS mode.
    """

    def __init__(self, head_family: str, priors_cxcywh: np.ndarray,
                 box_coder_weights: Sequence[float], output_names: Sequence[str],
                 class_names: Sequence[str], options: DetectorOptions) -> None:
        if head_family not in HEAD_FAMILIES:
            raise ValueError(f"unknown head family {head_family!r}; expected one of "
                             f"{HEAD_FAMILIES}")
        self.head_family = head_family
        self.priors_cxcywh = np.asarray(priors_cxcywh, dtype=np.float32)
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)
        # (As the decoding kernel takes them, once: per frame the conversion cost 2 us.)
        self._box_coder_weights32 = np.asarray(self.box_coder_weights, dtype=np.float32)
        self.output_names = tuple(output_names)
        self.class_names = tuple(str(name) for name in class_names)
        self.options = options
        kernels.warm_up()

    @classmethod
    def from_manifest(cls, manifest: Mapping, options: DetectorOptions | None = None
                      ) -> HeadDecoder:
        """The decoder of an artifact manifest (or a checkpoint config with the same keys:
        ``head_family``, ``anchor_spec``, ``box_coder_weights``, ``class_names`` and
        ``outputs`` or ``output_names``); options default to its ``postprocess`` section as
        it is (the evaluation settings, which training-time evaluation scores with), not the
        application threshold ``Detector.detect`` adds by default."""
        if "outputs" in manifest:
            output_names = [o["name"] for o in manifest["outputs"]]
        else:
            output_names = list(manifest["output_names"])
        return cls(str(manifest["head_family"]),
                   anchor_spec_from_dict(manifest["anchor_spec"]).generate(),
                   manifest["box_coder_weights"], output_names, manifest["class_names"],
                   options or DetectorOptions.from_manifest(manifest, settings="evaluation"))

    def __call__(self, outputs: Mapping[str, np.ndarray], transform: FrameTransform
                 ) -> Detections:
        """Decode one image.

        Args:
            outputs: ``{name: (A, k) or (1, A, k)}`` for every name in ``output_names``.
            transform: the frame → input transform of this image (from ``preprocess``).

        Returns:
            ``Detections`` in frame pixels, best score first.
        """
        xyxy, kept_scores, class_ids = self.select(*self.candidates(outputs))
        # Frame pixels, clipped; a box lying wholly in letterbox padding or off the frame
        # clips to zero area and a NaN box (a model's NaN delta) fails the test too
        # (kernels.frame_detections: FrameTransform.boxes_to_frame in one call). The rest are
        # what Detections checks for: clipped to the frame (finite), upright, scores above
        # the threshold (finite), class ids from the score columns, so the checks are skipped.
        width, height = transform.frame_size
        return Detections._unchecked(
            *kernels.frame_detections(xyxy, kept_scores, class_ids, float(transform.scale_x),
                                      float(transform.scale_y), float(transform.pad_x),
                                      float(transform.pad_y), int(width), int(height)),
            self.class_names)

    def candidates(self, outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The first step of a call: ``(boxes_xyxy (n, 4), scores (n, K))`` in input pixels,
        of the anchors that can pass the score threshold."""
        one_image = {name: outputs[name] for name in self.output_names}
        _, boxes_xyxy, scores = decode_head_candidates(
            self.head_family, one_image, self.priors_cxcywh,
            self._box_coder_weights32,  # type: ignore[arg-type]
            min_score=self.options.score_threshold)
        if self.class_names and scores.shape[1] != len(self.class_names):
            # (Detections are built unchecked: a class id must index the names.)
            raise ValueError(f"the head scores {scores.shape[1]} classes but the decoder has "
                             f"{len(self.class_names)} class names")
        return boxes_xyxy, scores

    def select(self, boxes_xyxy: np.ndarray, scores: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The second step: ``select_detections`` (threshold, top-k, NMS) with the options;
        ``(boxes_xyxy (D, 4), scores (D,), class_ids (D,))`` in input pixels."""
        options = self.options
        return select_detections(
            boxes_xyxy, scores, score_threshold=options.score_threshold,
            iou_threshold=options.iou_threshold, max_detections=options.max_detections,
            pre_nms_top_k=options.pre_nms_top_k, nms_mode=options.nms_mode)

    def decode_batch(self, outputs: Mapping[str, np.ndarray],
                     transforms: Sequence[FrameTransform]) -> list[Detections]:
        """Decode image ``i`` of ``{name: (N, A, k)}`` with ``transforms[i]``, for each i."""
        return [self({name: outputs[name][i] for name in self.output_names}, transform)
                for i, transform in enumerate(transforms)]
