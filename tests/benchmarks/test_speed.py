import json

import pytest

from benchmarks.pa_attend_conv import attend_variants, random_attend_conv
from benchmarks.speed import main

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def test_speed_json_has_every_figure_of_the_timed_sections(capsys):
    """One tiny run (the zoo PASSD pair, a shrunk attend stage): structure only, no speed."""
    assert main(["--rounds", "1", "--calls", "1", "--warmup", "0", "--skip-paper-width",
                 "--zoo", "passd_mobilenet", "passd_mobilenet_int8", "--attend-channels", "8",
                 "--attend-size", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["settings"]["rounds"] == 1 and report["versions"]["onnxruntime"]
    assert "CPU" in report["machine"]  # the CPU model and count, which ratios depend on
    assert report["paper_width"] == []
    assert {row["backend"] for row in report["zoo"]} >= {"onnxruntime"}
    for row in report["zoo"]:
        assert row["model"] in ("passd_mobilenet", "passd_mobilenet_int8")
        assert row["runtime_p50_ms"] > 0
        if row["backend"] == "openvino default":  # runtime only, the fp32 model
            assert row["model"] == "passd_mobilenet" and row["detect_p50_ms"] is None
            continue
        for key in ("detect_p50_ms", "detect_over_runtime"):
            assert row[key] > 0, key
        # None ('-') only where the source checkpoint changed since the zoo model was built.
        assert (row["gflops"] is None) == (row["gops"] is None)
        assert row["gflops"] is None or (row["gflops"] > 0 and row["gops"] > 0)
    # Both zoo PASSD entries come from one checkpoint: INT8 is compared on every runtime.
    pairs = {(r["runtime"], r["fp32_runtime"]) for r in report["int8_vs_fp32"]}
    assert pairs == {("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                     ("openvino", "openvino default")}
    for row in report["int8_vs_fp32"]:
        assert row["speedup"] == pytest.approx(row["fp32_ms"] / row["int8_ms"])
    variants = [row["variant"] for row in report["attend"]]
    assert variants == list(attend_variants(random_attend_conv(8, 5, 2), 8.0))
    assert variants[-1].startswith("plain 3x3 conv")
    for row in report["attend"]:
        for key in ("onnxruntime_ms", "openvino_ms", "onnxruntime_vs_plain", "openvino_vs_plain"):
            assert row[key] > 0, key
    assert report["attend"][-1]["onnxruntime_vs_plain"] == 1.0
    # The headline figures: every INT8 pair, the shipped attend forms, detect() per backend.
    names = [name for name, _ in report["headline"]]
    assert sum(name.startswith("zoo passd_mobilenet_int8 on ") for name in names) == 3
    assert any("tap sum in the SDK (attend tail)), x" in name and "onnxruntime" in name
               for name in names)  # the cpu target's form
    # the openvino target's fp32 form (its attend stage is timed in fp32)
    assert any("one EmbeddingBagPackedSum (openvino fp32)), x" in name and "openvino" in name
               for name in names)
    assert "zoo detect() / runtime on onnxruntime, worst model" in names
    assert not any(name.startswith("paper-width") for name in names)
    # One round: the probe is read before it and after each item, and each placement's
    # figures have the same rows as the overall ones (None: too few calls there).
    placement = report.get("placement")
    if placement is not None:  # two CPUs available
        items = len(report["zoo"]) + 2 * len(report["attend"])
        assert len(placement["readings_ns"]) == items + 1
        assert sum(placement["share_of_calls"].values()) <= 1.0
        for where in ("near", "far"):
            assert [n for n, _ in placement[where]["headline"]] == names
            assert len(placement[where]["zoo"]) == len(report["zoo"])


def test_speed_tables_print_without_zoo_models_or_probe(capsys):
    """The markdown path with nothing but the (shrunk) attend stage: no empty tables."""
    assert main(["--rounds", "1", "--calls", "1", "--warmup", "0", "--skip-paper-width",
                 "--zoo", "--attend-channels", "8", "--attend-size", "6", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "## Zoo models" not in out and "## Attend stage" in out
    assert "## Headline figures\n" in out and "by CPU placement" not in out


def test_speed_names_an_unknown_model_before_building(capsys):
    with pytest.raises(SystemExit):
        main(["--zoo", "no_such_model", "--no-probe"])
    assert "'no_such_model' is neither an artifact directory" in capsys.readouterr().err
