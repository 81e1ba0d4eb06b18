"""``quantize.ptq_tflite``: how the calibration images' ranges become one range, and the
reductions kept in float for XNNPACK."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantize.ptq_tflite import CALIBRATION_METHODS, SIGNATURE, calibrate, widen_zero_ranges


class FakeQuantizer:
    """Stands in for ai-edge-quantizer's ``Quantizer``: each image's range is its pixel min
    and max, and a call over several images keeps a moving average like the real one."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def calibrate(self, data: dict, num_threads: int = 1) -> dict:
        (samples,) = data.values()
        assert list(data) == [SIGNATURE]
        self.calls.append(len(samples))
        merged: dict | None = None
        for sample in samples:
            image = sample["images"]
            qsv = {"min": np.array([image.min()]), "max": np.array([image.max()])}
            merged = qsv if merged is None else {
                k: 0.95 * merged[k] + 0.05 * qsv[k] for k in ("min", "max")}
        return {"x": merged, "empty": {}}


def samples(*ranges: tuple[float, float]) -> list[dict[str, np.ndarray]]:
    return [{"images": np.array([lo, hi], dtype=np.float32)} for lo, hi in ranges]


def test_minmax_keeps_the_extremes_of_every_image():
    engine = FakeQuantizer()
    ranges = calibrate(engine, samples((-1, 2), (-3, 1), (0, 5)), "minmax")
    assert engine.calls == [1, 1, 1]  # one image per call
    assert ranges["x"]["min"].tolist() == [-3.0] and ranges["x"]["max"].tolist() == [5.0]
    assert ranges["empty"] == {}  # tensors without a range stay so


def test_moving_average_is_the_quantizers_own():
    engine = FakeQuantizer()
    ranges = calibrate(engine, samples((-1, 2), (-3, 1)), "moving-average")
    assert engine.calls == [2]
    np.testing.assert_allclose(ranges["x"]["min"], [0.95 * -1 + 0.05 * -3])
    np.testing.assert_allclose(ranges["x"]["max"], [0.95 * 2 + 0.05 * 1])


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown calibration method 'entropy'"):
        calibrate(FakeQuantizer(), samples((0, 1)), "entropy")


def test_an_all_zero_tensor_gets_a_range_xnnpack_takes():
    # All-zero images: the range is [0, 0], which ai-edge-quantizer would turn into a scale of
    # 1e-9 / 255; both merge methods widen it to [0, 1]. A real range, however small, and a
    # constant other than zero stay as they were.
    for method in CALIBRATION_METHODS:
        zero = calibrate(FakeQuantizer(), samples((0, 0), (0, 0)), method)["x"]
        assert (zero["min"].tolist(), zero["max"].tolist()) == ([0.0], [1.0]), method
        real = calibrate(FakeQuantizer(), samples((-1e-3, 1e-3)), method)["x"]
        assert (real["min"].tolist(), real["max"].tolist()) == ([pytest.approx(-1e-3)],
                                                                [pytest.approx(1e-3)])
    per_channel = {"y": {"min": np.array([0.0, -2.0, 5.0]), "max": np.array([0.0, 3.0, 5.0])},
                   "z": {}}
    assert widen_zero_ranges(per_channel) == ["y"]
    assert per_channel["y"]["min"].tolist() == [0.0, -2.0, 5.0]
    assert per_channel["y"]["max"].tolist() == [1.0, 3.0, 5.0]


class DeadReLU(torch.nn.Module):
    """conv -> ReLU that no image wakes (zero weights, bias -1) -> conv: the spatial attention
    of ``checkpoints/harnet_pruned_distilled`` had such a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dead = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.last = torch.nn.Conv2d(8, 4, 3, padding=1)
        with torch.no_grad():
            self.dead.weight.zero_()
            self.dead.bias.fill_(-1.0)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.relu(self.dead(torch.relu(self.first(images))))
        return {"out": self.last(hidden)}


def test_a_dead_relu_leaves_a_file_xnnpack_runs(tmp_path):
    litert_torch = pytest.importorskip("litert_torch", reason="needs edgedet[tflite-export]")
    from edgedet.backends.tflite import TFLiteBackend
    from quantize.export_tflite import captured_output
    from quantize.ptq_tflite import quantize_tflite

    torch.manual_seed(0)
    model = DeadReLU().eval()
    fp32 = tmp_path / "fp32.tflite"
    with captured_output("litert-torch"):
        litert_torch.convert(model, sample_kwargs={"images": torch.zeros(1, 3, 32, 32)}
                             ).export(str(fp32))
    images = [np.random.default_rng(i).normal(0, 1, (1, 3, 32, 32)).astype(np.float32)
              for i in range(4)]
    path, _ = quantize_tflite(fp32, tmp_path / "int8.tflite", images, ())
    backend = TFLiteBackend(path, threads=1)  # XNNPACK refused the file before the fix
    assert backend.kernels == "xnnpack"
    with torch.no_grad():
        expected = model(torch.from_numpy(images[0]))["out"].numpy()  # the last conv's bias
    np.testing.assert_allclose(backend.run(images[0])["out"], expected, atol=0.02)


class Reductions(torch.nn.Module):
    """A 1x1 conv + ReLU (non-negative: zero point -128 in INT8), then per channel its mean
    over 96 x 96 = 9 216 positions, its sum over 96 x 95 = 9 120 (over the same positions the
    converter would turn the mean into that sum) and its mean over a 64 x 64 corner (4 096)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.conv(images))
        return {"long": features.mean(dim=(2, 3)), "long_sum": features[..., :95].sum(dim=(2, 3)),
                "short": features[:, :, :64, :64].mean(dim=(2, 3))}


