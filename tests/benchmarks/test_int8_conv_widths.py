"""``benchmarks/int8_conv_widths.py``: its IRs run as INT8 convolutions, one row per width."""

import pytest

pytest.importorskip("openvino")

from benchmarks.int8_conv_widths import main


def test_each_width_is_timed_on_an_int8_convolution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--widths", "16,32", "--size", "6", "--convs", "2", "--rounds", "1",
                 "--threads", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| channels")]
    assert [int(row[0]) for row in rows] == [16, 32]
    for _, ms, gops, kernel in rows:
        float(ms), float(gops)  # figures (their values are the machine's, not checked)
        # OpenVINO names a kernel by its input precision last: the fake-quantized inputs
        # made every convolution an INT8 one (an f32 kernel would end in f32).
        assert kernel.strip().lower().endswith(("i8", "u8")), kernel


def test_a_bad_width_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for widths in ("0,16", "a,b"):
        with pytest.raises(SystemExit) as stopped:
            main(["--widths", widths])
        assert stopped.value.code == 2
    assert "--widths" in capsys.readouterr().err
