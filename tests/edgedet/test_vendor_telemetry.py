"""OpenVINO's usage reports stay off where edgedet imports OpenVINO: no forked senders, no
files under ``~/intel``; ``EDGEDET_VENDOR_TELEMETRY=1`` leaves them on (the control)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")
pytest.importorskip("openvino_telemetry")

REPO = Path(__file__).resolve().parents[2]

# Count the forks of a fresh interpreter that imports OpenVINO through edgedet's backend and
# converts a tiny ONNX model, the two things that report.
SCRIPT = r"""
import json, os, sys
forks = []
os.register_at_fork(before=lambda: forks.append(1))
import onnx
from onnx import TensorProto, helper
import edgedet.backends.openvino  # noqa: F401  (imports openvino)
import openvino as ov
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
path = os.path.join(sys.argv[1], "relu.onnx")
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
ov.convert_model(path)
from openvino_telemetry.main import Telemetry
print(json.dumps({"forks": len(forks), "consent": Telemetry().consent}))
"""


def _run(tmp_path: Path, keep: bool) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "TF_BUILD", "JENKINS_URL", "EDGEDET_VENDOR_TELEMETRY")}
    env["HOME"] = str(tmp_path)  # no consent file: OpenVINO's default is to report
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if keep:
        env["EDGEDET_VENDOR_TELEMETRY"] = "1"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_openvino_imported_by_edgedet_reports_nothing(tmp_path: Path) -> None:
    result = _run(tmp_path, keep=False)
    assert result == {"forks": 0, "consent": False}
    assert not (tmp_path / "intel").exists()


def test_the_environment_variable_keeps_openvinos_own_setting(tmp_path: Path) -> None:
    result = _run(tmp_path, keep=True)
    assert result["consent"] is True and result["forks"] > 0
