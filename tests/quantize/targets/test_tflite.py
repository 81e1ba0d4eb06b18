"""Target ``tflite``: fp32 + INT8 ``.tflite`` artifacts of the tiny PASSD through the whole
pipeline (conversion, accuracy check on the tflite backend, report), the INT8 file's float
scope, and the SDK running them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgedet.artifact import load_manifest
from edgedet.backends.tflite import TFLiteBackend
from edgedet.detector import Detector
from quantize.convert import ConvertConfig, convert
from quantize.ptq_tflite import TFLiteGraph
from tests.quantize.tiny_checkpoint import write_tiny_checkpoint

pytest.importorskip("litert_torch", reason="needs edgedet[tflite-export]")

SMALL = dict(calib_size=4, eval_size=3, progress=False, device="cpu",
             allow_weak_reference=True)  # an untrained model: AP 0


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, object]:
    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
    out = tmp_path_factory.mktemp("tflite")
    report = convert(ConvertConfig(checkpoint=checkpoint, target="tflite", out=out, **SMALL))
    return out, report


def test_both_artifacts_pass_on_the_tflite_backend(converted):
    out, report = converted
    assert report.passed and [a.precision for a in report.artifacts] == ["fp32", "int8"]
    for artifact in report.artifacts:
        assert (artifact.backend, artifact.checked_on) == ("tflite", "tflite")
        manifest = load_manifest(out / artifact.name)
        assert manifest["backend"] == "tflite" and list(manifest["files"]) == ["model.tflite"]
        assert any("NCHW" in note for note in artifact.notes)
    int8 = report.artifacts[1]
    assert any(note.startswith("kept in float: sampling:") for note in int8.notes)
    saved = json.loads((out / "report.json").read_text())
    assert saved["target"] == "tflite" and saved["artifacts"][1]["notes"] == int8.notes


def _tensor_types(path: Path) -> dict[str, str]:
    """``{"i:OPCODE": dtype of the op's first input}`` of a ``.tflite`` file."""
    from ai_edge_litert.interpreter import Interpreter

    details = {d["index"]: np.dtype(d["dtype"]).name
               for d in Interpreter(model_path=str(path)).get_tensor_details()}
    graph = TFLiteGraph(path)
    return {node.name: details.get(int(node.inputs[0][1:]), "?") for node in graph.nodes
            if node.inputs}


def test_int8_file_keeps_the_sampling_float_and_the_convs_int8(converted):
    out, _ = converted
    path = out / "tiny_passd_int8" / "model.tflite"
    types = _tensor_types(path)
    gathers = [t for name, t in types.items() if name.endswith(":GATHER_ND")]
    convs = [t for name, t in types.items() if name.endswith(":CONV_2D")]
    assert gathers and set(gathers) == {"float32"}  # the sampling reads float maps
    assert convs and convs.count("int8") >= len(convs) // 2  # the weight layers run INT8
    backend = TFLiteBackend(path, threads=1)
    assert backend.input_shape[1] == 3  # NCHW, int8 quantized inside the backend


def test_int8_file_joins_the_levels_in_float(converted):
    """The default ``outputs`` category: the Concat joining every level's logits and the
    outputs stay float (one INT8 scale over all levels coarsened the scores)."""
    from ai_edge_litert.interpreter import Interpreter

    out, report = converted
    path = out / "tiny_passd_int8" / "model.tflite"
    outputs = Interpreter(model_path=str(path)).get_output_details()
    assert outputs and {np.dtype(d["dtype"]).name for d in outputs} == {"float32"}
    concats = [t for name, t in _tensor_types(path).items() if name.endswith(":CONCATENATION")]
    assert concats and set(concats) == {"float32"}
    assert any("ranges: moving-average" in note for note in report.artifacts[1].notes)


def test_detector_auto_runs_the_tflite_artifact(converted):
    out, _ = converted
    detector = Detector(out / "tiny_passd_int8", backend="tflite")
    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    first = detector.detect(frame)
    again = Detector(out / "tiny_passd_int8").detect(frame)  # "auto" picks the manifest's
    np.testing.assert_array_equal(first.xyxy, again.xyxy)
    np.testing.assert_array_equal(first.scores, again.scores)


def test_accuracy_control_finds_each_onnx_layer_in_the_tflite_file(converted, tmp_path):
    """Layers returned to float are named by ONNX node; the tflite target finds each one's op
    by its weights and keeps exactly that op out of INT8."""
    import onnx

    from edgedet.models.checkpoint import build_from_checkpoint
    from quantize.calibration import calibration_inputs, open_image_set
    from quantize.export_onnx import export_onnx
    from quantize.int8_scope import layer_units
    from quantize.ptq_tflite import quantize_tflite, tflite_ops_for
    from quantize.rewrites import rewrite_for_export
    from tests.quantize.tiny_checkpoint import FRAGILE_LAYER, INPUT_SIZE

    out, report = converted
    model, config = build_from_checkpoint(report.checkpoint)
    onnx_path = export_onnx(rewrite_for_export(model), tmp_path / "model.onnx", INPUT_SIZE)
    fp32 = out / "tiny_passd_fp32" / "model.tflite"
    graph = TFLiteGraph(fp32)
    layers = list(layer_units(onnx.load(str(onnx_path))))
    found = tflite_ops_for(graph, onnx_path, layers)
    assert set(found) == set(layers) and len(set(found.values())) == len(layers)  # one-to-one
    assert found[FRAGILE_LAYER].endswith(":DEPTHWISE_CONV_2D")

    from edgedet.preprocess import PreprocessConfig

    images = calibration_inputs(open_image_set("synthetic", 2, INPUT_SIZE, 2, False).samples,
                                PreprocessConfig.from_dict(config["preprocess"]))
    path, kept = quantize_tflite(fp32, tmp_path / "int8.tflite", images, ("sampling",),
                                 [FRAGILE_LAYER], onnx_path)
    assert kept["accuracy control"] == [found[FRAGILE_LAYER]]
    # Op indices shift in the INT8 file (quantize ops are inserted): find it by its weights.
    float_depthwise = [name for name, dtype in _tensor_types(path).items()
                       if name.endswith(":DEPTHWISE_CONV_2D") and dtype == "float32"]
    assert len(float_depthwise) == 1
    np.testing.assert_array_equal(TFLiteGraph(path).weights[float_depthwise[0]],
                                  graph.weights[found[FRAGILE_LAYER]])
