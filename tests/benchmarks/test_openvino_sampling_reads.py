import pytest
import torch

ov = pytest.importorskip("openvino")
from benchmarks.openvino_sampling_reads import read_kernels, tap_sums  # noqa: E402
from benchmarks.pa_attend_conv import (  # noqa: E402
    ProjectThenGather,
    _random_boxes,
    export_variant,
    random_attend_conv,
)


def test_the_tap_sum_is_found_and_the_profile_names_its_kernels(tmp_path):
    conv = random_attend_conv(8, 5, 2)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 8, 6, 6, generator=generator)
    boxes = _random_boxes(6, 8, 2, generator)
    path = export_variant(ProjectThenGather(conv, 8.0), features, boxes, tmp_path / "g.onnx")
    core = ov.Core()
    model = core.read_model(str(path))
    names = tap_sums(model)
    assert len(names) == 1  # the tap sum, not the projection MatMul
    request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                "PERF_COUNT": True}).create_infer_request()
    request.infer({"features": features.numpy(), "boxes": boxes.numpy()})
    kernels = read_kernels(request, names)
    assert set(kernels) == {"Gather", "tap sum"}
    for found, share in kernels.values():
        assert found and not any("i8" in k.lower() for k in found)  # an fp32 model
        assert 0 < share < 1
