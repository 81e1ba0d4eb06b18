import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino")
from benchmarks.openvino_int8_tables import quantize_tables, table_projections  # noqa: E402
from benchmarks.pa_attend_conv import (  # noqa: E402
    ProjectThenGather,
    _random_boxes,
    export_variant,
    random_attend_conv,
)


def test_each_sampling_table_gets_one_fake_quantize_and_stays_close(tmp_path):
    conv = random_attend_conv(8, 5, 2)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 8, 6, 6, generator=generator)
    boxes = _random_boxes(6, 8, 2, generator)
    path = export_variant(ProjectThenGather(conv, 8.0), features, boxes, tmp_path / "g.onnx")
    core = ov.Core()
    model = core.read_model(str(path))
    assert len(table_projections(model)) == 1  # the one projection, not the tap-sum MatMul
    feed = {"features": features.numpy(), "boxes": boxes.numpy()}
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    expected = core.compile_model(model, "CPU", config)(feed)[0]

    def count() -> int:
        return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())

    before = count()
    assert quantize_tables(core, model, [feed]) == 1
    assert count() == before + 1
    actual = core.compile_model(model, "CPU", config)(feed)[0]
    scale = float(np.abs(expected).max())
    # 8 bits over the table's range, summed over 9 taps x 4 corners: close, not equal.
    assert 0 < float(np.abs(actual - expected).max()) < 0.05 * scale
