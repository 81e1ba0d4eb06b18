"""Per-layer INT8 sensitivity: which quantized layer harms the detector's outputs most.

One layer at a time, on the fp32 ONNX export: the layer's weights are rounded to INT8
(symmetric, per output channel) and its activation input to INT8 (per tensor, asymmetric
uint8, min/max of the calibration images), plus, for targets whose runtime also rounds a
quantized op's output (ONNX Runtime's QDQ), the outputs of the layer and of its element-wise
tail (``quantize.int8_scope.layer_units``). Everything else stays fp32, and the graph outputs
(raw logits and box deltas) are compared with the fp32 model's on the same images:

``sqnr_db``  signal-to-quantization-noise ratio of the worst-hit output, in dB (sum over the
             images of ``ref**2`` over sum of ``(ref - out)**2``); lower is more harmful.
``cosine``   mean cosine similarity of the worst-hit output per image.

With a detector's decoding (``detection_weighting``) both are weighted per anchor by its best
class score (the larger of the fp32 and the INT8 one) and only the outputs the decoding reads
are compared: an error on the thousands of background anchors, or on a training-only output
such as PASSD's objectness, never becomes a detection, while one on a confident anchor moves
a box or a score the AP sees. Unweighted, the ranking of the zoo PASSD put stem convs first
whose return to float did not move its AP.

This is the simulated scheme of every target (weights per channel, activations per tensor),
not any one runtime's kernels: it ranks the candidates, and the accuracy-controlled loop
(``quantize.accuracy_control``) confirms each step with the target's real INT8 artifact and AP.
The fake quantization runs in float (weights are pre-rounded, activations go through
``QuantizeLinear`` / ``DequantizeLinear``), so ONNX Runtime executes it without integer
kernels and the only difference from fp32 is the rounding of this one layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from quantize.int8_scope import layer_units

# Images the ranking runs on by default (the first calibration images): the SQNR of a layer
# is a property of its activation statistics, which a few images already show.
DEFAULT_IMAGES = 16
_TINY = 1e-30
# Raw outputs -> per-anchor weight ``(A,)``.
AnchorWeights = Callable[[Mapping[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class DetectionWeighting:
    """How the comparison sees a detector: per-anchor weights of one image's raw outputs and
    the outputs that count."""

    anchor_weights: AnchorWeights
    outputs: tuple[str, ...]


def detection_weighting(config: Mapping[str, Any]) -> DetectionWeighting:
    """The weighting of a checkpoint config or manifest (``head_family``, ``anchor_spec``,
    ``box_coder_weights``): each anchor weighs its best class score after the SDK's own
    decoding (``edgedet.head_decoding``)."""
    from edgedet.anchors import anchor_spec_from_dict
    from edgedet.head_decoding import DECODED_OUTPUTS, decode_head_outputs

    family = str(config["head_family"])
    priors = anchor_spec_from_dict(config["anchor_spec"]).generate()
    box_weights = tuple(float(w) for w in config["box_coder_weights"])

    def anchor_weights(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        _, scores = decode_head_outputs(family, outputs, priors, box_weights)  # type: ignore[arg-type]
        return scores.max(axis=1)

    return DetectionWeighting(anchor_weights, DECODED_OUTPUTS[family])


@dataclass(frozen=True)
class LayerSensitivity:
    """The harm of one weight layer in INT8 (everything else fp32).

    Attributes:
        node: ONNX node name of the weight layer.
        op_type: its ONNX op type.
        unit: the node names that go back to float with it (``int8_scope.layer_units``).
        sqnr_db: output SQNR of the worst-hit graph output, dB (lower: more harmful).
        cosine: mean per-image cosine similarity of the worst-hit output.
        worst_output: the graph output with the lowest SQNR.
    """

    node: str
    op_type: str
    unit: tuple[str, ...]
    sqnr_db: float
    cosine: float
    worst_output: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unit": list(self.unit)}


def rank_layers(onnx_path: str | Path, images: Sequence[np.ndarray],
                kept_float: Sequence[str] = (), quantize_outputs: bool = False,
                max_images: int = DEFAULT_IMAGES, progress: bool = True,
                weighting: DetectionWeighting | None = None,
                finish: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                ) -> list[LayerSensitivity]:
    """Every weight layer outside ``kept_float``, most harmful first.

    Args:
        onnx_path: the fp32 ONNX detector (``quantize.export_onnx``).
        images: preprocessed calibration inputs, each ``(1, 3, H, W)`` float32; the first
            ``max_images`` are used.
        kept_float: node names already kept in float (the target's scope).
        quantize_outputs: also round the outputs of each layer's unit (the target's runtime
            quantizes op outputs, as ONNX Runtime's QDQ does).
        progress: a progress bar over the layers.
        weighting: compare as a detector (``detection_weighting``); None: every output,
            every element alike.
        finish: what the SDK does to the graph's outputs before decoding (an
            ``edgedet.attend_tail.AttendTail``); the finished outputs are compared.

    Raises:
        ValueError: no images.
    """
    import onnxruntime as ort

    if not images:
        raise ValueError("sensitivity needs at least one calibration image")
    model = onnx.load(str(onnx_path))
    images = [np.ascontiguousarray(x, dtype=np.float32) for x in images[:max_images]]
    input_name = model.graph.input[0].name
    output_names = [o.name for o in model.graph.output]
    units = layer_units(model, kept_float)
    nodes = {n.name: n for n in model.graph.node}
    # Float activations only: constants (weights, Constant outputs) and index tensors never
    # get an activation Q/DQ.
    activations = _float_tensors(model) - _constants(model)
    layer_inputs = {name: [t for t in nodes[name].input if t in activations] for name in units}
    unit_outputs = {name: [t for n in unit for t in nodes[n].output if t in activations]
                    if quantize_outputs else [] for name, unit in units.items()}
    watched = {t for tensors in (*layer_inputs.values(), *unit_outputs.values())
               for t in tensors}
    ranges, reference = _ranges_and_reference(model, sorted(watched), output_names, images,
                                              input_name)
    compared_names = output_names

    def finished(outputs: list[np.ndarray]) -> list[np.ndarray]:
        if finish is None:
            return outputs
        values = finish(dict(zip(output_names, outputs, strict=True)))
        return [values[n] for n in compared_names]

    if finish is not None:
        compared_names = list(finish(dict(zip(output_names, reference[0], strict=True))))
        reference = [finished(r) for r in reference]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    results = []
    for name, unit in tqdm(units.items(), desc="sensitivity", disable=not progress):
        trial = _fake_quantized(model, name, layer_inputs[name], unit_outputs[name], ranges)
        session = ort.InferenceSession(trial.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        outputs = [finished(session.run(output_names, {input_name: x})) for x in images]
        sqnr, cosine, worst = _compare(reference, outputs, compared_names, weighting)
        results.append(LayerSensitivity(name, nodes[name].op_type, tuple(unit), sqnr, cosine,
                                        worst))
    return sorted(results, key=lambda r: (r.sqnr_db, r.cosine))


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 activation tensors (shape inference's types)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name for v in infos if v.type.tensor_type.elem_type == TensorProto.FLOAT}


def _constants(model: onnx.ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _ranges_and_reference(model: onnx.ModelProto, watched: list[str], output_names: list[str],
                          images: Sequence[np.ndarray], input_name: str
                          ) -> tuple[dict[str, tuple[float, float]], list[list[np.ndarray]]]:
    """Min/max of each watched tensor over the images, and the fp32 graph outputs."""
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                              for t in watched if t not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No graph optimisation: fusions could remove the tensors being watched.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in probe.graph.output]
    ranges: dict[str, tuple[float, float]] = {}
    reference = []
    for image in images:
        values = dict(zip(names, session.run(names, {input_name: image}), strict=True))
        reference.append([values[n] for n in output_names])
        for tensor in watched:
            low, high = float(values[tensor].min()), float(values[tensor].max())
            old = ranges.get(tensor, (low, high))
            ranges[tensor] = (min(old[0], low), max(old[1], high))
    return ranges, reference


def fake_quantize_weight(weight: np.ndarray, axis: int) -> np.ndarray:
    """``weight`` rounded to symmetric INT8 with one scale per slice along ``axis``."""
    moved = np.moveaxis(weight.astype(np.float32), axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0)[:, None]
    rounded = np.clip(np.round(flat / scale), -127, 127) * scale
    return np.moveaxis(rounded.reshape(moved.shape), 0, axis).astype(np.float32)


def _uint8_qparams(low: float, high: float) -> tuple[float, int]:
    """Asymmetric uint8 scale and zero point of ``[low, high]`` (widened to hold 0)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0 if high > low else 1.0
    return scale, int(np.clip(round(-low / scale), 0, 255))


