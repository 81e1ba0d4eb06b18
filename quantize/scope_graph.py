"""The graph the INT8 scope rules (``quantize.int8_scope``) search: ops as ``ScopeNode`` s with
ONNX op types, whatever format they came from, and the producer / consumer maps between them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm")
# Ops that only move or reshape data: a mask reaching its Mul through them is still a mask.
LAYOUT_OPS = ("Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Flatten", "Identity")


@dataclass(frozen=True)
class ScopeNode:
    """One op of a graph, as the scope rules see it: a unique name, an ONNX op type (other
    formats translate theirs, e.g. TFLite ``CONV_2D`` -> ``Conv``), input and output tensor
    names."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of a subgraph (If / Loop / Scan bodies, at any depth) reads:
    they may read the outer graph's tensors, which a rewrite must then leave alone."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            for sub in (*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])):
                names |= {name for n in sub.node for name in n.input} | subgraph_reads(sub)
    return names


def onnx_scope_nodes(model: onnx.ModelProto) -> tuple[list[ScopeNode], set[str], set[str]]:
    """``(nodes, constant tensor names, graph output names)`` of an ONNX model."""
    graph = model.graph
    nodes = [ScopeNode(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in graph.node]
    constants = {init.name for init in graph.initializer}
    constants.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return nodes, constants, {o.name for o in graph.output}


class ScopeGraph:
    """Producer / consumer maps of a graph, and which tensors are constants."""

    def __init__(self, nodes: Sequence[ScopeNode], constants: set[str],
                 outputs: set[str]) -> None:
        self.nodes = list(nodes)
        self.constants = set(constants)
        self.producer: dict[str, ScopeNode] = {o: n for n in self.nodes for o in n.outputs}
        self.consumers: dict[str, list[ScopeNode]] = {}
        for node in self.nodes:
            for name in node.inputs:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = set(outputs)

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants or tensor == ""

    def is_weight_layer(self, node: ScopeNode) -> bool:
        if node.op_type in WEIGHT_OPS:
            return True
        return node.op_type == "MatMul" and any(self.is_constant(t) for t in node.inputs)

    def activation_inputs(self, node: ScopeNode) -> list[str]:
        return [t for t in node.inputs if not self.is_constant(t)]

    def backward(self, tensors: Iterable[str]) -> set[str]:
        """Names of the nodes computing ``tensors``, searched up to (not into) weight layers."""
        found: set[str] = set()
        stack = [t for t in tensors if not self.is_constant(t)]
        while stack:
            node = self.producer.get(stack.pop())
            if node is None or node.name in found or self.is_weight_layer(node):
                continue
            if node.op_type == "Constant":
                continue
            found.add(node.name)
            stack.extend(self.activation_inputs(node))
        return found

    def forward(self, node_names: Iterable[str]) -> set[str]:
        """Nodes fed by ``node_names`` up to (not into) the next weight layer."""
        by_name = {n.name: n for n in self.nodes}
        found: set[str] = set()
        stack = [by_name[name] for name in node_names]
        while stack:
            node = stack.pop()
            for output in node.outputs:
                for consumer in self.consumers.get(output, []):
                    if consumer.name in found or self.is_weight_layer(consumer):
                        continue
                    found.add(consumer.name)
                    stack.append(consumer)
        return found

    def layout_source(self, tensor: str) -> str:
        """The tensor that ``tensor`` is a reshaped / transposed view of (itself if none)."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in LAYOUT_OPS and self.activation_inputs(node):
            tensor = self.activation_inputs(node)[0]
            node = self.producer.get(tensor)
        return tensor

    def comes_from(self, tensor: str, op_type: str) -> bool:
        """True when ``tensor`` is an ``op_type`` output, possibly through layout-only ops."""
        node = self.producer.get(self.layout_source(tensor))
        return node is not None and node.op_type == op_type
