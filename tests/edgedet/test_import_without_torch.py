"""The runtime must import on a machine without torch (a Jetson, a Raspberry Pi)."""

import pkgutil
import subprocess
import sys

import edgedet
from edgedet.backends import BACKENDS, is_available

# A backend module imports its runtime, so it is checked only where that runtime is installed
# (edgedet.backends.tensorrt needs TensorRT and cuda-python, not on every machine).
MISSING_BACKENDS = {f"edgedet.backends.{name}" for name in BACKENDS if not is_available(name)}

# Every module of the package but the PyTorch model definitions, found by walking the package
# so that a new runtime module is checked without anyone remembering to list it.
RUNTIME_MODULES = ["edgedet", *sorted(
    info.name for info in pkgutil.walk_packages(edgedet.__path__, prefix="edgedet.")
    if not info.name.startswith("edgedet.models") and info.name != "edgedet.__main__"
    and info.name not in MISSING_BACKENDS
)]


def test_the_walk_finds_the_runtime() -> None:
    for name in ("edgedet.artifact", "edgedet.decoder", "edgedet.backends.openvino",
                 "edgedet.data.synthetic_video", "edgedet.engine_cache",
                 "edgedet.tensorrt_config", "edgedet.cli_engine"):
        assert name in RUNTIME_MODULES


def test_runtime_imports_with_torch_unimportable() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['torchvision'] = None\n"
        f"for name in {RUNTIME_MODULES!r}:\n"
        "    __import__(name)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_torch_really_is_blocked_in_that_check() -> None:
    code = "import sys\nsys.modules['torch'] = None\nimport torch\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "torch" in result.stderr


def test_a_zoo_detector_loads_and_detects_without_torch() -> None:
    code = ("import sys\nsys.modules['torch'] = None\nimport numpy as np\nimport edgedet\n"
            "detector = edgedet.Detector('passd_mobilenet_int8')\n"
            "detector.detect(np.zeros((48, 64, 3), np.uint8))\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_models_without_torch_name_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "try:\n"
        "    import edgedet.models.passd\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert "pip install 'edgedet[torch]'" in result.stdout, result.stdout + result.stderr
