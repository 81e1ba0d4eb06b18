"""INT8 post-training quantization for ONNX Runtime: a QDQ ONNX model.

Uses ``onnxruntime.quantization.quantize_static``: QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantized op, which ONNX Runtime fuses into integer kernels
and TensorRT reads as explicit INT8), weights int8 per output channel (symmetric). Where the
Q/DQ nodes go and their activation type is a ``QdqScheme``: ``ONNXRUNTIME_CPU`` (uint8
activations per tensor, asymmetric, min/max calibrated; the cpu target) or ``TENSORRT``
(TensorRT's explicit-quantization rules; the jetson target). It was chosen over NNCF's ONNX
backend because it is ONNX Runtime's own quantizer: on the small PASSD test model both gave
the same latency, ORT's raw outputs were slightly closer to fp32 (cosine 0.996-0.998 vs
0.995-0.997) and calibration was faster. Nodes named in ``nodes_to_exclude`` (see
``quantize.int8_scope``) compute in float; they may read the dequantized INT8 output of a
quantized conv before them (ONNX Runtime quantizes a conv's output so that it runs as one
integer kernel), but what they compute is never rounded to INT8.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edgedet._io import write_bytes_atomic
from edgedet.artifact import INPUT_NAME
from quantize.pad_input_channels import CHANNEL_MULTIPLE, pad_input_channels

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class QdqScheme:
    """How ``quantize_onnx`` places Q/DQ nodes: one entry per runtime that reads QDQ ONNX.

    Attributes:
        activation_type: INT8 type of activations.
        activation_symmetric: zero-point 0 for activations.
        op_types: op types whose inputs are quantized (None: every op ONNX Runtime can).
        quantize_outputs: whether a quantized op's output is quantized too (ONNX Runtime
            fuses DQ -> op -> Q into one integer kernel; TensorRT wants float outputs of
            weighted layers).
        dedicated_pairs: each consumer of a quantized tensor gets its own Q/DQ pair, so a
            float-scope consumer of the same tensor keeps reading the float tensor.
        quantize_bias: biases as INT32 + DQ (ONNX Runtime) or left float (TensorRT's
            DequantizeLinear reads INT8 only).
        residual_add_only: of an ``Add`` fed by a weighted layer, quantize only the other
            (residual) input, which lets TensorRT fuse the Add into that layer.
        calibration: how activation ranges are found from the calibration images.
        float_readers_read_float: only the quantized ops read a DQ; every other consumer of
            a quantized tensor (float-scope nodes, ops outside ``op_types``) reads the float
            tensor. ONNX Runtime's quantizer hands the DQ to every consumer of a tensor that
            one quantized op reads.
        input_channel_multiple: pad quantized images of fewer channels (the input, DAIPNet's
            pooled pyramid) to this many in front of the convs reading them
            (``quantize.pad_input_channels``: ONNX Runtime's INT8 conv is slow on 3
            channels); 0 leaves them.
        weight_bits: 8, or 7 (ONNX Runtime's ``reduce_range``: weights in -64..64, and any
            other constant it quantizes in 7 bits too; activations stay 8-bit). On x86
            CPUs without VNNI, ONNX Runtime's u8 x s8 kernels add pairs of products in 16
            bits, which clip for 8-bit weights (2 x 255 x 127 > 32767) and never for 7-bit
            ones; VNNI CPUs add in 32 bits and lose nothing with 8.
    """

    activation_type: QuantType = QuantType.QUInt8
    activation_symmetric: bool = False
    op_types: tuple[str, ...] | None = None
    quantize_outputs: bool = True
    dedicated_pairs: bool = False
    quantize_bias: bool = True
    residual_add_only: bool = False
    float_readers_read_float: bool = False
    calibration: CalibrationMethod = CalibrationMethod.MinMax
    input_channel_multiple: int = 0
    weight_bits: int = 8
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight_bits not in (7, 8):
            raise ValueError(f"INT8 weights take 8 or 7 bits, got weight_bits={self.weight_bits}")


# A MatMul's constant right operand (..., K, N) has its output channels on the last axis;
# ONNX Runtime's default, axis 1, is K for the rewrites' 3-D projections (HAR-Net's deformable
# conv), a per-input-channel scale that no integer kernel can apply.
_MATMUL_PER_COLUMN = {"QDQOpTypePerChannelSupportToAxis": {"MatMul": -1}}
# ONNX Runtime's CPU kernels: uint8 activations (asymmetric, so ReLU outputs use all 256
# levels), integer kernels with quantized outputs.
ONNXRUNTIME_CPU = QdqScheme(extra=_MATMUL_PER_COLUMN, input_channel_multiple=CHANNEL_MULTIPLE)
# TensorRT explicit quantization (quantize.tensorrt_rules cites the rules): signed symmetric
# INT8, Q/DQ on the inputs of the weighted layers and the residual input of Adds, float
# outputs and biases. MatMuls of two activations (attention) are left to the float scope.
# Ranges from the 99.999th percentile: symmetric INT8 gives a ReLU output only 128 levels, and
# min/max ranges spend them on outliers. Measured on the zoo's passd_mobilenet (fp32 AP 31.90
# on 200 eval images of 640x480): MinMax ΔAP -1.08, Entropy -1.08, Percentile -0.66.
TENSORRT = QdqScheme(
    activation_type=QuantType.QInt8, activation_symmetric=True,
    op_types=("Conv", "ConvTranspose", "Gemm", "MatMul", "Add"), quantize_outputs=False,
    dedicated_pairs=True, quantize_bias=False, residual_add_only=True,
    float_readers_read_float=True, calibration=CalibrationMethod.Percentile,
    extra={"MatMulConstBOnly": True, **_MATMUL_PER_COLUMN})


# Range estimators the cpu and jetson targets offer (``--calibration`` / accuracy control):
# ONNX Runtime's calibrators. Percentile keeps the 99.999th percentile of |x| (histogram),
# entropy the range minimising the KL divergence of the INT8 histogram.
CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def with_calibration(scheme: QdqScheme, method: str | None) -> QdqScheme:
    """``scheme`` with the range estimator ``method`` (a ``CALIBRATION_METHODS`` key; None
    keeps the scheme's)."""
    if method is None:
        return scheme
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from "
                         f"{', '.join(CALIBRATION_METHODS)}")
    return replace(scheme, calibration=CALIBRATION_METHODS[method])


