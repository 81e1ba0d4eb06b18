"""``edgedet build-engine ARTIFACT``: build (or find) the cached TensorRT engine of an artifact.

The TensorRT backend builds its engine on first load anyway; this command does it ahead of
time (a Jetson build takes minutes, better not at an application's start) and reports where
the engine is and what it was built for. Exit status: 0 built or found, 1 the build failed,
2 a usage or environment error (bad artifact, not a TensorRT artifact, TensorRT missing, no
GPU, a stale engine in the way without ``--rebuild``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from edgedet.cli_common import path_argument

INSTALL_HINT = ("TensorRT's Python package is not installed: on Jetson it comes with JetPack "
                "(sudo apt install python3-libnvinfer; use a venv made with "
                "--system-site-packages) plus pip install cuda-python; on x86: "
                "pip install tensorrt cuda-python (or pip install 'edgedet[tensorrt]')")


def add_parser(sub: Any) -> None:
    """Register ``build-engine`` on the ``edgedet`` command's subparsers."""
    parser = sub.add_parser(
        "build-engine",
        help="build the TensorRT engine of a tensorrt artifact for this GPU (cached)",
        description=(
            "Build the TensorRT engine of ARTIFACT (an artifact directory or zoo name whose "
            "manifest says backend tensorrt) for this GPU and TensorRT, into the engine cache "
            "the tensorrt backend reads ($EDGEDET_ENGINE_CACHE, else "
            "$EDGEDET_CACHE_DIR/engines, else $XDG_CACHE_HOME/edgedet/engines, else "
            "~/.cache/edgedet/engines). An engine already cached for the same model, "
            "TensorRT, GPU, flags and workspace is reused. INT8 + FP16 for a quantized (QDQ) "
            "model, FP16 otherwise. Exit status 0 built or found, 1 build failed, 2 usage or "
            "environment error."
        ),
    )
    parser.add_argument("artifact", help="artifact directory or zoo model name")
    parser.add_argument("--workspace", type=int, metavar="MB",
                        help="builder workspace limit (default: $EDGEDET_TRT_WORKSPACE_MB or "
                        "1024); part of the cache key, so the backend uses the engine only "
                        "with the same EDGEDET_TRT_WORKSPACE_MB")
    parser.add_argument("--cache-dir", type=path_argument, metavar="DIR",
                        help="engine cache folder (default: the backend's; point "
                        "EDGEDET_ENGINE_CACHE at another one for the backend to read it)")
    parser.add_argument("--rebuild", action="store_true",
                        help="build again and replace the cached engine, even a valid one")
    parser.add_argument("--device", default=None, metavar="N",
                        help="CUDA GPU index (default 0)")
    parser.set_defaults(func=run)


def _fail(message: str, status: int = 2) -> int:
    print(f"edgedet build-engine: error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    """Run ``build-engine``; returns the exit status."""
    from edgedet import backends
    from edgedet.artifact import Artifact, ManifestError
    from edgedet.backends import BackendError, model_file_for
    from edgedet.zoo import resolve_model

    try:
        artifact = Artifact.load(resolve_model(args.artifact))  # checks every file's sha256
    except (ManifestError, ValueError, OSError) as exc:
        return _fail(str(exc))
    backend = artifact.manifest["backend"]
    if backend != "tensorrt":
        return _fail(f"artifact {artifact.name!r} is for backend {backend}, not tensorrt; only "
                     "tensorrt artifacts (quantize/run.py --target jetson) have engines to build")
    if not backends.is_available("tensorrt"):
        status = _fail(INSTALL_HINT)
        trtexec = (artifact.manifest.get("tensorrt") or {}).get("trtexec")
        if trtexec:
            print(f"edgedet build-engine: a standalone engine (for trtexec / DeepStream, not "
                  f"edgedet's cache) can also be built with: {trtexec}", file=sys.stderr)
        return status
    try:
        from edgedet.backends import tensorrt as trt_backend
        from edgedet.engine_cache import StaleEngineError, default_cache_dir, find_or_build
        from edgedet.tensorrt_config import cuda_device_index, workspace_mb

        model_path = artifact.directory / model_file_for("tensorrt", list(artifact.files))
        device = cuda_device_index(args.device)
        key = trt_backend.engine_key(model_path, device, args.workspace)
        trt_backend.use_device(device)  # the builder builds for the current device
    except (BackendError, ImportError, OSError) as exc:  # OSError: libnvinfer not loadable
        return _fail(str(exc))
    build_seconds: list[float] = []

    def build() -> bytes:
        start = time.perf_counter()
        data = trt_backend.build_engine_bytes(model_path, key.builder_flags, key.workspace_mb)
        build_seconds.append(time.perf_counter() - start)
        return data

    cache_dir = args.cache_dir or default_cache_dir()
    try:
        path = find_or_build(cache_dir, key, build, rebuild=args.rebuild,
                             artifact=artifact.directory)
    except StaleEngineError as exc:
        return _fail(str(exc))
    except BackendError as exc:
        return _fail(str(exc), status=1)
    how = f"built in {build_seconds[0]:.1f} s" if build_seconds else "already cached, reused"
    print(f"engine: {path} ({how}, {path.stat().st_size / 1e6:.1f} MB)")
    print(f"key: {key.describe()}, flags {'+'.join(key.builder_flags)}, workspace "
          f"{key.workspace_mb} MB, model sha256 {key.model_sha256[:16]}...")
    # Both are part of where the backend looks: say how to make it find this engine.
    if args.cache_dir is not None and Path(args.cache_dir) != default_cache_dir():
        print(f"note: the tensorrt backend reads {default_cache_dir()}; run it with "
              f"EDGEDET_ENGINE_CACHE={args.cache_dir} to use this engine")
    try:
        backend_workspace: int | None = workspace_mb()
    except BackendError:  # a bad $EDGEDET_TRT_WORKSPACE_MB: the backend will say so itself
        backend_workspace = None
    if args.workspace is not None and args.workspace != backend_workspace:
        print(f"note: the tensorrt backend uses a {backend_workspace} MB workspace; run it "
              f"with EDGEDET_TRT_WORKSPACE_MB={args.workspace} to use this engine")
    return 0
