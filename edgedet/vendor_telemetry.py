"""Keep OpenVINO's usage reports off in processes that run edgedet.

``import openvino``, OpenVINO's model conversion and NNCF report usage to Google Analytics
unless the user opted out (``opt_in_out --opt_out``) or a CI variable is set; with consent they
also write a client id and counters under ``~/intel``. Each report is sent from a worker thread
that forks a process and gives it 3 s to reach the network. Forking a multithreaded process
(PyTorch's and JAX's thread pools are running by then) can deadlock the child, JAX warns about
exactly that, and on an offline edge box the report cannot arrive anyway. edgedet never asks
its users to share data, so wherever it imports OpenVINO (the ``openvino`` backend and the
``quantize`` package) it first declines the reports for its own process, in memory: nothing is
written to the user's consent files and no environment variable reaches child processes.

``EDGEDET_VENDOR_TELEMETRY=1`` leaves OpenVINO and NNCF to their own settings.
"""

from __future__ import annotations

import os

ENV_KEEP = "EDGEDET_VENDOR_TELEMETRY"


def quiet_vendor_telemetry() -> bool:
    """Decline OpenVINO's (and so NNCF's) usage reports in this process; idempotent.

    Works through ``openvino_telemetry``, the package both libraries report with: its consent
    check answers "declined" from now on, and a reporter created before this call stops
    sending. Call it before ``import openvino`` to also keep the import's own report. A missing
    package, or a version laid out differently, is left alone: this never raises.

    Returns:
        True when the reports are declined; False when ``EDGEDET_VENDOR_TELEMETRY=1`` keeps
        them or ``openvino_telemetry`` is not installed.
    """
    if os.environ.get(ENV_KEEP) == "1":
        return False
    try:
        from openvino_telemetry.main import Telemetry
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except Exception:  # not installed, or another layout: nothing edgedet can switch off
        return False
    if not getattr(OptInChecker.check, "edgedet_declined", False):
        def declined(self: object, *args: object, **kwargs: object) -> object:
            return ConsentCheckResult.DECLINED

        declined.edgedet_declined = True  # type: ignore[attr-defined]
        OptInChecker.check = declined  # type: ignore[method-assign]
    # The reporter is a singleton made at the first report; one made before this call keeps
    # the consent it computed then unless told otherwise.
    existing = getattr(Telemetry, "_SingletonMetaClass__single_instance", None)
    if existing is not None:
        existing.consent = False
    return True


__all__ = ["ENV_KEEP", "quiet_vendor_telemetry"]
