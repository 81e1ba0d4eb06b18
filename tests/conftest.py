"""Settings for the whole test session."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_sigchld_handler() -> Iterator[None]:
    """Undo the SIGCHLD handler a multi-worker DataLoader leaves behind after each test.

    torch's DataLoader installs, once per process and for good, a Python SIGCHLD handler that
    checks its worker processes. Tests run DataLoaders and CLIs (child processes) in the same
    long-lived pytest process; the first child spawned after a DataLoader had run crashed the
    interpreter with SIGSEGV (tests/train/test_main.py, in the main thread right after the
    fork, reproduced twice in a row with one fixed file order; never with this fixture). That
    took an xdist worker down in CI. Training runs in its own process, where the handler is
    harmless, so only the tests need this.
    """
    handler = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not handler:
        signal.signal(signal.SIGCHLD, handler)
