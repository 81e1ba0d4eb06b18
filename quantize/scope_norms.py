"""The ``norms`` rule of ``quantize.int8_scope``: run-time normalisations and the ops that carry
the pyramid levels into and out of them.

A normalisation is either one op (``InstanceNormalization`` etc.: HAR-Net's cross-level group
norm as ONNX exports it) or written out op by op, as TFLite, which has no group norm op, gets
it from litert-torch: a mean, the centred square, a second mean, ``1/sqrt(var + eps)`` and the
scale and shift. A written-out norm is found from its square root (``Rsqrt``, or ``Sqrt``
followed by a division or ``Reciprocal``) and a mean above it (``ReduceMean``, or a mean
lowered to ``ReduceSum`` times / divided by a constant ``n``).
"""

from __future__ import annotations

from collections.abc import Sequence

from quantize.scope_graph import LAYOUT_OPS, ScopeGraph, ScopeNode

NORM_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization")
# The ops a written-out normalisation's statistics and their application consist of.
NORM_MATH_OPS = ("ReduceMean", "ReduceSum", "Sub", "Mul", "Add", "Div", "Pow",
                 "SquaredDifference", "Rsqrt", "Sqrt", "Reciprocal")
_MEAN_OPS = ("ReduceMean", "ReduceSum")
# What carries several levels into one normalisation and back out: layout ops, and the joins
# and splits between the levels.
JOIN_OPS = (*LAYOUT_OPS, "Concat", "Slice", "Split")


def _math_above(graph: ScopeGraph, root: ScopeNode, op_types: Sequence[str],
                stop: frozenset[str] = frozenset()) -> dict[str, ScopeNode]:
    """The ``op_types`` nodes computing ``root``'s inputs, up to the first other op or a
    tensor in ``stop``."""
    found: dict[str, ScopeNode] = {}
    stack = [t for t in graph.activation_inputs(root) if t not in stop]
    while stack:
        node = graph.producer.get(stack.pop())
        if (node is None or node.op_type not in op_types or node.name in found
                or graph.is_weight_layer(node)):
            continue
        found[node.name] = node
        stack.extend(t for t in graph.activation_inputs(node) if t not in stop)
    return found


def _mean_of(graph: ScopeGraph, node: ScopeNode | None) -> str | None:
    """The tensor ``node`` computes the mean of, or None: a ``ReduceMean``'s input, or a
    ``ReduceSum``'s input where ``node`` multiplies that sum by a constant or divides it by
    one (a mean lowered to a sum and ``1/n``)."""
    if node is not None and node.op_type == "ReduceMean":
        return node.inputs[0]
    if (node is not None and node.op_type in ("Mul", "Div")
            and len(graph.activation_inputs(node)) == 1
            and (node.op_type == "Mul" or not graph.is_constant(node.inputs[0]))):
        summed = graph.producer.get(graph.layout_source(graph.activation_inputs(node)[0]))
        if summed is not None and summed.op_type == "ReduceSum":
            return summed.inputs[0]
    return None


def _reaches_a_mean(graph: ScopeGraph, tensor: str, within: dict[str, ScopeNode]) -> bool:
    """Whether ``tensor`` is computed, through the nodes ``within``, from a mean (or sum)."""
    seen: set[str] = set()
    pending = [tensor]
    while pending:
        node = graph.producer.get(pending.pop())
        if node is None or node.name not in within or node.name in seen:
            continue
        if node.op_type in _MEAN_OPS:
            return True
        seen.add(node.name)
        pending.extend(graph.activation_inputs(node))
    return False


def _statistics_inputs(graph: ScopeGraph, above: dict[str, ScopeNode]) -> set[str]:
    """What a written-out norm's statistics are of: the input ``x`` of a mean that is taken
    off ``x`` itself (``x - mean(x)``, the centring: ``Sub`` or ``SquaredDifference``); where
    the variance is written without centring (``mean(x*x) - mean(x)^2``, or a root mean
    square ``mean(x*x)`` alone), the input of each mean not computed from another mean, or
    what that input squares."""
    centred = set()
    for node in above.values():
        if node.op_type not in ("Sub", "SquaredDifference") or len(node.inputs) < 2:
            continue
        for x, m in (node.inputs[:2], node.inputs[1::-1]):
            averaged = _mean_of(graph, graph.producer.get(graph.layout_source(m)))
            if (averaged is not None
                    and graph.layout_source(averaged) == graph.layout_source(x)):
                centred.add(averaged)
    if centred:
        return centred
    means = [x for x in (_mean_of(graph, node) for node in above.values())
             if x is not None and not _reaches_a_mean(graph, x, above)]
    # Without centring, a variance or root mean square is a mean of a square: without one,
    # a mean under a square root is some other statistic (e.g. a pooled feature).
    if not any(_squared(graph, x) != x for x in means):
        return set()
    return {_squared(graph, x) for x in means}


