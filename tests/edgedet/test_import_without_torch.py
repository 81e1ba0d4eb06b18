"""The runtime must import on a machine without torch (a Jetson, a Raspberry Pi)."""

import subprocess
import sys

RUNTIME_MODULES = [
    "edgedet",
    "edgedet.anchors",
    "edgedet.box_coding",
    "edgedet.boxes",
    "edgedet.detections",
    "edgedet.draw",
    "edgedet.postprocess",
    "edgedet.preprocess",
    "edgedet.cli",
    "edgedet.data.sample",
    "edgedet.data.coco",
    "edgedet.data.synthetic",
    "edgedet.data.evaluate",
    "edgedet.data.voc",
    "edgedet.data.yolo",
    "edgedet.data.datasets",
    "edgedet.head_decoding",
    "edgedet.manifest",
    "edgedet.zoo",
    "edgedet.detector",
    "edgedet.backends",
    "edgedet.backends.onnxruntime",
    "edgedet.backends.openvino",
]


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
