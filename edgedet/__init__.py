"""edgedet: deploy single-stage object detectors (PASSD, HAR-Net, DSANet, DAIPNet) to the edge.

The runtime imported here is torch-free (numpy + OpenCV); PyTorch model definitions live in
``edgedet.models`` and are imported only when asked for.
"""

from edgedet.detections import Detections
from edgedet.detector import Detector
from edgedet.options import DetectorOptions
from edgedet.preprocess import FrameError, FrameTransform, PreprocessConfig, preprocess
from edgedet.zoo import list_models

__version__ = "0.1.0"

__all__ = [
    "Detections",
    "Detector",
    "DetectorOptions",
    "FrameError",
    "FrameTransform",
    "PreprocessConfig",
    "__version__",
    "list_models",
    "preprocess",
]
