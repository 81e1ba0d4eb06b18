"""Tiny artifact directories for the SDK's tests: hand-made torch heads exported to ONNX.

The shipped zoo models come from the training + conversion pipeline; these stand in for them
so SDK tests run in seconds and do not depend on trained weights. The artifacts follow the
artifact contract (manifest.json with every field ``Detector`` reads, sha256 of each file).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgedet._io import write_json_atomic
from edgedet.anchors import GridAnchorSpec
from edgedet.artifact import Artifact, accuracy_section, sha256_file
from edgedet.data.sample import Sample
from edgedet.data.synthetic import SyntheticConfig, SyntheticScenes
from edgedet.detector import Detector
from edgedet.preprocess import PreprocessConfig

TINY_CLASSES = ("circle", "square", "triangle")
INPUT_SIZE = (64, 48)  # (width, height)
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)

OUTPUT_NAMES = {
    "ssd": ("cls_logits", "box_deltas"),
    "passd": ("objectness_logits", "propose_deltas", "cls_logits", "box_deltas"),
    "retinanet": ("cls_logits", "box_deltas"),
}


def tiny_anchor_spec() -> GridAnchorSpec:
    """Two levels (6x8 cells at stride 8, 3x4 at stride 16), 2 anchors per cell: 120 anchors."""
    return GridAnchorSpec(image_size=INPUT_SIZE, feature_sizes=((6, 8), (3, 4)), strides=(8, 16),
                          base_sizes=(32.0, 64.0), scales=(1.0,), aspect_ratios=(1.0, 2.0))


def _output_widths(family: str, num_classes: int) -> dict[str, int]:
    cls_width = num_classes if family == "retinanet" else num_classes + 1
    widths = {"cls_logits": cls_width, "box_deltas": 4}
    if family == "passd":
        widths.update(objectness_logits=2, propose_deltas=4)
    return widths


class TinyHead(nn.Module):
    """Random two-level conv net whose flattened outputs have the head family's shapes.

    Outputs ``(N, A, k)`` per name in ``OUTPUT_NAMES[family]``, flattened level → y → x →
    anchor like the real heads, so they line up with ``tiny_anchor_spec().generate()``.
    """

    def __init__(self, family: str, num_classes: int = len(TINY_CLASSES), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.family = family
        self.anchors_per_cell = 2
        self.widths = _output_widths(family, num_classes)
        self.level1 = nn.Conv2d(3, 8, 3, stride=8, padding=1)  # 48x64 → 6x8
        self.level2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)  # 6x8 → 3x4
        self.heads = nn.ModuleDict({
            name: nn.Conv2d(8, self.anchors_per_cell * width, 1)
            for name, width in self.widths.items()
        })
        with torch.no_grad():  # spread the class logits so scores straddle the thresholds
            self.heads["cls_logits"].weight.mul_(6.0)
            self.heads["box_deltas"].weight.mul_(0.5)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features1 = torch.relu(self.level1(images))
        features2 = torch.relu(self.level2(features1))
        outputs = []
        for name in OUTPUT_NAMES[self.family]:
            per_level = [
                self.heads[name](f).permute(0, 2, 3, 1).reshape(f.shape[0], -1,
                                                                 self.widths[name])
                for f in (features1, features2)
            ]
            out = torch.cat(per_level, dim=1)
            if name == "propose_deltas":
                out = torch.tanh(out)  # as PASSD clips its propose offsets
            outputs.append(out)
        return tuple(outputs)


class PlantedObjectHead(nn.Module):
    """An SSD-family "model" that sees one object: class ``class_id`` at anchor ``anchor``.

    Every anchor's logits favour background by 10 except ``anchor``, whose logit for
    ``class_id`` (0-based) is 10 with the others 0; ``box_deltas`` are ``deltas`` at that anchor
    and 0 elsewhere. The outputs do not depend on the image (added as ``0 * mean``, so the
    graph still reads its input).
    """

    def __init__(self, num_anchors: int, anchor: int, class_id: int,
                 deltas: tuple[float, float, float, float],
                 num_classes: int = len(TINY_CLASSES)) -> None:
        super().__init__()
        cls_logits = torch.zeros(1, num_anchors, num_classes + 1)
        cls_logits[0, :, 0] = 10.0
        cls_logits[0, anchor, 0] = 0.0
        cls_logits[0, anchor, class_id + 1] = 10.0
        box_deltas = torch.zeros(1, num_anchors, 4)
        box_deltas[0, anchor] = torch.tensor(deltas)
        self.register_buffer("cls_logits", cls_logits)
        self.register_buffer("box_deltas", box_deltas)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zero = images.mean() * 0.0
        return self.cls_logits + zero, self.box_deltas + zero


def export_onnx(model: nn.Module, path: Path, output_names: tuple[str, ...],
                dynamic_batch: bool = False) -> None:
    """``torch.onnx.export`` (TorchScript exporter, opset 17) with input ``images``."""
    width, height = INPUT_SIZE
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in ("images", *output_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, height, width),), str(path),
                          dynamo=False, opset_version=17, input_names=["images"],
                          output_names=list(output_names), dynamic_axes=dynamic_axes)


def write_artifact(
    out_dir: Path,
    model: nn.Module,
    family: str,
    *,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    resize: str = "stretch",
    dynamic_batch: bool = False,
    postprocess: dict | None = None,
    name: str = "tiny",
    checked: bool = True,
) -> Path:
    """Export ``model`` into an artifact directory ``out_dir`` and write its manifest.

    ``backend="openvino"`` converts the ONNX file to OpenVINO IR (``model.xml`` + ``.bin``,
    fp32 weights) and ships only the IR; ``backend="tensorrt"`` ships the plain ONNX file (a
    ``jetson`` fp16 artifact) and checks it on ONNX Runtime, so that writing one needs neither
    TensorRT nor a GPU. ``checked``: run the accuracy check the conversion
    pipeline runs (the exported model against ``model`` itself in PyTorch, on a few synthetic
    frames) and record it, as ``Detector`` requires; False leaves ``accuracy`` null.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output_names = OUTPUT_NAMES[family]
    onnx_path = out_dir / "model.onnx"
    export_onnx(model, onnx_path, output_names, dynamic_batch)
    if backend == "openvino":
        import openvino as ov

        ov.save_model(ov.convert_model(str(onnx_path)), str(out_dir / "model.xml"),
                      compress_to_fp16=False)
        onnx_path.unlink()
        files = ["model.xml", "model.bin"]
    else:
        files = ["model.onnx"]
    spec = tiny_anchor_spec()
    widths = _output_widths(family, len(TINY_CLASSES))
    width, height = INPUT_SIZE
    manifest = {
        "format_version": 1,
        "name": name,
        "architecture": f"tiny_{family}",
        "head_family": family,
        "class_names": list(TINY_CLASSES),
        "preprocess": PreprocessConfig(input_size=INPUT_SIZE, resize=resize).to_dict(),
        "anchor_spec": spec.to_dict(),
        "box_coder_weights": list(BOX_CODER_WEIGHTS),
        "outputs": [{"name": n, "shape": [1, spec.num_anchors, widths[n]], "meaning": n}
                    for n in output_names],
        "input": {"name": "images", "shape": [1, 3, height, width], "dtype": "float32"},
        "postprocess": postprocess if postprocess is not None else {
            "score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 50,
            "nms_mode": "hard", "pre_nms_top_k": 200},
        "precision": precision,
        "backend": backend,
        "files": {f: sha256_file(out_dir / f) for f in files},
        "source": {"checkpoint": "tests (random weights)", "checkpoint_sha256": None,
                   "calibration": None},
        "kept_out_of_int8": [],
        "accuracy": None,
    }
    if checked:
        check_on = "onnxruntime" if backend == "tensorrt" else backend
        manifest["accuracy"] = _accuracy_check(Artifact(out_dir, manifest), model, check_on)
    write_json_atomic(out_dir / "manifest.json", manifest, indent=2)
    return out_dir


