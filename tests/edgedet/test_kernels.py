"""The compiled kernels against the numpy reference they replace in the per-frame path.

Selection: ``select_detections`` (one kernel call) against the same steps composed from
``edgedet.boxes`` (top-k, class-aware NMS / Soft-NMS, box voting). Hard NMS has no
transcendental step, so it must agree bit for bit; Soft-NMS's Gaussian decay uses numba's
``exp`` in the kernel and numpy's SIMD one in the reference, so its scores may differ by a few
ulps, the detections must not. Decoding: against numpy's sigmoid / softmax and
``box_coding.decode``.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgedet import kernels
from edgedet.box_coding import decode, xyxy_to_cxcywh
from edgedet.boxes import batched_nms, batched_soft_nms, box_voting, topk_candidates
from edgedet.head_decoding import decode_head_candidates, sigmoid, softmax
from edgedet.postprocess import select_detections

# (The reference's IoU of an inf box computes inf - inf on the way to its 0.)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")


def reference_select(boxes_xyxy, scores, *, score_threshold, iou_threshold, max_detections,
                     pre_nms_top_k, nms_mode):
    """``select_detections`` as the numpy functions of ``edgedet.boxes`` compose it."""
    anchor_idx, class_ids, cand_scores = topk_candidates(scores, pre_nms_top_k, score_threshold)
    cand_boxes = boxes_xyxy[anchor_idx]
    if nms_mode == "hard":
        keep = batched_nms(cand_boxes, cand_scores, class_ids, iou_threshold)[:max_detections]
        return cand_boxes[keep], cand_scores[keep], class_ids[keep]
    prune = score_threshold if 0 < score_threshold < 0.001 else 0.001
    keep, new_scores = batched_soft_nms(cand_boxes, cand_scores, class_ids,
                                        iou_threshold=iou_threshold, sigma=0.5,
                                        score_threshold=prune, stop_at=score_threshold)
    selected = np.flatnonzero(new_scores > score_threshold)[:max_detections]
    keep, new_scores = keep[selected], new_scores[selected]
    out_boxes, out_classes = cand_boxes[keep], class_ids[keep]
    if nms_mode == "soft+voting":
        out_boxes, _ = box_voting(out_boxes, out_classes, cand_boxes, cand_scores, class_ids,
                                  0.5)
    return out_boxes, new_scores, out_classes


def frame(seed: int, num_anchors: int, num_classes: int = 5, quantized: bool = True):
    """Boxes in clusters (so that NMS has work), scores on a coarse grid (an INT8 head's many
    equal scores), a few NaN / inf / zero-area boxes."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(30, 290, (12, 2))[rng.integers(0, 12, num_anchors)]
    centres += rng.normal(0, 6, centres.shape)
    sizes = rng.uniform(10, 70, (num_anchors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    boxes[3] = np.nan
    boxes[7, 2] = np.inf
    boxes[11, 2:] = boxes[11, :2]  # zero area
    scores = rng.beta(0.6, 2.5, (num_anchors, num_classes)).astype(np.float32)
    if quantized:
        scores = (np.round(scores * 64) / 64).astype(np.float32)
    return boxes, scores


SETTINGS = [  # (threshold, top-k): an application threshold, evaluation's, a tiny one
    (0.4, 1000), (0.05, 30), (0.05, 0), (0.0005, 200),
]


@pytest.mark.parametrize("quantized", [True, False])  # the top-k cut by numpy / the kernel
@pytest.mark.parametrize("num_anchors", [40, 300, 900])
@pytest.mark.parametrize(("threshold", "top_k"), SETTINGS)
def test_hard_nms_selection_is_the_numpy_one_bit_for_bit(num_anchors, threshold, top_k,
                                                         quantized):
    for seed in range(3):
        boxes, scores = frame(seed, num_anchors, quantized=quantized)
        settings = dict(score_threshold=threshold, iou_threshold=0.45, max_detections=100,
                        pre_nms_top_k=top_k, nms_mode="hard")
        expected = reference_select(boxes, scores, **settings)
        actual = select_detections(boxes, scores, **settings)
        assert len(expected[0]) > 5
        for a, e in zip(actual, expected, strict=True):
            assert a.dtype == e.dtype
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("mode", ["soft", "soft+voting"])
@pytest.mark.parametrize("num_anchors", [40, 300])
@pytest.mark.parametrize(("threshold", "top_k"), SETTINGS)
def test_soft_nms_selection_is_the_numpy_one_to_a_few_ulps(mode, num_anchors, threshold,
                                                           top_k):
    for seed in range(3):
        boxes, scores = frame(seed, num_anchors)
        settings = dict(score_threshold=threshold, iou_threshold=0.5, max_detections=100,
                        pre_nms_top_k=top_k, nms_mode=mode)
        expected = reference_select(boxes, scores, **settings)
        actual = select_detections(boxes, scores, **settings)
        assert len(expected[0]) > 5
        np.testing.assert_array_equal(actual[2], expected[2])  # the same detections, in order
        np.testing.assert_allclose(actual[1], expected[1], rtol=1e-6)
        np.testing.assert_allclose(actual[0], expected[0], rtol=1e-6)


def test_equal_scores_stay_in_index_order_below_the_top_k():
    # Six boxes of one class, all score 0.5, no overlap: with room for all, index order
    # (stable); past the top-k, numpy's cut decides which stay, in the kernel path too.
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], np.float32)
    scores = np.full((6, 1), 0.5, np.float32)
    kept, kept_scores, _ = select_detections(boxes, scores, score_threshold=0.1)
    np.testing.assert_array_equal(kept, boxes)
    np.testing.assert_array_equal(kept_scores, [0.5] * 6)
    kept, _, _ = select_detections(boxes, scores, score_threshold=0.1, pre_nms_top_k=4)
    anchors, _, _ = topk_candidates(scores, 4, 0.1)
    np.testing.assert_array_equal(kept, boxes[anchors])


