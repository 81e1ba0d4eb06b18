"""Settings for the whole test session."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

# pyproject.toml runs four worker processes (-n 4), more than a 2-core machine has cores. Each
# torch in them would start one OpenMP thread per core, and OpenMP threads spin while they
# wait, so the workers took turns burning each other's time: on 2 cores the same test files
# ran 1.4-1.6x longer than with one thread per worker (tests/quantize/test_pruning.py and
# tests/edgedet/models, 154-177 s against 107-109 s). So each worker gets its share of the
# cores; the variable also reaches the CLIs that tests start as child processes. A thread
# count set by the user is kept.
if "PYTEST_XDIST_WORKER" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    from edgedet.cpu_features import usable_cores

    _workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    _threads = max(1, usable_cores() // _workers)
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    import torch

    torch.set_num_threads(_threads)


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
