"""``benchmarks/pa_attend_conv.py``: every attend-stage variant it times computes the training
module's function (the plain conv, the speed floor, excepted)."""

import copy

import numpy as np
import pytest
import torch

from benchmarks.pa_attend_conv import (
    PLAIN_CONV,
    TrainingModule,
    _random_boxes,
    attend_variants,
    random_attend_conv,
)


def _head_layout(out: torch.Tensor, outputs: int) -> torch.Tensor:
    """``(N, A*O, H, W)`` or ``(N, H*W*A, O)`` -> ``(N, H*W*A, O)``."""
    if out.dim() == 4:
        out = out.permute(0, 2, 3, 1)
    return out.reshape(out.shape[0], -1, outputs)


@pytest.mark.parametrize("size", [1, 5])  # a one-cell map: every tap's corners fall outside
def test_every_variant_equals_the_training_module(size: int) -> None:
    conv = random_attend_conv(8, 5, 2).double()
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 8, size, size, generator=generator, dtype=torch.float64)
    # Boxes spread wide, so that taps reach past every edge of the map.
    boxes = _random_boxes(size, 8, 2, generator).double() * torch.tensor([1, 1, 2.5, 2.5])
    with torch.no_grad():
        expected = _head_layout(TrainingModule(copy.deepcopy(conv), 8.0)(features, boxes), 5)
        variants = attend_variants(conv, 8.0)
        assert list(variants)[-1] == PLAIN_CONV
        for name, module in variants.items():
            if name == PLAIN_CONV:
                continue
            if hasattr(module, "finish"):  # its last step is the SDK's float32 kernel
                got = module.float()(features.float(), boxes.float())
                got = torch.from_numpy(module.finish([t.numpy() for t in got])).double()
                atol = 1e-5
            else:
                got, atol = module.double()(features, boxes), 1e-9
            got = _head_layout(got, 5)
            assert got.shape == expected.shape, name
            assert torch.allclose(got, expected, atol=atol), name


def test_the_kernel_variant_reads_both_runtimes_outputs_in_order(tmp_path) -> None:
    # head_output takes the runtime's outputs in the graph's order (table, points): ONNX
    # Runtime's list from bound buffers and OpenVINO's dict of shared tensors alike.
    pytest.importorskip("onnxruntime")
    ov = pytest.importorskip("openvino")
    import onnxruntime as ort

    from benchmarks.common.timing import bound_ort_call
    from benchmarks.pa_attend_conv import ProjectThenKernel, export_variant, head_output

    conv = random_attend_conv(8, 5, 2)
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 8, 4, 6, generator=generator)  # not square: H and W apart
    boxes = _random_boxes(6, 8, 2, generator)[:, :4]
    with torch.no_grad():
        expected = _head_layout(TrainingModule(copy.deepcopy(conv), 8.0)(features, boxes), 5)
    module = ProjectThenKernel(conv, 8.0, threads=1)
    path = export_variant(module, features, boxes, tmp_path / "kernel.onnx")
    import onnx  # the table as the cpu target builds it in fp32

    assert [n.op_type for n in onnx.load(str(path)).graph.node if "table" in n.output] == [
        "MatMul"]
    feed = {"features": features.numpy(), "boxes": boxes.numpy()}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    from_ort = head_output(module, bound_ort_call(session, feed)())
    request = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
                                      ).create_infer_request()
    from_openvino = head_output(module, request.infer(feed, share_outputs=True))
    for got in (from_ort, from_openvino):
        assert torch.allclose(torch.from_numpy(np.asarray(got)), expected, atol=1e-5)


def test_the_embedding_bag_variant_is_one_bag_in_openvino(tmp_path) -> None:
    # What OpenVINO runs of the openvino target's fp32 form: the Gather form's file after
    # quantize.openvino_embedding_bag's pass, equal to the training module.
    ov = pytest.importorskip("openvino")
    from benchmarks.pa_attend_conv import EMBEDDING_BAG, export_variant, openvino_model_path

    conv = random_attend_conv(8, 5, 2)
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 8, 5, 5, generator=generator)
    boxes = _random_boxes(5, 8, 2, generator) * torch.tensor([1, 1, 2.5, 2.5])
    module = attend_variants(conv, 8.0)[EMBEDDING_BAG]
    xml = openvino_model_path(module, export_variant(module, features, boxes,
                                                     tmp_path / "bag.onnx"))
    types = [op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ordered_ops()]
    assert "EmbeddingBagPackedSum" in types and "Gather" not in types
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = torch.from_numpy(np.asarray(compiled({"features": features.numpy(),
                                                "boxes": boxes.numpy()})[0]))
    with torch.no_grad():
        expected = _head_layout(TrainingModule(copy.deepcopy(conv), 8.0)(features, boxes), 5)
    assert torch.allclose(_head_layout(got, 5), expected, atol=1e-5)