def _fake_quantized(model: onnx.ModelProto, name: str, inputs: Sequence[str],
                    outputs: Sequence[str], ranges: dict[str, tuple[float, float]]
                    ) -> onnx.ModelProto:
    """A copy of ``model`` with only the layer ``name`` in INT8: its weights rounded, each of
    its activation ``inputs`` and each of its unit's ``outputs`` through a Q/DQ pair (placed
    right before the layer / right after the producing node, so the graph stays sorted)."""
    trial = copy.deepcopy(model)
    graph = trial.graph
    initializers = {t.name: t for t in graph.initializer}
    rounded_outputs = set(outputs)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name == name:
            for index, tensor in enumerate(node.input):
                axis = _weight_axis(node, index)
                if tensor in initializers and axis is not None:
                    copy_name = f"{tensor}__int8_for_{index}_{name}"
                    graph.initializer.append(numpy_helper.from_array(
                        fake_quantize_weight(numpy_helper.to_array(initializers[tensor]), axis),
                        copy_name))
                    node.input[index] = copy_name  # private: shared weights stay fp32 elsewhere
            for tensor in inputs:
                quantized = _qdq(graph, nodes, tensor, ranges[tensor], f"in_{name}")
                node.input[:] = [quantized if t == tensor else t for t in node.input]
        nodes.append(node)
        for index, tensor in enumerate(node.output):
            if tensor in rounded_outputs:
                raw = f"{tensor}__before_int8"
                node.output[index] = raw
                _qdq(graph, nodes, raw, ranges[tensor], f"out_{tensor}", output_name=tensor)
    del graph.node[:]
    graph.node.extend(nodes)
    return trial


