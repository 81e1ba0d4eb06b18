"""The per-layer sensitivity ranking on graphs where the answer is known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantize.sensitivity import fake_quantize_weight, rank_layers

HUGE = 1000.0


def _conv(name: str, source: str, weight: np.ndarray) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    return (helper.make_node("Conv", [source, f"{name}.w"], [f"{name}.out"], name=name),
            numpy_helper.from_array(weight.astype(np.float32), f"{name}.w"))


def write_chain(path: Path) -> Path:
    """``x -> conv1 -> Relu -> conv2 -> Relu -> conv3 -> y`` (1x1 convs). Channel 0 of conv1's
    output is ``HUGE`` times the others and conv2 divides it back: the same function, but
    conv2's input (conv1's output) spans ``HUGE`` times the range of its other channels."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 3, 1, 1))
    w1[0] = np.abs(w1[0]) * HUGE  # channel 0 stays positive through the ReLU: always huge
    w2 = rng.normal(size=(4, 4, 1, 1))
    w2[:, 0] /= HUGE
    w3 = rng.normal(size=(2, 4, 1, 1))
    nodes, weights = zip(_conv("conv1", "x", w1), _conv("conv2", "r1", w2),
                         _conv("conv3", "r2", w3), strict=True)
    graph = helper.make_graph(
        [nodes[0], helper.make_node("Relu", ["conv1.out"], ["r1"], name="relu1"),
         nodes[1], helper.make_node("Relu", ["conv2.out"], ["r2"], name="relu2"), nodes[2]],
        "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("conv3.out", TensorProto.FLOAT, [1, 2, 8, 8])],
        initializer=list(weights))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def chain(tmp_path) -> tuple[Path, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    images = [np.abs(rng.normal(size=(1, 3, 8, 8))).astype(np.float32) for _ in range(4)]
    return write_chain(tmp_path / "chain.onnx"), images


def test_the_layer_reading_the_huge_activation_ranks_first(chain):
    path, images = chain
    ranking = rank_layers(path, images, progress=False)
    assert ranking[0].node == "conv2"
    assert ranking[0].sqnr_db < 10 < ranking[1].sqnr_db  # the others barely move the output
    assert ranking[0].unit == ("conv2", "relu2") and ranking[0].worst_output == "conv3.out"
    assert ranking[0].cosine < ranking[-1].cosine <= 1.0 + 1e-9


def test_rounding_outputs_also_blames_the_layer_producing_it(chain):
    path, images = chain
    ranking = rank_layers(path, images, quantize_outputs=True, progress=False)
    assert {r.node for r in ranking[:2]} == {"conv1", "conv2"}
    assert ranking[1].sqnr_db < 10 < ranking[2].sqnr_db


def test_layers_already_in_float_are_not_ranked(chain):
    path, images = chain
    ranking = rank_layers(path, images, kept_float=["conv2"], progress=False)
    assert {r.node for r in ranking} == {"conv1", "conv3"}
    with pytest.raises(ValueError, match="at least one calibration image"):
        rank_layers(path, [], progress=False)


def test_fake_quantized_weights_by_hand():
    weight = np.array([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [2.0, 1.0, -2.0]], np.float32)
    # Row 0: scale 1/127; -0.5 * 127 = -63.5 rounds to even (-64); 0.25 * 127 = 31.75 -> 32.
    expected = np.array([[1.0, -64 / 127, 32 / 127], [0, 0, 0], [2.0, 2 * 64 / 127, -2.0]],
                        np.float32)
    np.testing.assert_allclose(fake_quantize_weight(weight, axis=0), expected, rtol=1e-6)
    # Per column (a MatMul's constant right operand): the same numbers transposed.
    np.testing.assert_allclose(fake_quantize_weight(weight.T, axis=-1), expected.T, rtol=1e-6)


def test_detection_weighting_counts_errors_on_confident_anchors_only():
    from quantize.sensitivity import DetectionWeighting, _compare

    scores = np.array([0.9, 0.0, 0.0])  # anchor 0 is a detection, 1 and 2 are background

    def weights(outputs):
        return scores

    weighting = DetectionWeighting(weights, ("cls_logits",))
    names = ["cls_logits", "objectness_logits"]
    reference = [[np.ones((1, 3, 2)), np.ones((1, 3, 1))]]
    on_background = [[np.array([[[1, 1], [1, 1], [5, 5]]], float), np.zeros((1, 3, 1))]]
    on_detection = [[np.array([[[1.5, 1], [1, 1], [1, 1]]], float), np.ones((1, 3, 1))]]
    # Unweighted, the big background error looks worst ...
    assert _compare(reference, on_background, names)[0] < _compare(reference, on_detection,
                                                                   names)[0]
    # ... weighted, only the confident anchor's error counts, on the outputs decoding reads.
    background = _compare(reference, on_background, names, weighting)
    detection = _compare(reference, on_detection, names, weighting)
    assert background[0] > 100 and detection[0] == pytest.approx(10 * np.log10(2 / 0.25))
    assert detection[2] == "cls_logits"


def test_detection_weighting_of_a_checkpoint_decodes_like_the_sdk(tmp_path):
    import torch

    from edgedet.models.checkpoint import build_from_checkpoint
    from quantize.sensitivity import detection_weighting
    from tests.quantize.tiny_checkpoint import INPUT_SIZE, write_tiny_checkpoint

    model, config = build_from_checkpoint(write_tiny_checkpoint(tmp_path / "tiny"))
    weighting = detection_weighting(config)
    with torch.no_grad():
        raw = model.forward_export(torch.zeros(1, 3, INPUT_SIZE[1], INPUT_SIZE[0]))
    outputs = dict(zip(config["output_names"], (t.numpy() for t in raw), strict=True))
    weights = weighting.anchor_weights(outputs)
    assert weights.shape == (outputs["cls_logits"].shape[1],)
    assert np.all((weights >= 0) & (weights <= 1))
    assert set(weighting.outputs) >= {"cls_logits", "box_deltas"}
    assert "objectness_logits" not in weighting.outputs