def test_reductions_past_xnnpacks_int8_limit_stay_float(tmp_path):
    # XNNPACK (LiteRT's default CPU kernels) returned 0.114 for every channel of the long
    # mean of this model in INT8, against 0.051-0.114 in float (edgedet/backends/xnnpack_int8.py).
    litert_torch = pytest.importorskip("litert_torch", reason="needs edgedet[tflite-export]")
    from edgedet.backends.tflite import TFLiteBackend
    from edgedet.backends.xnnpack_int8 import INT8_REDUCTION_LIMIT
    from quantize.export_tflite import captured_output
    from quantize.ptq_tflite import LONG_REDUCTIONS, TFLiteGraph, quantize_tflite

    torch.manual_seed(0)
    model = Reductions().eval()
    fp32 = tmp_path / "fp32.tflite"
    with captured_output("litert-torch"):  # its deprecation warnings, as export_tflite does
        litert_torch.convert(model, sample_kwargs={"images": torch.zeros(1, 3, 96, 96)}
                             ).export(str(fp32))
    sizes = TFLiteGraph(fp32).reduction_sizes
    assert sorted(sizes.values(), key=str) == [4096, 9120, 9216]
    assert 4096 <= INT8_REDUCTION_LIMIT < 9216
    images = [np.random.default_rng(i).normal(0, 1, (1, 3, 96, 96)).astype(np.float32)
              for i in range(4)]
    path, kept = quantize_tflite(fp32, tmp_path / "int8.tflite", images, ())
    assert list(kept) == [LONG_REDUCTIONS]
    assert set(kept[LONG_REDUCTIONS]) == {n for n, size in sizes.items() if size > 4096}
    with torch.no_grad():
        expected = model(torch.from_numpy(images[0]))
    backend = TFLiteBackend(path, threads=1)
    assert backend.kernels == "xnnpack"  # nothing long left in int8: no fallback
    got = backend.run(images[0])
    for key in ("long", "short"):  # the short one in INT8: a few steps of its scale
        np.testing.assert_allclose(got[key], expected[key].numpy(), atol=2e-3, err_msg=key)
    np.testing.assert_allclose(got["long_sum"], expected["long_sum"].numpy(), rtol=1e-2)


class TwoLevelNorm(torch.nn.Module):
    """Two pyramid levels through a shared 1x1 conv, HAR-Net's cross-level group norm, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        from edgedet.models.attention import CrossLevelGroupNorm

        self.conv = torch.nn.Conv2d(3, 8, 1)
        self.norm = CrossLevelGroupNorm(8, num_groups=2)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 2.0)
            self.norm.bias.uniform_(-1.0, 1.0)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        levels = [self.conv(images), self.conv(torch.nn.functional.avg_pool2d(images, 2))]
        fine, coarse = (torch.relu(level) for level in self.norm(levels))
        return {"fine": fine, "coarse": coarse}


def test_a_written_out_group_norm_is_found_in_the_tflite_file(tmp_path):
    # litert-torch writes the group norm as MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL, ADD: the
    # "norms" rule must find it there as it finds ONNX's InstanceNormalization, and the tflite
    # target keeps it in float (in INT8 it cost the pruned HAR-Net's 2x model 3.4 AP).
    litert_torch = pytest.importorskip("litert_torch", reason="needs edgedet[tflite-export]")
    from quantize.export_tflite import captured_output
    from quantize.ptq_tflite import TFLiteGraph
    from quantize.targets.tflite import TARGET

    torch.manual_seed(0)
    fp32 = tmp_path / "fp32.tflite"
    with captured_output("litert-torch"):
        litert_torch.convert(TwoLevelNorm().eval(),
                             sample_kwargs={"images": torch.zeros(1, 3, 16, 16)}).export(str(fp32))
    graph = TFLiteGraph(fp32)
    norms = set(graph.kept_out(["norms"])["norms"])
    opcodes = [graph.opcodes[n.name] for n in graph.nodes]
    in_norms = sorted({graph.opcodes[name] for name in norms})
    assert {"MEAN", "RSQRT", "CONCATENATION"} <= set(in_norms)
    assert not {"CONV_2D", "RELU", "AVERAGE_POOL_2D"} & set(in_norms)
    # every mean and rsqrt of the file is the norm's; the convs, pool and ReLUs are not
    assert sum(graph.opcodes[name] in ("MEAN", "RSQRT") for name in norms) == sum(
        op in ("MEAN", "RSQRT") for op in opcodes)
    assert "norms" in TARGET.default_keep_float
