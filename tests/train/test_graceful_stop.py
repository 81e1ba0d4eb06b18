import os
import signal

import pytest

from tests.train.test_engine import tiny_trainer
from train import main as train_main
from train.engine import STATE_FILE
from train.graceful_stop import StopRequest, TrainingStopped
from train.metrics_log import read_metrics


class _SignalledError(Exception):
    pass


def _raise_signalled(number, frame):
    raise _SignalledError(signal.Signals(number).name)


@pytest.fixture(autouse=True)
def known_handlers():
    """SIGINT raises KeyboardInterrupt and SIGTERM raises _SignalledError around each test, whatever
    the test runner installed (an xdist worker dies of a plain SIGINT / SIGTERM): a signal that
    escapes a StopRequest then fails the test instead of killing the process running it."""
    saved = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_signalled)
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_first_signal_is_recorded_second_acts_and_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_number == signal.SIGINT  # recorded, nothing raised
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second one interrupts as usual
    assert signal.getsignal(signal.SIGINT) is before


def test_a_stop_signal_mid_epoch_saves_the_state_and_the_run_resumes(tmp_path) -> None:
    """2 steps per epoch; SIGTERM arrives during step 2 (the first of the second epoch)."""
    first = tiny_trainer(tmp_path, epochs=3)
    original = first._train_step

    def step(images, targets):
        if first.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(images, targets)

    first._train_step = step
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped, match="SIGTERM after iteration 2") as stopped:
        first.fit()
    assert stopped.value.signal_number == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 1, 2]  # the step finished

    resumed = tiny_trainer(tmp_path, epochs=3)
    resumed.resume(tmp_path / STATE_FILE)
    assert resumed.batches_done == 1  # mid-epoch: one batch of the second epoch done
    resumed.fit()
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3, 4, 5]
    assert [r["epoch"] for r in read_metrics(tmp_path, "eval")] == [0, 1, 2]


def test_main_reports_the_stop_with_the_signal_exit_code(monkeypatch, capsys) -> None:
    def stop(args, info):
        raise TrainingStopped("stopped by SIGINT after iteration 7: ...", signal.SIGINT)

    monkeypatch.setattr(train_main, "run", stop)
    assert train_main.main(["--model", "passd_mobilenet"]) == 130
    assert "stopped by SIGINT after iteration 7" in capsys.readouterr().err
