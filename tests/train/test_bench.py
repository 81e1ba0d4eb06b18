import torch

from train.bench import benchmark


def test_benchmark_reports_positive_throughput_and_memory():
    result = benchmark("passd_mobilenet", (64, 64), batch_size=2, steps=1, warmup=0,
                       device=torch.device("cpu"), amp=None)
    assert result["images_per_s"] > 0 and result["peak_mib"] > 0
    assert abs(result["step_s"] * result["images_per_s"] - 2.0) < 1e-6  # 2 images per step
