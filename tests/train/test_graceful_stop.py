"""Signals are sent only to child processes here, never to the pytest worker itself: an
xdist worker that receives SIGINT / SIGTERM can go down (CI lost one this way even with known
handlers installed around the test), and a crashed worker fails the whole run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from tests.train.test_engine import tiny_trainer
from train import main as train_main
from train.engine import STATE_FILE
from train.graceful_stop import StopRequest, TrainingStopped
from train.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[2]


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_first_signal_is_recorded_second_acts_and_handlers_come_back() -> None:
    result = _run_python("""
        import os, signal
        from train.graceful_stop import StopRequest
        # Python's own dispositions, whatever this child inherited (an xdist worker ignores
        # SIGINT, and a child started from it would too).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        before = signal.getsignal(signal.SIGINT)
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            print("recorded", stop.signal_number == signal.SIGINT, flush=True)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                print("not interrupted", flush=True)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
        print("restored", signal.getsignal(signal.SIGINT) is before, flush=True)
        with StopRequest():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # the second one ends the process
            print("survived", flush=True)
    """)
    assert result.stdout.splitlines() == ["recorded True", "interrupted", "restored True"]
    assert result.returncode == -signal.SIGTERM, result.stderr


def test_a_signal_the_process_ignores_stays_ignored() -> None:
    """A background job started by a shell ignores SIGINT; a StopRequest must not take it over."""
    result = _run_python("""
        import os, signal
        from train.graceful_stop import StopRequest
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            print("requested", stop.requested, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # not ignored: recorded
            print("requested", stop.requested, flush=True)
        print("still ignored", signal.getsignal(signal.SIGINT) is signal.SIG_IGN, flush=True)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["requested False", "requested True",
                                          "still ignored True"]


def test_a_stop_request_outside_the_main_thread_records_nothing() -> None:
    seen: list[bool] = []

    def body() -> None:
        request = StopRequest()
        with request:
            seen.append(request._previous == {})

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [True]


def test_a_stop_signal_mid_epoch_saves_the_state_and_the_run_resumes(tmp_path) -> None:
    """2 steps per epoch; SIGTERM arrives during step 2 (the first of the second epoch), in a
    child process; this process then resumes from what the child saved."""
    result = _run_python("""
        import json, os, signal, sys
        from pathlib import Path
        from tests.train.test_engine import tiny_trainer
        from train.graceful_stop import TrainingStopped
        first = tiny_trainer(Path(sys.argv[1]), epochs=3)
        original = first._train_step

        def step(images, targets):
            if first.iteration == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(images, targets)

        first._train_step = step
        before = signal.getsignal(signal.SIGTERM)
        try:
            first.fit()
        except TrainingStopped as stopped:
            print(json.dumps({"message": str(stopped), "signal": stopped.signal_number,
                              "restored": signal.getsignal(signal.SIGTERM) is before}))
    """, str(tmp_path))
    assert result.returncode == 0, result.stderr
    stopped = json.loads(result.stdout.splitlines()[-1])
    assert "SIGTERM after iteration 2" in stopped["message"]
    assert stopped["signal"] == signal.SIGTERM and stopped["restored"]
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
