"""Deployment targets: a table of one-file entries (``python quantize/run.py --target NAME``).

A target turns the rewritten model's fp32 ONNX export (or the rewritten model itself) plus
calibration images into the model files of one artifact per precision. Everything around it
(export, calibration data, the accuracy check, the report, writing the artifacts) is the
shared pipeline's (``quantize.convert``). Adding a target is one module here that defines a
``Target`` plus one entry in ``TARGETS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn


@dataclass(frozen=True)
class BuildRequest:
    """What a target gets to build one artifact's model files.

    Attributes:
        precision: the artifact's precision (one of the target's ``precisions``).
        onnx_fp32: the rewritten model exported to ONNX (fp32, static shapes, input
            ``images (1, 3, H, W)``).
        model: the rewritten PyTorch model the ONNX file was exported from (eval mode).
        input_size: ``(width, height)`` of the model input.
        work_dir: scratch folder of this target, shared by its precisions (e.g. the fp32 IR
            that INT8 starts from); deleted after the run.
        calibration: preprocessed calibration inputs, each ``(1, 3, H, W)`` float32; None
            when no INT8 artifact is built.
        keep_float: ONNX node names to keep out of INT8 (``quantize.int8_scope``).
        keep_float_categories: the ``quantize.int8_scope.CATEGORIES`` those names come from,
            for targets that find the same scope on a graph of their own (TFLite).
        float_layers: weight layers (ONNX node names) accuracy control returned to float;
            their units (``int8_scope.layer_units``) are already in ``keep_float``, for
            targets that map them onto a graph of their own.
        calibration_method: one of the target's ``calibration_methods`` (None: its default).
        float_precision: one of the target's ``float_precisions``: what an INT8 artifact's
            ops left in float compute in (``f32``, or e.g. ``bf16`` on OpenVINO).
        int8_weight_bits: one of the target's ``int8_weight_bits``: the range of INT8
            weights (7: for CPUs without VNNI, ``quantize.ptq_onnx.QdqScheme.weight_bits``).
    """

    precision: str
    onnx_fp32: Path
    model: nn.Module
    input_size: tuple[int, int]
    work_dir: Path
    calibration: Sequence[np.ndarray] | None
    keep_float: tuple[str, ...]
    keep_float_categories: tuple[str, ...] = ()
    float_layers: tuple[str, ...] = ()
    calibration_method: str | None = None
    float_precision: str = "f32"
    weight_storage: str = "float32"
    int8_weight_bits: int = 8


@dataclass(frozen=True)
class BuiltModel:
    """One artifact's model files (``{name in the artifact: path}``), the op names of its
    runtime that were left in float (empty for a float artifact), manifest sections of the
    target's own (e.g. how TensorRT builds the engine) and notes for the report."""

    files: dict[str, Path]
    kept_out_of_int8: list[str]
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """One deployment target.

    Attributes:
        name: the ``--target`` value.
        backend: the ``edgedet.backends`` entry its artifacts run on.
        summary: one line for ``--help``.
        precisions: the artifacts it can build, in build order.
        default_keep_float: ``quantize.int8_scope.CATEGORIES`` kept out of INT8 by default,
            with the reason in the target's module.
        required_keep_float: categories kept out of INT8 whatever ``--keep-float`` says (its
            runtime's rules need them in float); the run's scope always includes them.
        build: ``BuildRequest -> BuiltModel``.
        check_backend: the ``edgedet.backends`` entry the accuracy check runs the artifacts
            on when ``backend`` cannot run on this machine (None: ``backend`` itself).
        calibration_methods: the activation range estimators its INT8 build accepts as
            ``BuildRequest.calibration_method``, its default first; accuracy control tries
            the others when plain PTQ misses ``--max-drop``.
        rounds_outputs: its runtime also rounds a quantized op's output to INT8 (ONNX
            Runtime's QDQ), which the sensitivity ranking then simulates too.
        sampler: how the P&A and deformable-conv rewrites read bilinear samples
            (``quantize.rewrites.sampling.SAMPLERS``): the form measured fastest on the
            target's runtime among those it takes.
        float_precisions: what the float ops of its INT8 artifacts can compute in
            (``--float-precision``), the default first.
        weight_storages: the dtypes its model files can store float weights in
            (``--weight-storage``), the default first.
        int8_weight_bits: the INT8 weight ranges it can build (``--int8-weight-bits``), the
            default first.
        attend_tail: PASSD's graph ends at the attend stage's tables and sampling points and
            the SDK sums the samples (``edgedet.attend_tail``); the build then writes the
            manifest's ``attend_tail`` section (``quantize.attend_tail``).
        int8_reads_in_one_product: an INT8 build whose sampling reads go to INT8 (the scope
            does not keep ``sampling_reads`` float) exports PASSD's tap sums with a
            position's anchors in one matrix product (``rewrite_for_export``'s
            ``anchors_in_one_product``); every other build keeps one product per anchor,
            which is faster in float (``export_options``).
        sampling_rows_in_float: the ``gather`` read's row indices are computed in float32
            (``rewrite_for_export``'s ``rows_in_float``): for a runtime whose coordinate math
            runs in float32, never FP16.
        float_reads_as_embedding_bags: each ``gather`` read left in float and its tap sum
            become one OpenVINO ``EmbeddingBagPackedSum`` (``quantize.openvino_embedding_bag``):
            in fp32 builds, and INT8 builds whose reads stayed float (f32 float ops).
    """

    name: str
    backend: str
    summary: str
    precisions: tuple[str, ...]
    default_keep_float: tuple[str, ...]
    build: Callable[[BuildRequest], BuiltModel]
    required_keep_float: tuple[str, ...] = ()
    check_backend: str | None = None
    calibration_methods: tuple[str, ...] = ()
    rounds_outputs: bool = False
    sampler: str = "gather"
    float_precisions: tuple[str, ...] = ("f32",)
    weight_storages: tuple[str, ...] = ("float32",)
    int8_weight_bits: tuple[int, ...] = (8,)
    attend_tail: bool = False
    int8_reads_in_one_product: bool = False
    sampling_rows_in_float: bool = False
    float_reads_as_embedding_bags: bool = False

    @property
    def accuracy_backend(self) -> str:
        """The backend the accuracy check runs this target's artifacts on."""
        return self.check_backend or self.backend

    def export_options(self, precision: str = "fp32",
                       keep_float_categories: Sequence[str] = ()) -> dict[str, bool]:
        """``rewrite_for_export``'s keyword options (besides the sampler) for a build of
        ``precision`` whose INT8 scope keeps ``keep_float_categories`` float."""
        return {"attend_tail": self.attend_tail,
                "rows_in_float": self.sampling_rows_in_float,
                "anchors_in_one_product": (self.int8_reads_in_one_product
                                           and precision == "int8"
                                           and "sampling_reads" not in keep_float_categories)}


def _table() -> dict[str, Target]:
    from quantize.targets import cpu, jetson, openvino, tflite

    return {target.name: target
            for target in (cpu.TARGET, openvino.TARGET, jetson.TARGET, tflite.TARGET)}


TARGETS: dict[str, Target] = _table()


def target_named(name: str) -> Target:
    """The ``TARGETS`` entry ``name`` (ValueError listing the known ones)."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") \
            from None
