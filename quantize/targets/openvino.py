"""Target ``openvino``: OpenVINO IR — fp32 converted from the ONNX export
(``quantize.export_openvino``), INT8 by NNCF post-training quantization of that IR
(``quantize.ptq_openvino``)."""

from __future__ import annotations

from edgedet.artifact import MODEL_STEM
from quantize.int8_scope import DEFAULT_KEEP_FLOAT
from quantize.openvino_precision import FLOAT_PRECISIONS
from quantize.ptq_openvino import RANGE_ESTIMATORS
from quantize.targets import BuildRequest, BuiltModel, Target


def build(request: BuildRequest) -> BuiltModel:
    from quantize.export_openvino import export_openvino, save_ir
    from quantize.openvino_embedding_bag import tap_sums_as_embedding_bags

    xml_name, bin_name = f"{MODEL_STEM}.xml", f"{MODEL_STEM}.bin"
    bags = TARGET.float_reads_as_embedding_bags
    if request.precision == "fp32":
        # Each Gather read and its tap sum as one EmbeddingBagPackedSum: no gathered rows
        # written in between (quantize.openvino_embedding_bag; paper-width PASSD, f32
        # inference 38.4 -> 31.3 ms, the bf16 default 13.8 -> 11.9). A folder of its own:
        # an INT8 build in the same work_dir starts from the plain conversion.
        xml, weights = export_openvino(
            request.onnx_fp32, request.work_dir / ("ov_fp32_bags" if bags else "ov_fp32"),
            transform=tap_sums_as_embedding_bags if bags else None)
        return BuiltModel({xml_name: xml, bin_name: weights}, [])
    # NNCF quantizes the converted graph as it is: its Gather reads INT8 rows and its tap
    # sums are INT8 products (the int8_scope's sampling_reads).
    fp32_dir = request.work_dir / "ov_fp32"
    xml, weights = fp32_dir / xml_name, fp32_dir / bin_name
    if not xml.is_file():  # convert once
        xml, weights = export_openvino(request.onnx_fp32, fp32_dir)
    import openvino as ov

    from quantize.ptq_openvino import openvino_names_for, quantize_openvino

    assert request.calibration is not None, "INT8 needs calibration images"
    ignored = openvino_names_for(ov.Core().read_model(str(xml)), request.keep_float)
    xml8, weights8 = quantize_openvino(xml, request.work_dir / "ov_int8", request.calibration,
                                       ignored, range_estimator=request.calibration_method,
                                       float_precision=request.float_precision)
    # Where the reads stayed float (accuracy control put sampling_reads back), each read and
    # its per-anchor tap sum as one EmbeddingBagPackedSum too (paper-width PASSD 13.64 ->
    # 8.81 ms); the INT8 reads' block-diagonal products are left as they are. Not with bf16
    # float ops: reading and saving the IR again drops the layers' ``precise`` marks that
    # keep the coordinates f32 (quantize.openvino_precision).
    if bags and request.float_precision == "f32" \
            and "sampling_reads" in request.keep_float_categories:
        model8 = ov.Core().read_model(str(xml8))
        if tap_sums_as_embedding_bags(model8):
            xml8, weights8 = save_ir(model8, request.work_dir / "ov_int8_bags")
    notes = () if request.float_precision == "f32" else (
        f"the ops kept out of INT8 compute in {request.float_precision} except the sampling "
        "coordinates, which stay f32 (`--float-precision`, `quantize/openvino_precision.py`)",)
    return BuiltModel({xml_name: xml8, bin_name: weights8}, ignored,
                      manifest_extra={"float_precision": request.float_precision}, notes=notes)


TARGET = Target(
    name="openvino",
    backend="openvino",
    summary="OpenVINO IR (fp32, INT8 by NNCF)",
    precisions=("fp32", "int8"),
    # NNCF quantizes only op inputs, so the head's outputs stay float without keeping the
    # head out: measured on the zoo's passd_mobilenet, OpenVINO INT8 ΔAP +0.14 with it
    # quantized.
    # The sampling reads go to INT8 (quantize.int8_scope): NNCF then puts one quantizer on
    # each projected table and one on the bilinear weights, and the CPU plugin runs the
    # Gather on int8 rows and the tap sum as an INT8 MatMul. Paper-width PASSD (80 classes),
    # INT8 with bf16 float ops, one interleaved run: 16.64 -> 15.02 ms (1.47x -> 1.63x the
    # bf16 default of the fp32 model).
    default_keep_float=tuple(c for c in DEFAULT_KEEP_FLOAT if c != "sampling_reads"),
    # With INT8 reads the CPU plugin sums a position's anchors faster in one product on the
    # AMX tiles (G rows instead of one); in float the G-fold multiply-adds cost more.
    # Paper-width PASSD, two interleaved runs on the AMX CPU: INT8 9.54 / 10.22 -> 8.96 /
    # 9.40 ms; the same form in the fp32 IR's bf16 default 13.74 / 14.37 -> 15.66 / 16.43,
    # so fp32 builds and INT8 builds with float reads keep one product per anchor.
    int8_reads_in_one_product=True,
    # The Gather read's row indices in float32 (OpenVINO keeps the coordinates in f32, also
    # with --float-precision bf16): fused with the coordinate math instead of i32 nodes of
    # their own (quantize.rewrites.sampling).
    sampling_rows_in_float=True,
    # (build: the fp32 IR and INT8 IRs with float reads; INT8 reads keep Gather + product.)
    float_reads_as_embedding_bags=True,
    build=build,
    calibration_methods=RANGE_ESTIMATORS,
    # bf16 float ops with f32 sampling coordinates (quantize.openvino_precision): measured on
    # the zoo PASSD's INT8 IR, 7.5-11% faster than with f32 float ops, at ΔAP -0.6.
    float_precisions=FLOAT_PRECISIONS,
)
