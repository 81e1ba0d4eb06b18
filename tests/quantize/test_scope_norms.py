"""``quantize.scope_norms``: the ``norms`` rule finds a normalisation written out as ops, in each
way a converter may write it, and nothing that merely looks like one."""

from __future__ import annotations

from quantize.int8_scope import find_kept_out
from quantize.scope_graph import ScopeNode


def _node(name: str, op_type: str, inputs: str, outputs: str) -> ScopeNode:
    return ScopeNode(name, op_type, tuple(inputs.split()), tuple(outputs.split()))


def test_a_group_norm_written_out_as_ops_is_a_norm_too():
    # CLGN as litert-torch writes it into a TFLite file (op types translated), after two
    # levels' convs: join, mean, centred square, mean, + eps, rsqrt, scale and shift (of the
    # joined levels before their grouping), split; then a ReLU on one level and, on the other,
    # a residual Add of another branch and a Mul by a constant: neither is the norm's.
    nodes = [
        _node("conv0", "Conv", "x0 w", "c0"), _node("conv1", "Conv", "x1 w", "c1"),
        _node("t0", "Transpose", "c0 perm", "n0"), _node("t1", "Transpose", "c1 perm", "n1"),
        _node("flat0", "Reshape", "n0 s", "f0"), _node("flat1", "Reshape", "n1 s", "f1"),
        _node("join", "Concat", "f0 f1", "joined"),
        _node("groups", "Reshape", "joined g", "grouped"),
        _node("mean", "ReduceMean", "grouped axes", "mu"),
        _node("centre", "Sub", "grouped mu", "d"),
        _node("square", "Mul", "d d", "d2"),
        _node("var", "ReduceMean", "d2 axes", "v"),
        _node("eps", "Add", "v epsilon", "ve"),
        _node("var4d", "Reshape", "ve s4", "ve4"),
        _node("rsqrt", "Rsqrt", "ve4", "r"),
        _node("gamma", "Mul", "r gamma_c", "k"),
        _node("mu_k", "Mul", "mu minus", "mm"),
        _node("shift0", "Mul", "mm k", "b0"),
        _node("beta", "Add", "b0 beta_c", "b"),
        _node("k_c", "Reshape", "k s3", "kc"), _node("b_c", "Reshape", "b s3", "bc"),
        _node("scale", "Mul", "joined kc", "y"),
        _node("shift", "Add", "y bc", "z"),
        _node("part0", "Slice", "z a0 e0", "p0"), _node("part1", "Slice", "z a1 e1", "p1"),
        _node("relu", "Relu", "p0", "out0"),
        _node("residual", "Add", "p1 other", "sum1"),
        _node("doubled", "Mul", "sum1 two", "out1"),
    ]
    constants = {"w", "perm", "s", "g", "axes", "epsilon", "s4", "gamma_c", "minus", "beta_c",
                 "s3", "a0", "e0", "a1", "e1", "two"}
    kept = find_kept_out(nodes, constants, {"out0", "out1"}, ["norms"])
    assert kept == {"norms": sorted([
        "t0", "t1", "flat0", "flat1", "join", "groups", "mean", "centre", "square", "var", "eps",
        "var4d", "rsqrt", "gamma", "mu_k", "shift0", "beta", "k_c", "b_c", "scale", "shift",
        "part0", "part1"])}
    # Two layer norms written out, the second fed by a residual Add of the first's output
    # and a conv of it, and followed by a residual Add of its own input: each norm is its
    # own eight ops, the residual Adds neither's.
    def layer_norm(n: str, x: str) -> list[ScopeNode]:
        return [_node(f"mean{n}", "ReduceMean", f"{x} axes", f"m{n}"),
                _node(f"centre{n}", "Sub", f"{x} m{n}", f"d{n}"),
                _node(f"square{n}", "Mul", f"d{n} d{n}", f"q{n}"),
                _node(f"var{n}", "ReduceMean", f"q{n} axes", f"v{n}"),
                _node(f"eps{n}", "Add", f"v{n} epsilon", f"e{n}"),
                _node(f"rsqrt{n}", "Rsqrt", f"e{n}", f"r{n}"),
                _node(f"scale{n}", "Mul", f"d{n} r{n}", f"y{n}"),
                _node(f"shift{n}", "Add", f"y{n} beta_c", f"z{n}")]

    chained = [_node("conv0", "Conv", "x0 w", "h"), *layer_norm("1", "h"),
               _node("conv1", "Conv", "z1 w", "c"), _node("residual", "Add", "z1 c", "s"),
               *layer_norm("2", "s"), _node("around", "Add", "z2 s", "out")]
    kept = find_kept_out(chained, {"w", "axes", "epsilon", "beta_c"}, {"out"}, ["norms"])
    assert kept == {"norms": sorted(n.name for n in chained if n.name[-1] in "12"
                                    and n.op_type != "Conv")}
    # Without the rsqrt (a mean and a difference alone) nothing is a norm.
    plain = [n for n in nodes if n.name in ("conv0", "conv1", "mean", "centre")]
    assert find_kept_out(plain, constants, {"d"}, ["norms"]) == {"norms": []}