def _weight_axis(node: onnx.NodeProto, index: int) -> int | None:
    """The output-channel axis of input ``index`` when it is the layer's weight, else None."""
    if node.op_type == "MatMul":
        return {0: 0, 1: -1}.get(index)  # (M, K) @ (K, N): rows of A, columns of B
    if index != 1:
        return None
    if node.op_type == "ConvTranspose":
        return 1  # (C_in, C_out / groups, kH, kW)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else -1
    return 0


def _qdq(graph: onnx.GraphProto, new_nodes: list[onnx.NodeProto], tensor: str,
         value_range: tuple[float, float], tag: str, output_name: str | None = None) -> str:
    """Append ``DQ(Q(tensor))`` nodes; returns the dequantized tensor's name."""
    scale, zero_point = _uint8_qparams(*value_range)
    prefix = f"__sens_{tag}_{len(new_nodes)}"
    graph.initializer.extend([
        numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(np.array(zero_point, np.uint8), f"{prefix}_zero"),
    ])
    out = output_name or f"{prefix}_dq"
    new_nodes.append(helper.make_node("QuantizeLinear", [tensor, f"{prefix}_scale",
                                                         f"{prefix}_zero"], [f"{prefix}_q"],
                                      name=f"{prefix}_Q"))
    new_nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale",
                                                           f"{prefix}_zero"], [out],
                                      name=f"{prefix}_DQ"))
    return out


def _compare(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]],
             names: list[str], weighting: DetectionWeighting | None = None
             ) -> tuple[float, float, str]:
    """``(SQNR dB, mean cosine, name)`` of the graph output that moved most (weighted per
    anchor when ``weighting`` is given)."""
    compared = [k for k, n in enumerate(names) if weighting is None or n in weighting.outputs]
    weights = [None] * len(reference)
    if weighting is not None:
        weights = [np.maximum(weighting.anchor_weights(dict(zip(names, r, strict=True))),
                              weighting.anchor_weights(dict(zip(names, o, strict=True))))
                   for r, o in zip(reference, outputs, strict=True)]
    worst = (np.inf, 1.0, names[compared[0]])
    for k in compared:
        signal = noise = 0.0
        cosines = []
        for r, o, w in zip(reference, outputs, weights, strict=True):
            a = r[k].astype(np.float64).reshape(len(w), -1) if w is not None else \
                r[k].astype(np.float64).reshape(1, -1)
            b = o[k].astype(np.float64).reshape(a.shape)
            scale = np.sqrt(w)[:, None] if w is not None else 1.0
            a, b = a * scale, b * scale
            signal += float(np.square(a).sum())
            noise += float(np.square(a - b).sum())
            cosines.append(float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b),
                                                     _TINY)))
        sqnr = 10.0 * np.log10(max(signal, _TINY) / max(noise, _TINY))
        if sqnr < worst[0]:
            worst = (float(sqnr), float(np.mean(cosines)), names[k])
    return worst
