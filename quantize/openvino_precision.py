"""The precision of an OpenVINO INT8 IR's float ops: f32, or bf16 with the sampling
coordinates kept f32.

OpenVINO's CPU plugin computes the ops NNCF left in float in the precision of
``INFERENCE_PRECISION_HINT``: bf16 by default on CPUs with AVX-512 BF16, f32 as the SDK
backend asks unless the IR says otherwise. bf16 has an 8-bit mantissa: a P&A or deformable
sampling point at x ~ 40 lands on a 0.25-pixel grid (the zoo PASSD's INT8 IR lost 14 AP with
every float op in bf16). The coordinates are a small part of the float work, though; the
bilinear reads, the tap sums and the attend projection are most of it and tolerate bf16.

``--float-precision bf16`` (``quantize/run.py``, openvino target) therefore writes two things
into the INT8 IR:

* on every op that computes a ``Gather`` index or a ``GridSample`` grid (walking back from
  those inputs to the nearest weight layer, FakeQuantize or the graph input), the rt_info
  attribute ``precise`` — the IR name of OpenVINO's ``DisableFP16Compression``, which the CPU
  plugin honours by keeping the op in its original f32 (the Python API cannot set this typed
  attribute, hence the XML edit);
* the model-level runtime option ``INFERENCE_PRECISION_HINT = bf16``, which
  ``edgedet.backends.openvino`` applies instead of its f32 default.

The accuracy check then measures the artifact as it will run. That matters because the mark
is not watertight: the CPU plugin drops it on ops it rewrites before compiling (an
``Unsqueeze`` it turns into a ``Reshape`` of its own, a scalar-index ``Gather``), so a few
layout steps of the coordinates still pass through bf16. Measured on the zoo PASSD's INT8 IR
(200 images): f32 AP 43.37; everything float in bf16 28.93; coordinates marked 42.77.
Timed against the f32 IR alone (the two compiled side by side, 30 interleaved rounds) it was
7.5% and 11% faster in two runs; among the other models of ``benchmarks/speed.py`` the
difference drowns in this machine's noise. Rewriting the dropped ops into marked
``Reshape`` s beforehand left AP at 42.78, so the rest of the loss is bf16 in the reads and
tap sums themselves (marking the bilinear-weight math too, 2026-12-04, left AP where it was).
Since the openvino target lets its sampling reads into INT8 (``quantize.int8_scope``), the
tables and tap sums run in INT8 under either hint, and with them the paper-width INT8 IR runs
as fast with f32 float ops as with bf16. Hence an option, not the default of
``quantize/run.py``. Where speed
matters more than those 0.6 AP it pays: the zoo's OpenVINO build of the PASSD
(``passd_mobilenet_int8_openvino``) uses it: in three interleaved ``benchmarks/speed.py``
runs (2026-12-04, evening) it ran at 1.46-1.56x OpenVINO's bf16 default of the fp32 model and
2.39-2.68x its f32 model.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

FLOAT_PRECISIONS: tuple[str, ...] = ("f32", "bf16")
PRECISE_ATTRIBUTE = {"name": "precise", "version": "0"}

# Where the walk back from a sampling input stops: these ops produce the coordinates' inputs
# (features, weights, images), not the coordinate math itself.
_STOP_OPS = frozenset({"Parameter", "Constant", "Convolution", "GroupConvolution",
                       "FakeQuantize", "MatMul"})
# Op type -> the input holding sampling positions.
_POSITION_INPUTS = {"Gather": 1, "GatherND": 1, "GatherElements": 1, "GridSample": 1,
                    "EmbeddingBagPackedSum": 1}  # (quantize.openvino_embedding_bag's reads)


def coordinate_ops(model: object) -> list[str]:
    """Friendly names of the ops of ``model`` (an ``openvino.Model``) that compute sampling
    positions: everything feeding a gather's indices or a ``GridSample`` grid, back to the
    nearest weight layer, FakeQuantize, constant or graph input."""
    found: set[str] = set()
    pending = [op.input_value(_POSITION_INPUTS[op.get_type_name()]).get_node()
               for op in model.get_ops()  # type: ignore[attr-defined]
               if op.get_type_name() in _POSITION_INPUTS]
    while pending:
        node = pending.pop()
        name = node.get_friendly_name()
        if node.get_type_name() in _STOP_OPS or name in found:
            continue
        found.add(name)
        pending.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return sorted(found)


def set_runtime_precision(model: object, precision: str) -> None:
    """Record ``precision`` as the ``INFERENCE_PRECISION_HINT`` of ``model`` (an
    ``openvino.Model``), where ``edgedet.backends.openvino`` reads it."""
    from edgedet.backends.openvino import RUNTIME_PRECISION_OPTION

    if precision not in FLOAT_PRECISIONS:
        raise ValueError(f"unknown float precision {precision!r}; choose from "
                         f"{', '.join(FLOAT_PRECISIONS)}")
    model.set_rt_info(precision, list(RUNTIME_PRECISION_OPTION))  # type: ignore[attr-defined]


def mark_precise(xml_path: str | os.PathLike[str], op_names: list[str]) -> int:
    """Add the ``precise`` rt_info attribute to the IR layers named ``op_names`` (in place;
    call it on a file not yet renamed into its final place). Returns how many were marked.

    Raises:
        ValueError: a name is not a layer of the IR.
    """
    path = Path(xml_path)
    tree = ET.parse(path)
    layers = {layer.get("name"): layer for layer in tree.getroot().iter("layer")}
    missing = sorted(set(op_names) - set(layers))
    if missing:
        raise ValueError(f"{path}: no layers named {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
    for name in op_names:
        layer = layers[name]
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layer.insert(0, rt_info)
        if not any(a.attrib == PRECISE_ATTRIBUTE for a in rt_info.iter("attribute")):
            ET.SubElement(rt_info, "attribute", PRECISE_ATTRIBUTE)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return len(op_names)
