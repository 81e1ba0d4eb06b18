import json

import pytest

from benchmarks.backends import main
from edgedet.cpu_features import describe_for_speed, x86_cpu_flags

pytest.importorskip("onnxruntime")


def test_backends_json_has_each_models_figures_per_placement(capsys):
    """Two entries, one round: structure and the speed-up's definition, no speed."""
    assert main(["passd_mobilenet_int8", "passd_mobilenet", "--rounds", "1", "--calls", "1",
                 "--warmup", "0", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The kind of CPU travels with the figures (two machines named "AMD EPYC" differed in it).
    assert report["machine"].endswith(describe_for_speed(x86_cpu_flags()))

    first, second = report["models"]
    assert (first["name"], second["name"]) == ("passd_mobilenet_int8", "passd_mobilenet")
    assert first["speedup_vs_first"] == 1.0
    assert second["speedup_vs_first"] == pytest.approx(
        first["runtime_p50_ms"] / second["runtime_p50_ms"])
    for row in (first, second):
        assert row["runtime_p50_ms"] > 0 and row["end_to_end_p50_ms"] > 0
        # One call per model is too few for a placement's median.
        assert row["runtime_p50_ms_near"] is None and row["speedup_vs_first_far"] is None
    readings = report["core_round_trips_ns"]
    assert readings == [] or len(readings) == 3  # before the round, then after each model


def test_a_bad_model_spec_is_an_argument_error(capsys):
    for spec, message in (("passd_mobilenet_int8@bogus", "unknown backend 'bogus'"),
                          ("passd_mobilenet_int8+3x", "expected MODEL, MODEL@BACKEND")):
        with pytest.raises(SystemExit) as exit_info:
            main([spec, "--rounds", "1"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
