import pytest
import torch

from train.bench import VARIANTS, benchmark, main


def test_benchmark_reports_every_variant_interleaved():
    result = benchmark("passd_mobilenet", (64, 64), batch_size=2, rounds=2, steps_per_round=1,
                       warmup=0, device=torch.device("cpu"),
                       variants=["sample-first", "fp32", "channels_last"], model_args={},
                       synthetic_size=(64, 64))
    assert list(result) == ["sample-first", "fp32", "channels_last"]
    for figures in result.values():
        assert figures["images_per_s"] > 0 and figures["peak_mib"] > 0
        assert abs(figures["step_s"] * figures["images_per_s"] - 2.0) < 1e-6  # 2 per step


def test_sample_first_variant_switches_the_attend_order_of_its_own_copy():
    from train.bench import _set_attend_order
    from train.models import build_model

    model = build_model("passd_mobilenet", 3, (320, 320))
    _set_attend_order(model, VARIANTS["sample-first"].contract_first)
    assert model.head.contract_first is False


def test_unknown_variant_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--model", "passd_mobilenet", "--variants", "fp32,turbo"])
    assert caught.value.code == 2 and "turbo" in capsys.readouterr().err