def _layer_norm_by_division(x: str, *, reciprocal: bool) -> list[ScopeNode]:
    """``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) + beta``, the division written as a
    ``Div`` or as ``Reciprocal`` then ``Mul``."""
    scaled = ([_node("recip", "Reciprocal", "sd", "inv"), _node("apply", "Mul", "d inv", "y")]
              if reciprocal else [_node("apply", "Div", "d sd", "y")])
    return [_node("mean", "ReduceMean", f"{x} axes", "m"),
            _node("centre", "Sub", f"{x} m", "d"),
            _node("square", "Pow", "d two", "q"),
            _node("var", "ReduceMean", "q axes", "v"),
            _node("eps", "Add", "v epsilon", "e"),
            _node("sqrt", "Sqrt", "e", "sd"),
            *scaled,
            _node("shift", "Add", "y beta_c", "z")]


def test_a_norm_divided_by_its_standard_deviation_is_found():
    # The Sqrt root: divided (Div) or multiplied by the Reciprocal; the conv before, the ReLU
    # and the residual Add of the input after are not the norm's.
    constants = {"w", "axes", "two", "epsilon", "beta_c"}
    for reciprocal in (False, True):
        norm = _layer_norm_by_division("h", reciprocal=reciprocal)
        nodes = [_node("conv", "Conv", "x w", "h"), *norm,
                 _node("relu", "Relu", "z", "r"), _node("residual", "Add", "r h", "out")]
        kept = find_kept_out(nodes, constants, {"out"}, ["norms"])
        assert kept == {"norms": sorted(n.name for n in norm)}, reciprocal


def test_a_mean_lowered_to_a_sum_times_one_over_n_is_a_mean():
    # Both means as ReduceSum then * (1/n) (the first) or / n (the second), with Rsqrt.
    norm = [_node("sum", "ReduceSum", "h axes", "s"), _node("mean", "Mul", "s inv_n", "m"),
            _node("centre", "Sub", "h m", "d"), _node("square", "Mul", "d d", "q"),
            _node("sum_q", "ReduceSum", "q axes", "sq"), _node("var", "Div", "sq n", "v"),
            _node("eps", "Add", "v epsilon", "e"), _node("rsqrt", "Rsqrt", "e", "r"),
            _node("scale", "Mul", "d r", "z")]
    nodes = [_node("conv", "Conv", "x w", "h"), *norm, _node("relu", "Relu", "z", "out")]
    kept = find_kept_out(nodes, {"w", "axes", "inv_n", "n", "epsilon"}, {"out"}, ["norms"])
    assert kept == {"norms": sorted(n.name for n in norm)}


def test_a_root_mean_square_norm_divides_its_input():
    # x / sqrt(mean(x * x) + eps): no centring, so the statistics are of the mean's input,
    # and the Div of the input itself is the norm's application.
    norm = [_node("square", "Mul", "h h", "q"), _node("mean", "ReduceMean", "q axes", "v"),
            _node("eps", "Add", "v epsilon", "e"), _node("sqrt", "Sqrt", "e", "sd"),
            _node("apply", "Div", "h sd", "z")]
    nodes = [_node("conv", "Conv", "x w", "h"), *norm, _node("relu", "Relu", "z", "out")]
    kept = find_kept_out(nodes, {"w", "axes", "epsilon"}, {"out"}, ["norms"])
    assert kept == {"norms": sorted(n.name for n in norm)}


def test_square_roots_and_means_that_do_not_normalise_are_not_norms():
    # A box's size sqrt(w * h) dividing an offset (the kind of math box decoding writes), and a
    # sum that no constant turns into a mean: neither is a normalisation.
    nodes = [_node("conv", "Conv", "x w", "c"),
             _node("area", "Mul", "c c", "a"), _node("size", "Sqrt", "a", "s"),
             _node("offset", "Div", "c s", "o"),
             _node("total", "ReduceSum", "c axes", "t"), _node("centre", "Sub", "c t", "d"),
             _node("norm", "Rsqrt", "d", "r"), _node("apply", "Mul", "c r", "out")]
    kept = find_kept_out(nodes, {"w", "axes"}, {"o", "out"}, ["norms"])
    assert kept == {"norms": []}
    # A standard deviation pooled as a feature (SRM-style channel statistics: concat(mean,
    # sqrt(var)) into a fully connected layer): its Sqrt divides nothing.
    pooled = [_node("conv", "Conv", "x w", "h"), _node("mean", "ReduceMean", "h axes", "m"),
              _node("centre", "Sub", "h m", "d"), _node("square", "Mul", "d d", "q"),
              _node("var", "ReduceMean", "q axes", "v"), _node("eps", "Add", "v epsilon", "e"),
              _node("std", "Sqrt", "e", "sd"), _node("stats", "Concat", "m sd", "f"),
              _node("fc", "Gemm", "f w2", "out")]
    assert find_kept_out(pooled, {"w", "w2", "axes", "epsilon"}, {"out"},
                         ["norms"]) == {"norms": []}
    # A distribution decode (sum of softmax x projection, times the stride) whose width and
    # height's sqrt(w * h) divides an offset: a sum times a constant above a dividing Sqrt,
    # but no square of what the "mean" is taken of, so no statistics.
    decode = [_node("conv", "Conv", "x w", "c"), _node("soft", "Softmax", "c", "p"),
              _node("proj", "Mul", "p bins", "pb"), _node("sum", "ReduceSum", "pb axes", "sm"),
              _node("stride", "Mul", "sm s8", "wh"), _node("area", "Mul", "wh wh2", "a"),
              _node("size", "Sqrt", "a", "sz"), _node("rel", "Div", "c sz", "out")]
    assert find_kept_out(decode, {"w", "bins", "axes", "s8", "wh2"}, {"out"},
                         ["norms"]) == {"norms": []}