def _squared(graph: ScopeGraph, tensor: str) -> str:
    """What ``tensor`` is the square (``Mul(y, y)``, ``Pow(y, constant)``) of; else itself."""
    node = graph.producer.get(tensor)
    if node is not None and node.op_type == "Mul" and node.inputs[0] == node.inputs[1]:
        return node.inputs[0]
    if node is not None and node.op_type == "Pow" and graph.is_constant(node.inputs[1]):
        return node.inputs[0]
    return tensor


def _divides(graph: ScopeGraph, root: ScopeNode) -> bool:
    """Whether ``root`` (a ``Sqrt``) is a divisor: read as the second input of a ``Div`` or
    by a ``Reciprocal``, through layout ops. (A square root read otherwise, e.g. a standard
    deviation pooled as a feature, does not normalise.)"""
    pending, seen = list(root.outputs), set()
    while pending:
        tensor = pending.pop()
        for consumer in graph.consumers.get(tensor, []):
            if consumer.name in seen:
                continue
            seen.add(consumer.name)
            if consumer.op_type == "Reciprocal" or (
                    consumer.op_type == "Div" and consumer.inputs[1:2] == (tensor,)):
                return True
            if consumer.op_type in LAYOUT_OPS:
                pending.extend(consumer.outputs)
    return False


def _written_out_norms(graph: ScopeGraph) -> tuple[set[str], set[str]]:
    """``(node names, input tensors)`` of the normalisations written out as ops (see
    ``NORM_MATH_OPS``). Each ``Rsqrt``, or ``Sqrt`` that divides (``_divides``), whose
    inputs come, through that math, from a mean is one; its input is what its statistics are
    of (``_statistics_inputs``), its statistics are the math between that input and the
    root, and its application is every op after the statistics whose activation inputs are
    the statistics or, for the ``Mul`` that scales it, the ``Div`` that divides it and the
    ``Sub`` that centres it, the input (then the splits, layout ops and any further affine
    steps, as for a norm op). The activation that follows, and a residual ``Add`` (of the
    input or another branch), are not."""
    math = (*NORM_MATH_OPS, *LAYOUT_OPS)
    found: set[str] = set()
    inputs: set[str] = set()
    for root in (n for n in graph.nodes if n.op_type == "Rsqrt"
                 or (n.op_type == "Sqrt" and _divides(graph, n))):
        sources = _statistics_inputs(graph, _math_above(graph, root, math))
        if not sources:
            continue
        # Bounded by its input, so that a norm fed (through math ops) by another norm does
        # not take that one's ops as its statistics.
        above = _math_above(graph, root, math, stop=frozenset(sources))
        inputs |= sources
        # The same values before a layout op count as the input (the scale applies to the
        # joined levels before they were grouped for the statistics).
        aliases, pending = set(sources), list(sources)
        while pending:
            node = graph.producer.get(pending.pop())
            if node is not None and node.op_type in LAYOUT_OPS:
                fresh = set(graph.activation_inputs(node)) - aliases
                aliases |= fresh
                pending.extend(fresh)
        derived, members, changed = set(aliases), set(), True
        while changed:  # op by op, until nothing more joins
            changed = False
            for node in graph.nodes:
                if node.name in members or graph.is_weight_layer(node):
                    continue
                operands = graph.activation_inputs(node)
                if node.name in above:  # the statistics: the math fed by the input
                    wanted = any(t in derived for t in operands)
                else:  # the application
                    on_input = any(t in aliases for t in operands)
                    wanted = (node.op_type in (*math, *JOIN_OPS) and bool(operands)
                              and all(t in derived for t in operands)
                              and not all(t in aliases for t in operands)
                              and (not on_input or node.op_type in ("Mul", "Div", "Sub")))
                if wanted:
                    members.add(node.name)
                    derived.update(node.outputs)
                    changed = True
        found |= members
    return found, inputs


def norm_nodes(graph: ScopeGraph) -> set[str]:
    """Each normalisation (an op, or written out: ``_written_out_norms``), the joins / layout
    ops feeding it back to the first other op, and after it the splits, layout ops and
    per-channel affine (``Mul`` / ``Add`` with a constant operand) up to the first other op
    (the activation that follows)."""
    norms = [n for n in graph.nodes if n.op_type in NORM_OPS]
    written_out, written_out_inputs = _written_out_norms(graph)
    found = {n.name for n in norms} | written_out
    stack = [t for n in norms for t in graph.activation_inputs(n)] + list(written_out_inputs)
    joined: set[str] = set()
    while stack:
        node = graph.producer.get(stack.pop())
        if node is not None and node.op_type in JOIN_OPS and node.name not in joined:
            joined.add(node.name)
            stack.extend(graph.activation_inputs(node))
    found |= joined
    pending = list(norms)
    while pending:
        for output in pending.pop().outputs:
            for consumer in graph.consumers.get(output, []):
                affine = (consumer.op_type in ("Mul", "Add")
                          and len(graph.activation_inputs(consumer)) == 1)
                if consumer.name not in found and (consumer.op_type in JOIN_OPS or affine):
                    found.add(consumer.name)
                    pending.append(consumer)
    return found
