"""``edgedet.attend_tail``: the manifest section is checked, the tail sums every level into the
head outputs' order on any thread count, and bad model outputs are named."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.artifact import ManifestError, validate_manifest
from edgedet.attend_tail import (
    AttendTail,
    AttendTailSpec,
    PointsFromDeltas,
    TailLevel,
    attend_tail_for,
)
from edgedet.kernels.tap_sum import tap_sum
from tests.edgedet.test_artifact import _manifest

FEATURE_SIZES = ((4, 4),)  # test_artifact's manifest: one 4x4 level, one anchor per cell


def _section(**changes: object) -> dict:
    section = {"anchors": 1, "taps": 9, "outputs": [["cls_logits", 3], ["box_deltas", 4]],
               "bias": [[0.0] * 7],
               "levels": [{"table": "attend_table_0", "points": "attend_points_0",
                           "table_scale": None, "table_zero_point": None}]}
    return {**section, **changes}


def test_a_valid_section_passes_and_round_trips() -> None:
    validate_manifest({**_manifest({"model.onnx": "0" * 64}), "attend_tail": _section()})
    spec = AttendTailSpec.from_section(_section(), FEATURE_SIZES)
    assert spec.input_names == ("attend_table_0", "attend_points_0")
    assert AttendTailSpec.from_section(spec.to_dict(), FEATURE_SIZES).to_dict() == spec.to_dict()


LEVEL = {"table": "attend_table_0", "points": "attend_points_0"}


@pytest.mark.parametrize(("section", "message"), [
    ([1], "must be an object"),
    ({"anchors": 1}, "lacks"),
    (_section(anchors=0), "positive whole numbers"),
    (_section(outputs=[["cls_logits", 3], ["box_deltas", 4], ["x", 1]]), "one or two"),
    (_section(bias=[[0.0] * 6]), "1 rows of 7 finite numbers"),
    (_section(bias=[[float("nan")] * 7]), "rows of numbers"),
    (_section(bias=[["1.0"] * 7]), "rows of numbers"),
    (_section(levels=[]), r"one level per anchor_spec feature size \(1\), got 0"),
    (_section(levels=[{"table": "t"}]), r"levels\[0\] must name its table and points"),
    (_section(levels=[{**LEVEL, "table_scale": 0.1}]), "both or neither"),
    (_section(levels=[{**LEVEL, "table_scale": 0.1, "table_zero_point": 300}]), "0..255"),
    (_section(levels=[{**LEVEL, "table_scale": 0.1, "table_zero_point": 98.5}]),
     "whole number"),
    (_section(levels=[{"table": "x", "points": "x"}]), "name a model output twice"),
    (_section(outputs=[["cls_logits", 3], ["cls_logits", 4]]), "names an output twice"),
    (_section(anchors=2, bias=[[0.0] * 7] * 2), "makes 32 rows but anchor_spec generates 16"),
    (_section(outputs=[["cls_logits", 2], ["box_deltas", 5]], bias=[[0.0] * 7]),
     "of 2 values, but outputs lists it with 3"),
    (_section(outputs=[["scores", 3], ["box_deltas", 4]]), "no such output"),
])
def test_a_bad_section_is_named(section: object, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        validate_manifest({**_manifest({"model.onnx": "0" * 64}), "attend_tail": section})


def _two_level_case(batch: int, quantized: bool, flat_tables: bool = False):
    """Two levels' tables ``(N, H, W, A*T*O)`` (``flat_tables``: ``(N, H*W, A*T*O)``, as
    artifacts built before commit 90e8237 give them) and points."""
    rng = np.random.default_rng(4)
    sizes, anchors, taps, width = ((3, 5), (2, 2)), 2, 9, 6
    levels, raw = [], {}
    for index, (h, w) in enumerate(sizes):
        table_name, points_name = f"attend_table_{index}", f"attend_points_{index}"
        scale, zero = (0.02 * (index + 1), 100.0 + index) if quantized else (None, None)
        levels.append(TailLevel(table_name, points_name, h, w, scale, zero))
        shape = (batch, *((h * w,) if flat_tables else (h, w)), anchors * taps * width)
        raw[table_name] = (rng.integers(0, 256, shape).astype(np.uint8) if quantized
                           else rng.standard_normal(shape).astype(np.float32))
        raw[points_name] = rng.uniform(-2, 6, (batch, anchors, taps, h * w, 2)).astype(
            np.float32)
    raw["objectness_logits"] = np.ones((batch, 7, 2), np.float32)  # passes through
    bias = rng.standard_normal((anchors, width)).astype(np.float32)
    spec = AttendTailSpec(anchors, taps, (("cls_logits", 4), ("box_deltas", 2)), bias,
                          tuple(levels))
    return spec, raw


@pytest.mark.parametrize("quantized", [False, True])
def test_every_level_and_image_is_summed_into_the_head_outputs_order(quantized: bool) -> None:
    spec, raw = _two_level_case(batch=2, quantized=quantized)
    outputs = [AttendTail(spec, threads)(raw) for threads in (1, 2, 5)]
    for out in outputs[1:]:  # slicing the positions over threads changes no sum
        for name in ("cls_logits", "box_deltas"):
            np.testing.assert_array_equal(out[name], outputs[0][name])
    out = outputs[0]
    assert set(out) == {"objectness_logits", "cls_logits", "box_deltas"}
    assert out["cls_logits"].shape == (2, (15 + 4) * 2, 4)
    for n in range(2):
        parts = []
        for level in spec.levels:
            table = raw[level.table][n].reshape(level.height * level.width, 2, 9, 6)
            parts.append(tap_sum(table, raw[level.points][n], level.height, level.width,
                                 level.table_scale or 1.0, level.table_zero_point or 0.0,
                                 spec.bias).reshape(-1, 6))  # (p, g) rows: p*G + g
        expected = np.concatenate(parts)
        np.testing.assert_allclose(out["cls_logits"][n], expected[:, :4], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out["box_deltas"][n], expected[:, 4:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("quantized", [False, True])
def test_flat_tables_of_older_artifacts_give_the_same_sums(quantized: bool) -> None:
    spec, raw = _two_level_case(batch=2, quantized=quantized)
    flat = {name: (value.reshape(value.shape[0], -1, value.shape[-1])
                   if name.startswith("attend_table_") else value) for name, value in raw.items()}
    assert flat["attend_table_0"].shape == (2, 15, 108)
    tail = AttendTail(spec, 2)
    expected, got = tail(raw), tail(flat)
    for name in ("cls_logits", "box_deltas"):
        np.testing.assert_array_equal(got[name], expected[name])
    tail.close()


def test_bad_model_outputs_are_named() -> None:
    spec, raw = _two_level_case(batch=1, quantized=False)
    tail = AttendTail(spec, 2)
    with pytest.raises(ValueError, match=r"'attend_table_1' is float64 .* reads \(N, 2, 2, 108\) "
                                         r"\(or \(N, 4, 108\)\) float32"):
        tail({**raw, "attend_table_1": raw["attend_table_1"].astype(np.float64)})
    # Level 0 is 3 x 5: its table with H and W swapped is refused, not read as another map.
    with pytest.raises(ValueError, match=r"'attend_table_0' is float32 \(1, 5, 3, 108\)"):
        tail({**raw, "attend_table_0": raw["attend_table_0"].reshape(1, 5, 3, 108)})
    with pytest.raises(ValueError, match="'attend_points_0' is float32 \\(1, 2, 9, 14, 2\\)"):
        tail({**raw, "attend_points_0": raw["attend_points_0"][:, :, :, :14]})
    tail.close()
    tail.close()  # twice: nothing more


def test_a_tail_only_for_a_model_that_hands_over_tables() -> None:
    manifest = {**_manifest({"model.onnx": "0" * 64}), "attend_tail": _section()}
    tail = attend_tail_for(manifest, ("attend_table_0", "attend_points_0"), threads=2)
    assert tail is not None and tail.threads == 2
    # A model computing the head outputs itself (the accuracy check's PyTorch reference).
    assert attend_tail_for(manifest, ("cls_logits", "box_deltas")) is None
    assert attend_tail_for(_manifest({}), ("attend_table_0", "attend_points_0")) is None


def _with_second_tail(**changes: object) -> dict:
    """test_artifact's manifest with a 2x model (8x8 cells) whose tail is ``changes``."""
    manifest = {**_manifest({"model.onnx": "0" * 64, "model_2x.onnx": "0" * 64}),
                "attend_tail": _section()}
    spec_2x = {**manifest["anchor_spec"], "image_size": [64, 64], "feature_sizes": [[8, 8]]}
    manifest["preprocess"] = {**manifest["preprocess"]}
    manifest["double_scale"] = {"input_size": [64, 64], "anchor_spec": spec_2x,
                                "files": ["model_2x.onnx"], "accuracy": None,
                                "attend_tail": _section(**changes)}
    return manifest


