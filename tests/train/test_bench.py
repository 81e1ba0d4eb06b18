import pytest
import torch

from train.bench import VARIANTS, benchmark, main


def test_benchmark_reports_every_variant_interleaved(monkeypatch):
    import train.bench as bench

    names = ["sample-first", "fp32", "channels_last"]
    result = benchmark("passd_mobilenet", (64, 64), batch_size=2, rounds=2, steps_per_round=1,
                       warmup=0, device=torch.device("cpu"), variants=names, model_args={},
                       synthetic_size=(64, 64))
    assert list(result) == names
    for figures in result.values():
        assert figures["images_per_s"] > 0 and figures["peak_mib"] > 0
        assert abs(figures["step_s"] * figures["images_per_s"] - 2.0) < 1e-6  # 2 per step
    # The timed rounds take one step of each variant in turn (after each one's warm-up), so
    # a machine whose speed drifts slows every variant alike.
    calls: list[str] = []
    spec_names = {id(VARIANTS[n]): n for n in names}
    monkeypatch.setattr(bench, "make_step", lambda model, images, targets, priors, spec: (
        lambda: calls.append(spec_names[id(spec)])))
    benchmark("passd_mobilenet", (64, 64), batch_size=2, rounds=3, steps_per_round=2, warmup=1,
              device=torch.device("cpu"), variants=names, model_args={},
              synthetic_size=(64, 64))
    rounds = [name for name in names for _ in range(2)] * 3
    assert calls == names + rounds


def test_sample_first_variant_switches_the_attend_order_of_its_own_copy(monkeypatch):
    import train.bench as bench
    from train.models import build_model

    model = build_model("passd_mobilenet", 3, (320, 320))
    assert model.head.contract_first is True
    stepped: list[object] = []
    real_criterion = bench.build_criterion

    def criterion_of(copy):
        stepped.append(copy)  # the model make_step trains
        return real_criterion(copy)

    monkeypatch.setattr(bench, "build_criterion", criterion_of)
    bench.make_step(model, torch.zeros(1, 3, 320, 320), [], torch.zeros(0, 4),
                    VARIANTS["sample-first"])
    (trained,) = stepped
    assert trained is not model and trained.head.contract_first is False
    assert model.head.contract_first is True  # the caller's model is left as it was


def test_unknown_variant_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--model", "passd_mobilenet", "--variants", "fp32,turbo"])
    assert caught.value.code == 2 and "turbo" in capsys.readouterr().err
