"""Float weights stored as float16 in an ONNX file, computed in float32.

A float artifact's file is almost all weights: the paper-width MobileNet-PASSD is 24 MiB of
float32 tensors. Storing each large float32 initializer as float16 behind a ``Cast`` to float32
halves the file while every op still computes in float32: ONNX Runtime folds the casts into
float32 constants when it loads the model, so the graph it runs is the float32 graph with
weights rounded to float16 (relative error <= 2^-11). Whether that rounding costs accuracy is
not assumed: the conversion's accuracy check measures the stored file like any other artifact.

Only initializers of ``MIN_ELEMENTS`` or more are converted (biases, scales and shape constants
stay exact), and only those float16 holds: a tensor with a value beyond float16's range, or one
that rounding would change by more than ``MAX_RELATIVE_ERROR``, is left in float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgedet._io import write_bytes_atomic

WEIGHT_STORAGES: tuple[str, ...] = ("float32", "float16")
# Tensors smaller than this stay float32: they weigh nothing and are often biases, BN-folded
# shifts or constants that index math reads.
MIN_ELEMENTS = 1024
# Where the stored float16 tensor gets its name: ORIGINAL + this suffix.
FLOAT16_SUFFIX = "__float16"
# A tensor is stored as float16 only when rounding changes it by at most this, relative
# (||float16 - float32|| / ||float32||; float16's own rounding is <= 2^-11 = 4.9e-4 per value,
# so this only refuses tensors with values beyond its range or many that flush to zero).
MAX_RELATIVE_ERROR = 1e-3


def _fits_float16(values: np.ndarray) -> bool:
    """Every value finite and the tensor within ``MAX_RELATIVE_ERROR`` of itself in float16
    (values below float16's smallest subnormal, ~6e-8, may flush to zero: they count in the
    error, they do not forbid the tensor)."""
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float16).astype(np.float64)
    if not np.all(np.isfinite(rounded)):  # NaN / inf, or beyond float16's range
        return False
    norm = float(np.linalg.norm(values.astype(np.float64)))
    return norm == 0.0 or float(np.linalg.norm(rounded - values)) <= MAX_RELATIVE_ERROR * norm


def store_weights_float16(model: onnx.ModelProto,
                          min_elements: int = MIN_ELEMENTS) -> tuple[onnx.ModelProto, int]:
    """``(model, converted)``: a copy of ``model`` whose float32 initializers of
    ``min_elements`` or more values are stored as float16, each read through a ``Cast`` to
    float32 under its original name (so no consumer changes), and how many were converted."""
    stored = onnx.ModelProto()
    stored.CopyFrom(model)
    graph = stored.graph
    graph_inputs = {value.name for value in graph.input}
    casts = []
    kept = []
    converted = 0
    for initializer in graph.initializer:
        values = numpy_helper.to_array(initializer)
        if (initializer.data_type != TensorProto.FLOAT or values.size < min_elements
                or initializer.name in graph_inputs or not _fits_float16(values)):
            kept.append(initializer)
            continue
        half_name = initializer.name + FLOAT16_SUFFIX
        kept.append(numpy_helper.from_array(values.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [initializer.name],
                                      to=TensorProto.FLOAT,
                                      name=f"{initializer.name}/to_float32"))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # The casts read only initializers, so they go first: the node list stays topological.
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    # Shape information recorded for the old initializers would still say float32: fine, the
    # Cast outputs are float32. Value infos of the renamed float16 tensors are not needed.
    onnx.checker.check_model(stored)
    return stored, converted


def store_file_float16(source: str | os.PathLike[str],
                       out_path: str | os.PathLike[str]) -> Path:
    """``store_weights_float16`` from one ONNX file to another (written atomically)."""
    model = onnx.load(str(source))
    stored, _ = store_weights_float16(model)
    out_path = Path(out_path)
    write_bytes_atomic(out_path, stored.SerializeToString())
    return out_path