class _ModuleBackend:
    """A test model (``forward`` returns the raw outputs as a tuple) as an inference backend:
    the full-precision reference of the tiny artifacts' accuracy check."""

    name = "torch"
    input_name = "images"

    def __init__(self, model: nn.Module, output_names: tuple[str, ...]) -> None:
        self.model = model.eval()
        self.model_path = Path("<in memory>")
        self.output_names = output_names
        self.input_shape = (None, 3, INPUT_SIZE[1], INPUT_SIZE[0])

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outputs = self.model(torch.from_numpy(images))
        return {n: t.numpy() for n, t in zip(self.output_names, outputs, strict=True)}


def _accuracy_check(artifact: Artifact, model: nn.Module, backend: str) -> dict:
    """The conversion pipeline's accuracy check of ``artifact`` against ``model``."""
    from quantize.accuracy import coco_metrics, compare_to_reference, run_detector
    from quantize.calibration import images_sha256

    # The tiny classes are the synthetic generator's first three; the others go unlabelled.
    samples = []
    for scene in SyntheticScenes(4, seed=1, config=SyntheticConfig(image_size=(96, 72))):
        keep = scene.class_ids < len(TINY_CLASSES)
        samples.append(Sample(scene.image, scene.boxes_xyxy[keep], scene.class_ids[keep],
                              scene.image_id, scene.file_name))
    names = tuple(o["name"] for o in artifact.manifest["outputs"])
    reference = Detector(artifact, backend=_ModuleBackend(model, names), allow_unchecked=True)
    deployed = Detector(artifact, backend=backend, allow_unchecked=True)
    reference_run = run_detector(reference.detect, samples, progress=False)
    reference_metrics = coco_metrics(samples, reference_run.detections, TINY_CLASSES)
    metrics = compare_to_reference(samples, TINY_CLASSES, reference_run, reference_metrics,
                                   run_detector(deployed.detect, samples, progress=False))
    eval_data = {"data": "synthetic:1", "seed": 1, "num_images": len(samples),
                 "sha256": images_sha256(samples)}
    # Tiny heads score little or no AP on these images: the check is a smoke test, as
    # quantize/run.py --allow-weak-reference runs it.
    return accuracy_section(metrics, max_drop=1.0, eval_data=eval_data,
                            allow_weak_reference=True)


def planted_anchor() -> tuple[int, np.ndarray]:
    """The planted object's anchor: level 0, cell (y=2, x=3), the square anchor (ratio 1).

    Returns ``(anchor index, prior cxcywh)``; index = (y * 8 + x) * 2 + 0 = 38, prior
    ``(28, 20, 32, 32)`` in input pixels (centre (3.5 * 8, 2.5 * 8), side 4 x stride).
    """
    index = (2 * 8 + 3) * 2
    return index, np.array([28.0, 20.0, 32.0, 32.0], np.float32)


# box_deltas planted on that anchor: dx = 1 → cx += 1/10 * 32 = 3.2; dy = -0.5 → cy -= 1.6;
# dw = 5 ln 1.5 → w = 48; dh = 0 → h = 32.
PLANTED_DELTAS = (1.0, -0.5, 5.0 * math.log(1.5), 0.0)
