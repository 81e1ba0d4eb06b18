"""Target ``cpu``: ONNX for ONNX Runtime — the fp32 export (as it is but for PASSD's tables),
INT8 as QDQ ONNX (``quantize.ptq_onnx``); either with its float weights stored as float16 on
request (``quantize.weight_storage``). PASSD's attend-stage tap sum runs in the SDK
(``edgedet.attend_tail``): the INT8 model hands over its uint8 tables, the fp32 model
computes its tables as channels-last products (``quantize.attend_tail.tables_as_matmul``)."""

from __future__ import annotations

from dataclasses import replace

from edgedet.artifact import MODEL_STEM
from quantize.attend_tail import expose_uint8_tables, tail_head, tail_spec, write_tables_as_matmul
from quantize.int8_scope import DEFAULT_KEEP_FLOAT
from quantize.targets import BuildRequest, BuiltModel, Target
from quantize.weight_storage import WEIGHT_STORAGES, store_file_float16


def build(request: BuildRequest) -> BuiltModel:
    name = f"{MODEL_STEM}.onnx"
    extra: dict[str, object] = {}
    notes: list[str] = []
    if request.precision == "fp32":
        path, kept = request.onnx_fp32, []
        if tail_head(request.model) is not None:  # the tables as channels-last products
            path = write_tables_as_matmul(path, request.work_dir / "model_fp32_tables.onnx")
    else:
        from quantize.ptq_onnx import ONNXRUNTIME_CPU, quantize_onnx, with_calibration

        assert request.calibration is not None, "INT8 needs calibration images"
        scheme = replace(ONNXRUNTIME_CPU, weight_bits=request.int8_weight_bits)
        path = quantize_onnx(request.onnx_fp32, request.work_dir / "model_int8.onnx",
                             request.calibration, request.keep_float,
                             scheme=with_calibration(scheme, request.calibration_method))
        kept = list(request.keep_float)
        if request.int8_weight_bits != 8:
            extra["int8_weight_bits"] = request.int8_weight_bits
            notes.append(f"INT8 weights in {request.int8_weight_bits} bits (-64..64): no sum "
                         "clips on x86 CPUs without VNNI")
    if tail_head(request.model) is not None:
        quantization: dict[str, tuple[float, float]] = {}
        if request.precision == "int8":
            exposed = request.work_dir / "model_int8_tail.onnx"
            quantization = expose_uint8_tables(path, exposed)
            path = exposed
        feature_sizes = request.model.anchor_spec(request.input_size).feature_sizes
        spec = tail_spec(request.model, feature_sizes, quantization)
        assert spec is not None
        extra["attend_tail"] = spec.to_dict()
    if request.weight_storage == "float32":
        return BuiltModel({name: path}, kept, manifest_extra=extra, notes=tuple(notes))
    stored = store_file_float16(
        path, request.work_dir / f"{path.stem}_{request.precision}_{request.weight_storage}.onnx")
    return BuiltModel({name: stored}, kept,
                      manifest_extra={**extra, "weight_storage": request.weight_storage},
                      notes=(*notes, "float weights stored as float16 and cast to float32 when "
                             "the model loads; compute is float32"))


TARGET = Target(
    name="cpu",
    backend="onnxruntime",
    summary="ONNX for ONNX Runtime (fp32, INT8 QDQ)",
    precisions=("fp32", "int8"),
    # ONNX Runtime's QDQ quantizer also rounds each quantized conv's OUTPUT to INT8 (so that
    # it runs as one integer kernel), which for the head means the raw logits and box deltas
    # themselves, per tensor. Until accuracy control, the whole head stayed float for that
    # (measured on the zoo's first passd_mobilenet, AP 29.9: ΔAP -1.09 with it quantized,
    # -0.79 without); now the head starts in INT8 and only the layers the sensitivity ranking
    # and the check single out go back to float.
    # HAR-Net's cross-level group norm stays float ("norms"): in INT8 ONNX Runtime puts a
    # QLinearConcat and a quantize / dequantize between each of its joins, reshapes and
    # splits. Float is faster (pruned HAR-Net INT8 10.70 -> 10.16 ms, unpruned 18.43 ->
    # 17.93; one interleaved run, 2 threads). On OpenVINO the same change gained nothing
    # (pruned 8.43 -> 8.44 ms), so the openvino target keeps it INT8.
    # DAIPNet's image pyramid pools the input image: ONNX Runtime runs those uint8 MaxPools
    # on the channels-first input without its fast (NHWC) kernel; in float they change no
    # value and DAIPNet's INT8 model runs 12.56 -> 11.61 ms ("input_pools").
    default_keep_float=(*DEFAULT_KEEP_FLOAT, "norms", "input_pools"),
    build=build,
    # No "entropy": ONNX Runtime 1.32's entropy calibrator returns the plain min/max ranges
    # (checked on a small graph; on the zoo PASSD it gave min/max's ΔAP to the digit, 3 runs).
    calibration_methods=("minmax", "percentile"),
    rounds_outputs=True,
    # ONNX Runtime's GridSample reads the projected maps far faster than the Gather form:
    # benchmarks/pa_attend_conv.py (paper-width attend conv, 40x40, fp32, 2 threads, one
    # interleaved run) 23.2 ms vs 40.5 ms, against 18.2 ms for a plain 3x3 conv there. With the
    # attend tail (below) it reads HAR-Net's deformable sampling; PASSD's P&A head ends
    # before any read.
    sampler="grid_sample",
    # PASSD's attend tap sum in the SDK (edgedet.attend_tail): ONNX Runtime's GridSample
    # walks its plan once per channel in scalar code, and an INT8 graph dequantizes the
    # whole table for it. One interleaved run on the AMX CPU (docs/performance_amx_history.md):
    # zoo PASSD INT8 11.84 -> 9.92 ms, fp32 23.83 -> 23.31; paper-width (80 classes) INT8
    # 12.48 ms against the in-graph fp32's 32.91 (the tail's fp32 34.34). An fp32 build
    # computes the tables as channels-last MatMuls (quantize.attend_tail.tables_as_matmul).
    attend_tail=True,
    # float16 storage halves a float model's file (the paper-width PASSD: 24.0 -> 12.2 MiB);
    # ONNX Runtime folds the casts at load time, so it runs the same float32 graph.
    weight_storages=WEIGHT_STORAGES,
    # 7-bit weights for x86 CPUs without VNNI, whose INT8 kernels can clip 8-bit ones
    # (quantize.ptq_onnx.QdqScheme.weight_bits). Not the default: on an AVX2 EPYC without
    # VNNI (2026-12-06) every zoo model's 8-bit INT8 file scored within 0.07 AP of its AP on
    # the VNNI machine that checked it, and 7 bits cost precision on every CPU.
    int8_weight_bits=(8, 7),
)