def test_the_second_scales_tail_is_checked_against_its_own_levels_and_the_first() -> None:
    validate_manifest(_with_second_tail())
    with pytest.raises(ManifestError, match=r"double_scale\.attend_tail makes 'scores'"):
        validate_manifest(_with_second_tail(outputs=[["scores", 3], ["box_deltas", 4]]))
    with pytest.raises(ManifestError, match=r"double_scale\.attend_tail makes 128 rows"):
        validate_manifest(_with_second_tail(anchors=2, bias=[[0.0] * 7] * 2))
    with pytest.raises(ManifestError, match="the 1x section's anchors, taps, outputs, bias"):
        validate_manifest(_with_second_tail(bias=[[1.0] * 7]))
    # A 2x section that computes its points where the 1x one reads them (one head).
    with_points = _with_propose(_with_second_tail(points=POINTS, levels=[COMPUTED_LEVEL]))
    with pytest.raises(ManifestError, match="outputs, bias and points block"):
        validate_manifest(with_points)
    no_first = _with_second_tail()
    del no_first["attend_tail"]
    with pytest.raises(ManifestError, match="needs the 1x model's attend_tail"):
        validate_manifest(no_first)


def test_close_racing_calls_and_calls_after_close_work() -> None:
    import threading

    spec, raw = _two_level_case(batch=1, quantized=True)
    tail = AttendTail(spec, 3)
    expected = tail(raw)["cls_logits"]
    errors: list[BaseException] = []

    def call() -> None:
        try:
            for _ in range(30):
                np.testing.assert_array_equal(tail(raw)["cls_logits"], expected)
        except BaseException as error:  # reported below
            errors.append(error)

    workers = [threading.Thread(target=call) for _ in range(3)]
    for worker in workers:
        worker.start()
    for _ in range(30):
        tail.close()
    for worker in workers:
        worker.join()
    assert not errors, errors
    tail.close()
    np.testing.assert_array_equal(tail(raw)["cls_logits"], expected)  # after close: again


