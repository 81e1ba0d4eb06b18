"""Stopping a training run by a signal without losing its progress.

Ctrl-C in a terminal (SIGINT) or a scheduler's / session's SIGTERM used to end a run wherever
it was, losing everything since the last resume state (up to ``--save-every-min`` minutes).
While a ``StopRequest`` is active, the first such signal is only recorded: the trainer finishes
the step it is in, writes the resume state and stops with ``TrainingStopped``, and the same
command with ``--resume`` continues exactly. A second signal acts as before (Ctrl-C raises
``KeyboardInterrupt``, SIGTERM ends the process), for a run that must stop at once.

Data-loader workers ignore both signals (``ignore_stop_signals``): a terminal sends Ctrl-C to
the whole process group, and a worker that died of it would fail the main process's next
batch before it could save.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(RuntimeError):  # noqa: N818 - a requested stop, not an error
    """The run stopped on a signal after saving its resume state.

    Attributes:
        signal_number: the signal that asked for the stop.
    """

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


class StopRequest:
    """Context manager recording the first SIGINT / SIGTERM instead of acting on it.

    Signal handlers can only be installed from the main thread; elsewhere (a trainer driven
    from another thread) it records nothing and the signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def install(self) -> None:
        """Record SIGINT / SIGTERM from now on (main thread only).

        A signal the process was started ignoring stays ignored: a shell starts a background
        job (``cmd &`` in a script, ``nohup``) with SIGINT ignored so that Ctrl-C meant for
        the foreground does not reach it, and a run must not start stopping on it.
        """
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                if signal.getsignal(number) is not signal.SIG_IGN:
                    self._previous[number] = signal.signal(number, self._record)

    def restore(self) -> None:
        """Give the signals back their previous handlers."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._previous = {}

    def __enter__(self) -> StopRequest:
        self.install()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.restore()

    def _record(self, number: int, frame: FrameType | None) -> None:
        if self.signal_number is None:
            self.signal_number = number
            return
        # A second signal: the usual behaviour, now.
        self.restore()
        signal.raise_signal(number)


def ignore_stop_signals() -> None:
    """In a data-loader worker: leave SIGINT / SIGTERM to the main process."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