def test_soft_nms_decays_by_the_gaussian_of_the_iou():
    # Two boxes of one class with IoU 1/3 (10x10 squares overlapping by half): the second
    # decays by exp(-(1/3)^2 / 0.5); a third, of another class, is left alone.
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [5, 0, 15, 10]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]], np.float32)
    kept, kept_scores, classes = select_detections(boxes, scores, score_threshold=0.05,
                                                   nms_mode="soft")
    decayed = 0.8 * np.exp(-(1 / 3) ** 2 / 0.5)  # 0.6406, now below the other class's 0.7
    np.testing.assert_allclose(kept_scores, [0.9, 0.7, decayed], rtol=1e-6)
    assert classes.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(kept, boxes[[0, 2, 1]])


def head_outputs(seed: int, num_anchors: int, width: int):
    rng = np.random.default_rng(seed)
    priors = np.concatenate([rng.uniform(20, 300, (num_anchors, 2)),
                             rng.uniform(8, 80, (num_anchors, 2))], axis=1).astype(np.float32)
    cls_logits = rng.normal(-3.0, 3.0, (num_anchors, width)).astype(np.float32)
    box_deltas = rng.normal(0, 1.0, (num_anchors, 4)).astype(np.float32)
    box_deltas[5, 2] = 40.0  # past the exp clamp
    box_deltas[6, 0] = np.nan
    box_deltas[7, 3] = -np.inf
    return priors, cls_logits, box_deltas, rng.normal(0, 0.5, (num_anchors, 4)).astype(
        np.float32), rng.normal(0, 1, (num_anchors, 1)).astype(np.float32)


WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def assert_close_with_nans(actual, expected):
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=2e-6, atol=1e-4)


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.4])
def test_sigmoid_decoding_is_numpy_s_to_a_few_ulps(threshold):
    priors, cls_logits, box_deltas, _, conf = head_outputs(1, 2000, 6)
    for conf_logits in (None, conf):
        outputs = {"cls_logits": cls_logits, "box_deltas": box_deltas}
        if conf_logits is not None:
            outputs["conf_logits"] = conf_logits
        rows, boxes, scores = decode_head_candidates("retinanet", outputs, priors, WEIGHTS,
                                                     min_score=threshold)
        rows = np.arange(2000) if rows is None else rows
        expected_scores = sigmoid(cls_logits[rows])
        if conf_logits is not None:
            expected_scores = expected_scores * sigmoid(conf_logits[rows])
        np.testing.assert_allclose(scores, expected_scores, rtol=2e-6, atol=1e-30)
        assert_close_with_nans(boxes, decode(box_deltas[rows], priors[rows], WEIGHTS))


@pytest.mark.parametrize("family", ["ssd", "passd"])
@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.4])
def test_softmax_decoding_is_numpy_s_to_a_few_ulps(family, threshold):
    priors, cls_logits, box_deltas, propose, _ = head_outputs(2, 2000, 7)
    outputs = {"cls_logits": cls_logits, "box_deltas": box_deltas}
    moved = priors
    if family == "passd":
        outputs["propose_deltas"] = propose
        moved = xyxy_to_cxcywh(decode(propose, priors, WEIGHTS))
    rows, boxes, scores = decode_head_candidates(family, outputs, priors, WEIGHTS,
                                                 min_score=threshold)
    rows = np.arange(2000) if rows is None else rows
    assert len(rows) > 0
    np.testing.assert_allclose(scores, softmax(cls_logits[rows])[:, 1:], rtol=2e-6,
                               atol=1e-30)
    assert_close_with_nans(boxes, decode(box_deltas[rows], moved[rows], WEIGHTS))


def test_the_kernel_cuts_the_top_k_itself_unless_scores_tie():
    boxes, scores = frame(0, 300, quantized=False)
    settings = (0.05, False, False, 0.45, 0.5, 0.001, 100, 0.5)
    *_, cut = kernels.select_frame(boxes, scores, 30, *settings)
    assert not cut  # distinct scores: numpy's cut is the sorted prefix
    boxes, scores = frame(0, 300)
    *_, cut = kernels.select_frame(boxes, scores, 30, *settings)
    assert cut  # equal scores among the best: numpy's order of them is its own


