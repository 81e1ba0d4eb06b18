"""What the TensorRT backend decides before TensorRT is involved, in pure Python.

The builder flags of an artifact (from its ONNX graph), the workspace limit and the CUDA device
index go into the ``EngineKey`` of the engine cache, so they must be known before a build and
testable where neither TensorRT nor a GPU is. Reading the graph needs no ``onnx`` package (it
is not part of the Jetson runtime): only the node types are read, straight off the protobuf
wire format.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from edgedet.backends import BackendError

DEFAULT_WORKSPACE_MB = 1024
WORKSPACE_ENV = "EDGEDET_TRT_WORKSPACE_MB"
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def builder_flags_for(onnx_path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The TensorRT builder flags an artifact's ONNX model is built with.

    A graph with QuantizeLinear / DequantizeLinear nodes is an explicitly quantized (QDQ)
    INT8 model: INT8 for the quantized layers plus FP16 for the ones kept in float. Any other
    graph is a float model built in FP16 (the ``jetson`` target's fp16 artifacts).

    Raises:
        BackendError: the file cannot be read or is not an ONNX model.
    """
    try:
        data = Path(onnx_path).read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read {onnx_path} as an ONNX model: {exc}") from exc
    return builder_flags_of(data, str(onnx_path))


def builder_flags_of(onnx_bytes: bytes, source: str) -> tuple[str, ...]:
    """``builder_flags_for`` of a model's bytes (``source`` names it in errors)."""
    try:
        ops = set(onnx_op_types(onnx_bytes))
    except ValueError as exc:
        raise BackendError(f"cannot read {source} as an ONNX model: {exc}") from exc
    return ("fp16", "int8") if ops & QDQ_OPS else ("fp16",)


def onnx_op_types(model: bytes) -> Iterator[str]:
    """The ``op_type`` of every node of a serialized ONNX ``ModelProto``, subgraphs included.

    Raises:
        ValueError: not a well-formed ONNX model.
    """
    view = memoryview(model)  # slices of a memoryview do not copy the (large) initializers
    graphs = [value for field, wire, value in _fields(view) if field == 7 and wire == 2]
    if not graphs:
        raise ValueError("no graph in it")
    for graph in graphs:
        yield from _graph_ops(graph)


def _graph_ops(graph: memoryview) -> Iterator[str]:
    # GraphProto.node = 1; NodeProto.op_type = 4, .attribute = 5; AttributeProto.g = 6 and
    # .graphs = 11 hold the bodies of If / Loop / Scan, which may be quantized too.
    for field, wire, node in _fields(graph):
        if field != 1 or wire != 2:
            continue
        for node_field, node_wire, value in _fields(node):
            if node_field == 4 and node_wire == 2:
                yield bytes(value).decode("utf-8", "replace")
            elif node_field == 5 and node_wire == 2:
                for attr_field, attr_wire, sub in _fields(value):
                    if attr_field in (6, 11) and attr_wire == 2:
                        yield from _graph_ops(sub)


def _fields(message: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """``(field number, wire type, raw value)`` of each field of one protobuf message."""
    pos, end = 0, len(message)
    while pos < end:
        tag, pos = _varint(message, pos)
        wire = tag & 7
        if wire == 0:
            start = pos
            _, pos = _varint(message, pos)
        elif wire == 2:
            length, start = _varint(message, pos)
            pos = start + length
        elif wire in (1, 5):
            start, pos = pos, pos + (8 if wire == 1 else 4)
        else:  # groups (3, 4) are not in ONNX's schema; anything else is not protobuf
            raise ValueError(f"unexpected protobuf wire type {wire} at byte {pos}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield tag >> 3, wire, message[start:pos]


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong protobuf varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def workspace_mb(override: int | None = None) -> int:
    """The builder workspace in MB: ``override``, else ``$EDGEDET_TRT_WORKSPACE_MB``, else
    ``DEFAULT_WORKSPACE_MB``.

    Raises:
        BackendError: not a positive integer (naming where it came from).
    """
    source, value = "--workspace", override
    if value is None:
        source, value = WORKSPACE_ENV, os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE_MB
    try:
        result = int(value)
    except (TypeError, ValueError):
        result = 0
    if result < 1:
        raise BackendError(f"{source} must be a positive number of MB, got {value!r}")
    return result


def cuda_device_index(device: str | int | None) -> int:
    """The CUDA device index of a ``device`` value: ``"cuda:N"``, ``"N"``, ``"cuda"`` / ``"gpu"``
    / None (GPU 0).

    Raises:
        BackendError: anything else.
    """
    if device is None:
        return 0
    text = str(device).strip().lower()
    if text in ("cuda", "gpu"):
        return 0
    number = text.removeprefix("cuda:")
    if not number.isdigit():
        raise BackendError(f"tensorrt device must be a CUDA GPU index: 'cuda:N' or 'N' "
                           f"(default GPU 0), got {device!r}")
    return int(number)