class _ImagesReader(CalibrationDataReader):
    """Feeds preprocessed calibration images, one ``(1, 3, H, W)`` batch at a time; ``set_range``
    limits it to a slice (ONNX Runtime's strided calibration)."""

    def __init__(self, images: Sequence[np.ndarray], input_name: str) -> None:
        self._images = list(images)
        self._input_name = input_name
        self._next, self._end = 0, len(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        images = np.ascontiguousarray(self._images[self._next], dtype=np.float32)
        self._next += 1
        return {self._input_name: images}


# ONNX Runtime's calibrators keep every calibration image's intermediate tensors in memory
# until the ranges are computed: for the 2x model of double-scale testing (4x the activations)
# 128 images of the pruned HAR-Net took more than 17.9 GB. Above this estimate, calibration
# goes in chunks of images (``calibration_chunking``). The estimate counts every float tensor;
# the calibrators hold only the quantized ops' tensors, about half of it as measured on the
# pruned HAR-Net for jetson (estimate 8.2 GiB for 128 images at 1x, one pass peaked at ~4.5
# GB), so the budget keeps that 1x calibration in one pass, as published.
CALIBRATION_ACTIVATION_BUDGET_BYTES = 10 * 2**30


def activation_bytes_per_image(model: onnx.ModelProto) -> int:
    """Bytes of the float tensors one ``(1, 3, H, W)`` input produces in ``model`` (static
    shapes from ONNX shape inference; tensors of unknown shape count as empty)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    total = 0
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = info.type.tensor_type
        if tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        dims = [d.dim_value for d in tensor.shape.dim]
        if dims and all(d > 0 for d in dims):
            itemsize = 4 if tensor.elem_type == onnx.TensorProto.FLOAT else 2
            total += itemsize * int(np.prod(dims))
    return total


def calibration_chunking(per_image_bytes: int, n_images: int, budget_bytes: int) -> dict:
    """``quantize_static`` extra options that keep calibration's held activations near
    ``budget_bytes`` (an empty dict when all images fit).

    ONNX Runtime's strided calibration runs the images ``chunk`` at a time and merges each
    chunk's statistics. MinMax merges exactly (min of the minima, max of the maxima). The
    histogram methods (percentile, entropy) do not quite: the first chunk sets the histogram's
    bin width and later chunks add bins of that width, so their ranges can differ slightly
    from one pass; hence chunks only where one pass does not fit. ``chunk`` is the largest
    divisor of ``n_images`` that fits (ONNX Runtime requires one). Not
    ``CalibMaxIntermediateOutputs``: in onnxruntime 1.32 it drops each full chunk's outputs
    without computing their ranges.
    """
    if per_image_bytes * n_images <= budget_bytes:
        return {}
    fits = max(1, budget_bytes // max(per_image_bytes, 1))
    chunk = max(d for d in range(1, n_images + 1) if n_images % d == 0 and d <= fits)
    return {"CalibStridedMinMax": chunk}


def quantize_onnx(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: Sequence[np.ndarray],
    nodes_to_exclude: Sequence[str] = (),
    scheme: QdqScheme = ONNXRUNTIME_CPU,
) -> Path:
    """Write the INT8 QDQ version of the fp32 ONNX model ``fp32_path`` to ``out_path``.

    Args:
        fp32_path: the fp32 ONNX detector from ``quantize.export_onnx``.
        out_path: the QDQ ``.onnx`` to write (atomically).
        calibration_images: preprocessed inputs, each ``(1, 3, H, W)`` float32
            (``quantize.calibration.calibration_inputs``).
        nodes_to_exclude: ONNX node names to keep in float.
        scheme: where Q/DQ nodes go and of which type (``ONNXRUNTIME_CPU``, ``TENSORRT``).

    Raises:
        ValueError: no calibration images, or a node name that is not in the graph.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not calibration_images:
        raise ValueError("INT8 calibration needs at least one image")
    model = onnx.load(str(fp32_path))
    node_names = {node.name for node in model.graph.node}
    missing = sorted(set(nodes_to_exclude) - node_names)
    if missing:
        raise ValueError(f"{fp32_path}: nodes to keep in float not in the graph: {missing[:5]}")
    input_name = model.graph.input[0].name if model.graph.input else INPUT_NAME
    chunking = calibration_chunking(activation_bytes_per_image(model), len(calibration_images),
                                    CALIBRATION_ACTIVATION_BUDGET_BYTES)
    if chunking:
        LOGGER.info("calibrating in chunks of %d images to bound memory",
                    chunking["CalibStridedMinMax"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        tmp_path = Path(tmp) / "model_int8.onnx"
        # Percentile calibration prints its histogram settings to stdout: keep them out of
        # the command line's output (logged at debug level instead).
        printed = io.StringIO()
        with _without_pre_processing_advice(), contextlib.redirect_stdout(printed):
            quantize_static(
                str(fp32_path), str(tmp_path), _ImagesReader(calibration_images, input_name),
                quant_format=QuantFormat.QDQ, per_channel=True,
                # 7 bits for every constant initializer it quantizes (the weights, constant
                # operands); activations keep 8.
                reduce_range=scheme.weight_bits == 7,
                activation_type=scheme.activation_type, weight_type=QuantType.QInt8,
                calibrate_method=scheme.calibration,
                op_types_to_quantize=list(scheme.op_types) if scheme.op_types else None,
                nodes_to_exclude=list(nodes_to_exclude),
                # The calibration copy of the model goes to the temporary directory too.
                extra_options={
                    "WeightSymmetric": True,
                    "ActivationSymmetric": scheme.activation_symmetric,
                    "DedicatedQDQPair": scheme.dedicated_pairs,
                    "QuantizeBias": scheme.quantize_bias,
                    "OpTypesToExcludeOutputQuantization": (
                        [] if scheme.quantize_outputs else list(scheme.op_types or ())),
                    **scheme.extra,
                    **chunking,
                },
            )
        if printed.getvalue().strip():
            LOGGER.debug("quantize_static: %s", printed.getvalue().strip())
        quantized = onnx.load(str(tmp_path))
    if scheme.residual_add_only:
        _float_weighted_add_inputs(quantized)
    excluded = set(nodes_to_exclude)
    rewired = _excluded_nodes_read_float_constants(quantized, model, excluded)
    if scheme.float_readers_read_float:
        _float_readers_read_float(quantized, set(scheme.op_types or ()), excluded)
        rewired = True
    else:
        rewired |= _excluded_pools_read_float(quantized, excluded)
    if rewired or scheme.residual_add_only:
        _drop_unread_qdq(quantized)
    if scheme.input_channel_multiple:
        pad_input_channels(quantized, scheme.input_channel_multiple)
    onnx.checker.check_model(quantized)
    write_bytes_atomic(out_path, quantized.SerializeToString())
    return out_path


class _DropPreProcessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_pre_processing_advice() -> Iterator[None]:
    """Silence ``quantize_static``'s advice to run its pre-processing first.

    That pre-processing (shape inference plus ONNX Runtime's graph optimisations) is not run
    on purpose: our exports are already simplified by onnxsim, and its optimiser renames or
    removes nodes (e.g. the head's Transposes), which would break ``nodes_to_exclude``.
    """
    advice_filter = _DropPreProcessingAdvice()
    root = logging.getLogger()
    root.addFilter(advice_filter)
    try:
        yield
    finally:
        root.removeFilter(advice_filter)


def quantized_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Names of the float tensors that go through a ``QuantizeLinear`` (held in INT8).

    A kept-out node may still read a dequantized tensor (the INT8 output of the conv before
    it); what it must not do is produce one.
    """
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def _float_behind_qdq(producer: dict[str, onnx.NodeProto], tensor: str,
                      constants: set[str]) -> str | None:
    """The float tensor ``x`` when ``tensor`` is ``DQ(Q(x))`` of an activation, else None."""
    dq = producer.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in constants:
        return None
    q = producer.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def _float_weighted_add_inputs(model: onnx.ModelProto) -> None:
    """Give each ``Add`` the float tensor instead of the Q/DQ of an input a weighted layer
    computes (``_drop_unread_qdq`` then removes the pair).

    TensorRT fuses ``Conv -> Add(residual)`` into one INT8 kernel when the residual input
    arrives through a DQ and the conv output does not (NVIDIA's placement recommendation);
    quantizing the conv output instead would round it to INT8 for nothing. Of an Add whose
    inputs both come straight from weighted layers, the first stays float.
    Needs dedicated Q/DQ pairs (each pair has this Add as its only consumer).
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    weighted = ("Conv", "ConvTranspose", "Gemm", "MatMul")
    for node in graph.node:
        if node.op_type != "Add":
            continue
        for index, tensor in enumerate(node.input):
            source = _float_behind_qdq(producer, tensor, constants)
            if source is not None and source in producer and \
                    producer[source].op_type in weighted:
                node.input[index] = source
                break


def _float_readers_read_float(model: onnx.ModelProto, quantized_ops: set[str],
                              excluded: set[str]) -> None:
    """Give each consumer of an activation DQ that is not a quantized op (its type outside
    ``quantized_ops`` or its name in ``excluded``) the float tensor before the Q instead
    (``_drop_unread_qdq`` then removes the pairs nobody reads)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in quantized_ops or node.name in excluded:
            for index, tensor in enumerate(node.input):
                source = _float_behind_qdq(producer, tensor, constants)
                if source is not None:
                    node.input[index] = source


def _excluded_nodes_read_float_constants(model: onnx.ModelProto, fp32: onnx.ModelProto,
                                         excluded: set[str]) -> bool:
    """Give each excluded node that reads a dequantized constant (``DQ`` of an INT8 / INT32
    initializer) the fp32 model's float constant instead.

    The quantizer rounds a weight once for all its readers, so a conv that accuracy control
    returned to float while other levels share its weight (a RetinaNet head's convs) computed
    with the INT8-rounded weight, dequantized on every run, and ONNX Runtime's NCHWc kernels
    skip a conv whose weight is not a constant. Returns whether any input was rewired."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    fp32_inputs = {n.name: list(n.input) for n in fp32.graph.node}
    fp32_constants = {t.name: t for t in fp32.graph.initializer}
    rewired = False
    for node in graph.node:
        if node.name not in excluded or node.name not in fp32_inputs:
            continue
        for index, tensor in enumerate(node.input):
            dq = producer.get(tensor)
            original = fp32_inputs[node.name][index] if index < len(fp32_inputs[node.name]) else ""
            if (dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in constants
                    or original not in fp32_constants):
                continue
            # The quantizer may have given the dequantized tensor the original's name.
            name = original if original not in producer else f"{original}_float"
            if name not in constants:
                value = onnx.TensorProto()
                value.CopyFrom(fp32_constants[original])
                value.name = name
                graph.initializer.append(value)
                constants.add(name)
            node.input[index] = name
            rewired = True
    return rewired


def _excluded_pools_read_float(model: onnx.ModelProto, excluded: set[str]) -> bool:
    """Give each excluded ``MaxPool`` that reads ``DQ(Q(x))`` the float ``x`` itself, where
    ``x`` is a graph input or the output of another excluded node (so it exists in float).

    ONNX Runtime runs ``DQ -> MaxPool -> Q`` as one uint8 MaxPool whatever
    ``nodes_to_exclude`` says, so without this an excluded pool whose output is quantized for
    the conv after it still pools uint8 (``int8_scope``'s ``input_pools``). A max commutes
    with the rounding: the values do not change, only the kernel that computes them.
    Returns whether any pool was rewired."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input}
    rewired = False
    for node in graph.node:
        if node.op_type != "MaxPool" or node.name not in excluded:
            continue
        source = _float_behind_qdq(producer, node.input[0], constants)
        if source is not None and (source in inputs
                                   or (source in producer and producer[source].name in excluded)):
            node.input[0] = source
            rewired = True
    return rewired


def _drop_unread_qdq(model: onnx.ModelProto) -> None:
    """Remove the Q/DQ nodes nothing reads any more, then the initializers nothing uses."""
    graph = model.graph
    while True:  # DQs first, then the Qs they read
        read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        dead = {n.name for n in graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read}
        if not dead:
            break
        kept = [n for n in graph.node if n.name not in dead]
        del graph.node[:]
        graph.node.extend(kept)
    used = {t for n in graph.node for t in n.input}
    kept_initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