def test_the_kernels_cut_partitions_and_keeps_ties_just_below_it_out():
    # The kernel finds the best k + 1 by a partition: scores equal to the (k + 1)-th best
    # below it (here 200 copies) are gathered but must not count as a tie of the best k + 1
    # or change which k go on; a tie inside the best k + 1 still hands the cut to numpy.
    boxes, scores = frame(1, 900, quantized=False)
    flat = scores.ravel()
    order = np.argsort(-flat, kind="stable")
    flat[order[30:230]] = flat[order[30]]  # ranks 31..230 all equal the 31st best score
    settings = dict(score_threshold=0.05, iou_threshold=0.45, max_detections=100,
                    pre_nms_top_k=30, nms_mode="hard")
    *_, cut = kernels.select_frame(boxes, scores, 30, 0.05, False, False, 0.45, 0.5, 0.001,
                                   100, 0.5)
    assert not cut
    for a, e in zip(select_detections(boxes, scores, **settings),
                    reference_select(boxes, scores, **settings), strict=True):
        np.testing.assert_array_equal(a, e)
    flat[order[29]] = flat[order[30]]  # now the 30th and 31st best tie
    *_, cut = kernels.select_frame(boxes, scores, 30, 0.05, False, False, 0.45, 0.5, 0.001,
                                   100, 0.5)
    assert cut


def test_frame_detections_is_boxes_to_frame_then_the_visible_boxes():
    from edgedet.preprocess import FrameTransform

    transform = FrameTransform((500, 300), 0.64, 0.64, 0.0, 32.0)
    boxes = np.array([[10, 40, 100, 120], [-5, 20, 600, 500], [10, 0, 50, 30],  # in pad
                      [np.nan, 40, 60, 80], [-0.0, 32, 5, 40]], np.float32)
    scores = np.arange(5, dtype=np.float32) / 10
    classes = np.arange(5, dtype=np.int64)
    out = kernels.frame_detections(boxes, scores, classes, 0.64, 0.64, 0.0, 32.0, 500, 300)
    expected = transform.boxes_to_frame(boxes)
    visible = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert visible.tolist() == [True, True, False, False, True]
    assert out[0].tobytes() == expected[visible].tobytes()  # -0.0 clipped to +0.0 too
    np.testing.assert_array_equal(out[1], scores[visible])
    np.testing.assert_array_equal(out[2], classes[visible])


def test_counts_beyond_int64_mean_no_limit_and_narrow_priors_are_refused():
    boxes, scores = frame(0, 40)
    expected = select_detections(boxes, scores, max_detections=1000, pre_nms_top_k=0)
    huge = select_detections(boxes, scores, max_detections=2**64, pre_nms_top_k=2**70)
    for a, e in zip(huge, expected, strict=True):
        np.testing.assert_array_equal(a, e)
    outputs = {"cls_logits": np.zeros((5, 3), np.float32),
               "box_deltas": np.zeros((5, 4), np.float32)}
    # (The kernels do not check bounds: these would be read past their ends.)
    with pytest.raises(ValueError, match=r"priors_cxcywh must have shape \(A, 4\)"):
        decode_head_candidates("retinanet", outputs, np.ones((5, 2), np.float32), WEIGHTS)
    with pytest.raises(ValueError, match="box_coder_weights must be 4 numbers"):
        decode_head_candidates("ssd", outputs, np.ones((5, 4), np.float32), (1.0, 1.0))


def _fresh_interpreter(script: str) -> str:
    """``script``'s stdout, run by a new Python in the repository (it must exit 0)."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_kernels_compile_where_no_cache_folder_is_writable():
    # numba refuses cache=True at decoration when no cache folder is writable (a read-only
    # install with a read-only home), which made `import edgedet` fail there.
    out = _fresh_interpreter("import numba.core.caching as caching\n"
                             "caching.CacheImpl._locator_classes = []  # no writable folder\n"
                             "from edgedet import kernels\n"
                             "kernels.warm_up()\n"
                             "print(type(kernels.select_frame._cache).__name__)\n")
    assert out.strip() == "NullCache"  # compiled, not cached


def test_import_edgedet_leaves_numba_for_the_first_kernel():
    # numba is about half of `import edgedet`: the command line's --help and the commands
    # that decode nothing do not load it; the first kernel access does.
    out = _fresh_interpreter("import sys\n"
                             "import edgedet\n"
                             "from edgedet import decoder, postprocess, preprocess, kernels\n"
                             "print('numba' in sys.modules)\n"
                             "kernels.select_frame\n"
                             "print('numba' in sys.modules)\n"
                             "print(kernels.select_frame is kernels.select.select_frame)\n")
    assert out.split() == ["False", "True", "True"]
    assert "select_frame" in dir(kernels)
    with pytest.raises(AttributeError, match="no attribute 'no_such_kernel'"):
        kernels.no_such_kernel  # noqa: B018
