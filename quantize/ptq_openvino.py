"""INT8 post-training quantization for OpenVINO: NNCF on the fp32 IR.

``nncf.quantize`` inserts FakeQuantize ops (per-channel int8 weights, per-tensor activations,
min/max statistics plus fast bias correction) that OpenVINO's CPU plugin runs as INT8 kernels.
The nodes to keep in float are found on the ONNX graph (``quantize.int8_scope``) and mapped to
OpenVINO op names: the ONNX frontend names each op after its ONNX node, sometimes with a
suffix (``/head/Conv`` becomes ``/head/Conv/WithoutBiases`` + an ``Add``), so an OpenVINO op
matches a node by exact name or by ``name + "/"`` prefix.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from quantize.openvino_precision import (
    FLOAT_PRECISIONS,
    coordinate_ops,
    mark_precise,
    set_runtime_precision,
)

# NNCF's activation range estimators (``RangeEstimatorParametersSet``), its default first:
# mean over the images of each image's min / max.
RANGE_ESTIMATORS: tuple[str, ...] = ("mean_minmax", "minmax", "mean_quantile", "histogram")


def openvino_names_for(ov_model: object, onnx_node_names: Iterable[str]) -> list[str]:
    """OpenVINO op names (``get_friendly_name``) of ``ov_model`` stemming from the ONNX nodes.

    Args:
        ov_model: an ``openvino.Model`` converted from the ONNX graph.
        onnx_node_names: ONNX node names.

    Returns:
        Sorted OpenVINO op names; constants are left out (NNCF never quantizes them).
    """
    wanted = set(onnx_node_names)
    found = set()
    for op in ov_model.get_ops():  # type: ignore[attr-defined]
        if op.get_type_name() in ("Constant", "Parameter", "Result"):
            continue
        name = op.get_friendly_name()
        if name in wanted or any(name.startswith(prefix + "/") for prefix in _prefixes(name)
                                 if prefix in wanted):
            found.add(name)
    return sorted(found)


def _prefixes(name: str) -> list[str]:
    """``/a/b/c`` -> ``["/a/b", "/a"]``: the names ``name`` could extend by ``/suffix``."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def quantize_openvino(
    fp32_xml: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    calibration_images: Sequence[np.ndarray],
    ignored_names: Sequence[str] = (),
    name: str = "model",
    range_estimator: str | None = None,
    float_precision: str = "f32",
) -> tuple[Path, Path]:
    """Write the INT8 IR ``out_dir/{name}.xml`` + ``.bin`` quantized from ``fp32_xml``.

    Args:
        fp32_xml: the fp32 IR from ``quantize.export_openvino``.
        out_dir: directory of the INT8 IR (created if missing); files appear atomically,
            ``.bin`` first.
        calibration_images: preprocessed inputs, each ``(1, 3, H, W)`` float32.
        ignored_names: OpenVINO op names to keep in float (``openvino_names_for``).
        name: file stem of the IR.
        range_estimator: one of ``RANGE_ESTIMATORS`` for the activations (None: NNCF's
            default, ``mean_minmax``).
        float_precision: ``f32``, or ``bf16``: the ops left in float run in bf16 except the
            sampling coordinates (``quantize.openvino_precision``).

    Returns:
        ``(xml_path, bin_path)``.

    Raises:
        ValueError: no calibration images, an unknown range estimator or float precision.
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if not calibration_images:
        raise ValueError("INT8 calibration needs at least one image")
    if float_precision not in FLOAT_PRECISIONS:
        raise ValueError(f"unknown float precision {float_precision!r}; choose from "
                         f"{', '.join(FLOAT_PRECISIONS)}")
    if range_estimator is not None and range_estimator not in RANGE_ESTIMATORS:
        raise ValueError(f"unknown range estimator {range_estimator!r}; choose from "
                         f"{', '.join(RANGE_ESTIMATORS)}")
    advanced = AdvancedQuantizationParameters()
    if range_estimator is not None:
        advanced.activations_range_estimator_params = getattr(
            RangeEstimatorParametersSet, range_estimator.upper())
    # NNCF logs one INFO line per node it leaves unquantized; the report lists them instead.
    nncf.set_log_level(logging.WARNING)
    model = ov.Core().read_model(str(fp32_xml))
    dataset = nncf.Dataset([np.ascontiguousarray(x, dtype=np.float32)
                            for x in calibration_images])
    quantized = nncf.quantize(
        model, dataset, subset_size=len(calibration_images),
        # validate=False: an ONNX node OpenVINO folded away has no op left to ignore.
        ignored_scope=nncf.IgnoredScope(names=list(ignored_names), validate=False),
        advanced_parameters=advanced,
    )
    precise_ops: list[str] = []
    if float_precision != "f32":
        set_runtime_precision(quantized, float_precision)
        precise_ops = coordinate_ops(quantized)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml_path, bin_path = out_dir / f"{name}.xml", out_dir / f"{name}.bin"
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=out_dir) as tmp:
        tmp_xml = Path(tmp) / f"{name}.xml"
        ov.save_model(quantized, str(tmp_xml), compress_to_fp16=False)
        if precise_ops:
            mark_precise(tmp_xml, precise_ops)
        os.replace(tmp_xml.with_suffix(".bin"), bin_path)
        os.replace(tmp_xml, xml_path)
    return xml_path, bin_path


def fake_quantize_count(xml_path: str | os.PathLike[str]) -> int:
    """How many ``FakeQuantize`` ops the IR holds (0 for an fp32 IR)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
