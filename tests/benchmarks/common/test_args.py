"""``benchmarks/common/args.py``: a bad benchmark argument is a usage error before any work."""

import argparse

import pytest

from benchmarks.common.args import (
    require_at_least,
    require_checkpoint,
    require_choices,
    require_zoo_models,
)


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="bench")


def _error(call, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_each_check_names_the_flag(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    require_at_least(parser, 1, rounds=3, threads=None)  # None: the default, not checked
    assert "--repeats must be >= 1, got 0" in _error(
        lambda: require_at_least(parser, 1, repeats=0), capsys)
    assert "--top-k must be >= 0, got nan" in _error(
        lambda: require_at_least(parser, 0, top_k=float("nan")), capsys)
    assert "checkpoint not found" in _error(
        lambda: require_checkpoint(parser, str(tmp_path / "none")), capsys)
    assert "--criteria: unknown ['x']" in _error(
        lambda: require_choices(parser, "--criteria", ["l1", "x"], ("l1", "l2")), capsys)
    assert "'no_such_model'" in _error(
        lambda: require_zoo_models(parser, ["no_such_model"]), capsys)