def test_a_forked_child_runs_the_tail_on_threads_of_its_own() -> None:
    import multiprocessing

    spec, raw = _two_level_case(batch=1, quantized=False)
    tail = AttendTail(spec, 2)
    expected = tail(raw)["cls_logits"]  # the parent's pool is started

    def child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
        queue.put(tail(raw)["cls_logits"])

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    process.join(timeout=60)
    hung = process.is_alive()
    if hung:
        process.kill()
    assert not hung, "the tail hung in a forked child"
    np.testing.assert_array_equal(queue.get(timeout=5), expected)
    tail.close()


def test_the_zoo_passd_runs_its_tail_in_detector_and_closes_it(monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    from edgedet import Detector
    from edgedet.anchors import GridAnchorSpec

    generated = []
    generate = GridAnchorSpec.generate
    monkeypatch.setattr(GridAnchorSpec, "generate",
                        lambda self: generated.append(1) or generate(self))
    detector = Detector("passd_mobilenet_int8", backend="onnxruntime", threads=2)
    tail = detector._attend_tail
    assert tail is not None and tail.threads == 2
    assert len(generated) == 1  # the priors once, for the decoder and the tail's points
    assert tail._priors is not None
    np.testing.assert_array_equal(tail._priors, detector.decoder.priors_cxcywh)
    # Its points come from the propose deltas (the points block), not from an output.
    names = set(detector.backend.output_names)
    assert {"attend_table_0", "propose_deltas"} <= names
    assert not any(name.startswith("attend_points_") for name in names)
    outputs = detector.run_model(np.zeros((1, 3, 320, 320), np.float32))
    assert "cls_logits" in outputs and "attend_table_0" not in outputs
    assert "propose_deltas" in outputs  # (for the decoder)
    assert tail._pool is not None  # started by the call
    detector.close()
    assert tail._pool is None


def test_a_manifest_that_misreads_its_models_tables_is_refused_at_load(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import json
    import shutil

    from edgedet import Detector
    from edgedet.zoo import resolve_model

    copy = tmp_path / "passd"
    shutil.copytree(resolve_model("passd_mobilenet_int8"), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    level = manifest["attend_tail"]["levels"][0]
    level["table_scale"] = level["table_zero_point"] = None  # reads a uint8 table as float
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="'attend_table_0' is uint8, but the manifest's "
                                            "attend_tail reads it as float32"):
        Detector(copy, backend="onnxruntime")


def test_a_2x_model_handing_over_another_table_type_is_refused_at_load() -> None:
    from types import SimpleNamespace

    from edgedet.double_scale import DoubleScaleError, SecondScale

    # Two levels at both scales (double-scale testing pairs them), each with its table.
    levels = [{"table": f"attend_table_{i}", "points": f"attend_points_{i}",
               "table_scale": None, "table_zero_point": None} for i in range(2)]
    manifest = _with_second_tail(levels=levels)
    manifest["attend_tail"] = _section(levels=levels)
    spec = {**manifest["anchor_spec"], "strides": [8, 16], "base_sizes": [32.0, 64.0]}
    manifest["anchor_spec"] = {**spec, "feature_sizes": [[4, 4], [2, 2]]}
    manifest["double_scale"]["anchor_spec"] = {**spec, "image_size": [64, 64],
                                               "feature_sizes": [[8, 8], [4, 4]]}
    names = tuple(n for level in levels for n in (level["table"], level["points"]))
    backend = SimpleNamespace(input_shape=(1, 3, 64, 64), output_names=names,
                              model_path="model_2x.onnx",
                              output_dtypes=dict.fromkeys(names, "float32"))
    second = SecondScale.from_manifest(manifest, backend, threads=1)  # float tables: loads
    assert second.attend_tail is not None
    second.attend_tail.close()
    backend.output_dtypes = {**backend.output_dtypes, "attend_table_1": "uint8"}
    with pytest.raises(DoubleScaleError, match=r"model_2x\.onnx \(the 2x model\): model output "
                                               r"'attend_table_1' is uint8"):
        SecondScale.from_manifest(manifest, backend, threads=1)


# The points block: the tail computes the sampling points from the propose deltas.

POINTS = {"from": "propose_deltas", "kernel_size": 3, "strides": [8],
          "box_coder_weights": [10, 10, 5, 5]}
COMPUTED_LEVEL = {"table": "attend_table_0", "table_scale": None, "table_zero_point": None}


def _with_propose(manifest: dict) -> dict:
    return {**manifest, "outputs": [*manifest["outputs"], {
        "name": "propose_deltas", "shape": [1, 16, 4], "meaning": "deltas"}]}


def test_a_points_block_passes_and_round_trips() -> None:
    section = _section(points=POINTS, levels=[COMPUTED_LEVEL])
    validate_manifest({**_with_propose(_manifest({"model.onnx": "0" * 64})),
                       "attend_tail": section})
    spec = AttendTailSpec.from_section(section, FEATURE_SIZES)
    assert spec.input_names == ("attend_table_0",)  # the deltas stay, for the decoder
    assert spec.required_names == ("attend_table_0", "propose_deltas")
    assert AttendTailSpec.from_section(spec.to_dict(), FEATURE_SIZES).to_dict() == spec.to_dict()


@pytest.mark.parametrize(("changes", "message"), [
    ({"points": {**POINTS, "kernel_size": 2}}, "square root of taps"),
    ({"points": {**POINTS, "strides": [8, 16]}}, "must be 1 positive numbers"),
    ({"points": {**POINTS, "strides": [16]}}, r"strides \[16.0\] are not anchor_spec's"),
    ({"points": {**POINTS, "box_coder_weights": [1, 1, 1]}}, "4 positive numbers"),
    ({"points": {**POINTS, "from": "objectness_logits"}}, "4 values per anchor"),
    ({"points": {**POINTS, "from": "box_deltas"}}, "not one the tail makes"),
    ({"points": {**POINTS, "box_coder_weights": [1, 1, 1, 1]}},
     r"box_coder_weights \[1.0, 1.0, 1.0, 1.0\] are not the manifest's"),
    ({"points": {"kernel_size": 3}}, "must name the output"),
    ({"points": POINTS, "levels": [LEVEL]}, "the section's points block computes"),
    ({"levels": [COMPUTED_LEVEL]}, "must name its table and points"),
])
def test_a_bad_points_block_is_named(changes: dict, message: str) -> None:
    manifest = _with_propose(_manifest({"model.onnx": "0" * 64}))
    manifest["outputs"].append({"name": "objectness_logits", "shape": [1, 16, 2],
                                "meaning": "logits"})
    section = _section(**{"levels": [COMPUTED_LEVEL], **changes})
    with pytest.raises(ManifestError, match=message):
        validate_manifest({**manifest, "attend_tail": section})


def _training_points(deltas: np.ndarray, priors: np.ndarray, stride: float, groups: int,
                     height: int, width: int) -> np.ndarray:
    """The exported graph's points, ``(G, T, H*W, 2)``: PyTorch's decode_cxcywh and
    planar_sampling_points on the same values."""
    import torch

    from edgedet.models.box_coder import decode_cxcywh
    from quantize.rewrites.pa_head import planar_sampling_points

    boxes = decode_cxcywh(torch.from_numpy(deltas), torch.from_numpy(priors), (10, 10, 5, 5))
    points = planar_sampling_points(boxes.reshape(1, height, width, groups, 4), stride)
    return points.reshape(groups, 9, height * width, 2).numpy()


def test_computed_points_are_the_graphs_and_sum_like_given_ones() -> None:
    # Two levels, two images: the SDK's points from the deltas against the points PyTorch's
    # export computes (numba's float32 exp against PyTorch's: an ulp), and the tail's sums
    # against a tail handed those points.
    rng = np.random.default_rng(9)
    spec, raw = _two_level_case(batch=2, quantized=True)
    sizes, strides, groups = [(lv.height, lv.width) for lv in spec.levels], (8.0, 16.0), 2
    rows = sum(h * w for h, w in sizes) * groups
    priors = np.abs(rng.normal(20, 8, (rows, 4))).astype(np.float32)
    deltas = rng.normal(0, 1, (2, rows, 4)).astype(np.float32)
    deltas[0, 0, 2] = 50.0  # past the clip of exp's argument
    given = dict(raw)
    first = 0
    for level, (h, w), stride in zip(spec.levels, sizes, strides, strict=True):
        given[level.points] = np.stack([_training_points(
            deltas[n, first:first + h * w * groups], priors[first:first + h * w * groups],
            stride, groups, h, w) for n in range(2)])
        first += h * w * groups
    computed_spec = AttendTailSpec(
        spec.anchors, spec.taps, spec.outputs, spec.bias,
        tuple(TailLevel(lv.table, None, lv.height, lv.width, lv.table_scale,
                        lv.table_zero_point) for lv in spec.levels),
        PointsFromDeltas("propose_deltas", 3, strides, (10.0, 10.0, 5.0, 5.0)))
    computed = AttendTail(computed_spec, 2, priors)
    raw_computed = {k: v for k, v in raw.items() if not k.startswith("attend_points_")}
    raw_computed["propose_deltas"] = deltas
    for points, level in zip(computed.sampling_points(raw_computed), spec.levels, strict=True):
        np.testing.assert_allclose(points, given[level.points], rtol=4e-7, atol=1e-6)
    ours, theirs = computed(raw_computed), AttendTail(spec, 2)(given)
    assert np.array_equal(ours["propose_deltas"], deltas)  # it stays, for the decoder
    for name in ("cls_logits", "box_deltas"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"give priors_cxcywh \(38, 4\), got None"):
        AttendTail(computed_spec, 1)
    with pytest.raises(ValueError, match=r"'propose_deltas' is float32 \(2, 37, 4\)"):
        computed({**raw_computed, "propose_deltas": deltas[:, :37]})


def test_computed_points_equal_pytorchs_to_the_bit_where_exp_is_exact() -> None:
    # Size deltas of 0 (exp(0) = 1 in any exp): then every other operation must be the
    # graph's own, in its order, for the points to match bit for bit; and a NaN delta gives
    # NaN points (the tap sum then reads nothing: the bias).
    from edgedet.kernels import tail_points

    rng = np.random.default_rng(11)
    height, width, groups, stride = 3, 4, 2, 16.0
    rows = height * width * groups
    priors = np.abs(rng.normal(40, 15, (rows, 4))).astype(np.float32)
    deltas = rng.normal(0, 2, (rows, 4)).astype(np.float32)
    deltas[:, 2:] = 0.0
    offsets = np.array([[-1, 0, 1] * 3, [-1] * 3 + [0] * 3 + [1] * 3], np.float32)
    points = np.empty((groups, 9, height * width, 2), np.float32)
    tail_points(deltas, priors, np.array([10, 10, 5, 5], np.float32), np.float32(stride),
                np.float32(stride * 3), offsets, 0, 0, height * width, points)
    np.testing.assert_array_equal(
        points, _training_points(deltas, priors, stride, groups, height, width))
    deltas[5, 0] = np.nan  # position 2, anchor 1
    tail_points(deltas, priors, np.array([10, 10, 5, 5], np.float32), np.float32(stride),
                np.float32(stride * 3), offsets, 0, 0, height * width, points)
    assert np.isnan(points[1, :, 2, 0]).all() and not np.isnan(points[0, :, 2]).any()


def test_a_points_block_is_format_version_3_where_it_is_written(tmp_path) -> None:
    """An edgedet that reads version 2 looks for per-level points outputs: a manifest whose
    tail (the 1x model's or the 2x model's) computes its points says version 3, so that such
    an edgedet refuses it as newer than itself; everything else keeps its older version."""
    from edgedet.artifact import Artifact, format_version_of, load_manifest
    from edgedet.artifact_writer import write_artifact

    plain = _manifest({"model.onnx": "0" * 64})
    linear = {**plain, "preprocess": {**plain["preprocess"], "interpolation": "linear"}}
    computed = {**_with_propose(plain), "attend_tail": _section(points=POINTS,
                                                                  levels=[COMPUTED_LEVEL])}
    assert format_version_of(plain) == 1 and format_version_of(linear) == 2
    assert format_version_of({**plain, "attend_tail": _section()}) == 1  # points outputs
    assert format_version_of(computed) == 3
    second_only = _with_second_tail()
    second_only["double_scale"]["attend_tail"] = _section(points=POINTS)
    assert format_version_of(second_only) == 3
    # The writers set it from the manifest as written (make_manifest saw no tail).
    source = tmp_path / "model.onnx"
    source.write_bytes(b"bytes")
    staged = Artifact.stage(tmp_path / "staged", {"model.onnx": source},
                            {**computed, "format_version": 1})
    assert staged.manifest["format_version"] == 3
    out = write_artifact(tmp_path / "art", {"model.onnx": source},
                         {**computed, "files": {}, "format_version": 2})
    assert load_manifest(out)["format_version"] == 3
