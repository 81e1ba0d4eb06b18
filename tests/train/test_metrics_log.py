import json

import pytest

from train.metrics_log import METRICS_FILE, MetricsLog, read_metrics


def _log_of_an_interrupted_run(tmp_path) -> MetricsLog:
    """2 steps per epoch; epoch 0 finished (state saved at 2 steps done), epoch 1 interrupted
    after its first step, in the middle of writing the second one."""
    log = MetricsLog(tmp_path, enabled=True)
    log.close()  # only the JSON lines matter here, not TensorBoard
    log.writer = None
    for it in (0, 1):
        log.write({"type": "train", "epoch": 0, "iteration": it, "loss": 1.0})
    log.write({"type": "epoch", "epoch": 0, "iteration": 1, "loss": 1.0})
    log.write({"type": "eval", "epoch": 0, "iteration": 1, "AP": 0.1})
    log.write({"type": "train", "epoch": 1, "iteration": 2, "loss": 0.9})
    with log.path.open("a") as handle:
        handle.write('{"type": "train", "epoch": 1, "itera')  # killed mid-write
    return log


def test_truncate_keeps_only_the_steps_the_resume_state_has_done(tmp_path):
    log = _log_of_an_interrupted_run(tmp_path)
    log.truncate_from(2)  # the resume state: 2 steps done, the next one is step 2
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 1]
    assert [r["iteration"] for r in read_metrics(tmp_path, "epoch")] == [1]
    assert [r["iteration"] for r in read_metrics(tmp_path, "eval")] == [1]
    # The resumed run repeats step 2: it is then logged once.
    log.write({"type": "train", "epoch": 1, "iteration": 2, "loss": 0.9})
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_truncate_at_zero_empties_the_log_and_a_missing_log_is_fine(tmp_path):
    log = _log_of_an_interrupted_run(tmp_path)
    log.truncate_from(0)
    assert (tmp_path / METRICS_FILE).read_text() == ""
    fresh = MetricsLog(tmp_path / "nothing-yet", enabled=True)
    fresh.close()
    fresh.truncate_from(5)
    assert not (tmp_path / "nothing-yet" / METRICS_FILE).exists()


def test_read_metrics_skips_a_torn_last_line_and_names_other_bad_lines(tmp_path):
    good = json.dumps({"type": "train", "iteration": 0, "loss": 1.0})
    (tmp_path / METRICS_FILE).write_text(good + "\n" + '{"type": "train", "ite')
    assert read_metrics(tmp_path) == [json.loads(good)]  # a killed run's log still reads
    (tmp_path / METRICS_FILE).write_text("garbage\n" + good + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1: not JSON"):
        read_metrics(tmp_path)
    (tmp_path / METRICS_FILE).write_text("[1, 2]\n" + good + "\n")
    with pytest.raises(ValueError, match="line 1: not a JSON object"):
        read_metrics(tmp_path)
