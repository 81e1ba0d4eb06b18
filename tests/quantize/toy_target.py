"""A test-only target: proves that a target is one file plus one ``TARGETS`` entry.

It ships the fp32 ONNX export under the suffix of the toy backend
(``tests/edgedet/backends/toy_backend.py``), and only at fp32.
"""

from __future__ import annotations

import shutil

from quantize.targets import BuildRequest, BuiltModel, Target


def build(request: BuildRequest) -> BuiltModel:
    path = request.work_dir / "toy" / "model.toy"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(request.onnx_fp32, path)
    return BuiltModel({"model.toy": path}, [])


TARGET = Target(name="toy", backend="toy", summary="the fp32 export for the toy backend",
                precisions=("fp32",), default_keep_float=(), build=build)
