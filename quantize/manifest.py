"""The manifest of an artifact, filled from a detector and its checkpoint config.

The artifact contract itself (keys, vocabularies, validation, the atomic writer) is the
runtime's: ``edgedet.artifact``. This module only gathers the facts that need the PyTorch
model: output names and shapes (one ``forward_export`` on zeros), the anchor spec, the box
coder weights and the head family (``edgedet.models.contract.DetectionModel``), and takes the
rest (classes, pre- and post-processing) from the checkpoint config (``train/checkpoint.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from edgedet.artifact import ManifestError, make_manifest
from edgedet.models.contract import DetectionModel, as_detection_model

# What each raw output means, by output name (PASSD's "adjusted boxes" differ by family).
_MEANINGS = {
    "objectness_logits": "propose-stage logits [background, object] per default box",
    "propose_deltas": "propose-stage offsets of the default boxes (eq. 2 clipped), "
                      "box_coder_weights units",
    "conf_logits": "object-confidence logit (sigmoid); score = sigmoid(cls) * sigmoid(conf)",
}


def _meaning(name: str, family: str) -> str:
    if name == "cls_logits":
        return ("class logits, background at 0 (softmax)" if family in ("ssd", "passd")
                else "per-class logits (sigmoid), no background")
    if name == "box_deltas":
        anchors = "the adjusted boxes" if family == "passd" else "the anchors"
        return f"box offsets relative to {anchors}, box_coder_weights units"
    return _MEANINGS.get(name, name)


def output_shapes(model: DetectionModel, input_size: tuple[int, int], batch_size: int = 1
                  ) -> dict[str, list[int]]:
    """``{output name: [batch, A, k]}`` of ``forward_export`` at ``input_size = (W, H)``."""
    width, height = input_size
    module = model  # an nn.Module in practice
    was_training = module.training  # type: ignore[attr-defined]
    module.eval()  # type: ignore[attr-defined]
    try:
        with torch.no_grad():
            outputs = model.forward_export(torch.zeros(batch_size, 3, height, width))
    finally:
        module.train(was_training)  # type: ignore[attr-defined]
    return {name: list(t.shape)
            for name, t in zip(model.export_output_names, outputs, strict=True)}


def build_manifest(
    model: DetectionModel,
    config: Mapping[str, Any],
    name: str,
    precision: str,
    backend: str,
    source: Mapping[str, Any] | None = None,
    shapes: Mapping[str, Iterable[int]] | None = None,
    kept_out_of_int8: Iterable[str] = (),
    batch_size: int = 1,
) -> dict[str, Any]:
    """The manifest of an artifact of ``model`` (without ``files`` and ``accuracy``, which
    ``edgedet.artifact.Artifact.stage`` and the accuracy check add).

    Args:
        model: the detector (training or rewritten form: both export the same outputs).
        config: the checkpoint config; ``architecture``, ``class_names`` and ``preprocess``
            are required, ``postprocess`` is taken when present.
        name: the artifact's name, e.g. ``"passd_mobilenet_int8"``.
        precision, backend: from ``edgedet.artifact.PRECISIONS`` / ``edgedet.backends``.
        source: ``{"checkpoint", "checkpoint_sha256", "calibration": {...} | None}``.
        shapes: ``{output name: shape}`` of the exported graph; when None, one
            ``forward_export`` on zeros measures them.
        kept_out_of_int8: op names left in float by the INT8 step.
        batch_size: the graph's fixed batch dimension.

    Raises:
        ManifestError: a missing config key, or anything ``make_manifest`` refuses (e.g.
            outputs whose anchor count differs from the anchor spec's).
    """
    model = as_detection_model(model)
    missing = [key for key in ("architecture", "class_names", "preprocess") if key not in config]
    if missing:
        raise ManifestError(f"checkpoint config lacks {missing} (keys: {sorted(config)})")
    input_size = tuple(int(v) for v in config["preprocess"]["input_size"])
    family = model.head_family
    if shapes is None:
        shapes = output_shapes(model, input_size, batch_size)  # type: ignore[arg-type]
    absent = [n for n in model.export_output_names if n not in shapes]
    if absent:
        raise ManifestError(f"no shape for output(s) {absent} (have {sorted(shapes)})")
    outputs = [{"name": n, "shape": [int(v) for v in shapes[n]], "meaning": _meaning(n, family)}
               for n in model.export_output_names]
    return make_manifest(
        name=name, architecture=str(config["architecture"]), head_family=family,
        class_names=config["class_names"], preprocess=config["preprocess"],
        anchor_spec=model.anchor_spec(input_size).to_dict(),  # type: ignore[arg-type]
        box_coder_weights=model.box_coder_weights, outputs=outputs, precision=precision,
        backend=backend, batch_size=batch_size,
        # The model's own NMS unless the checkpoint says otherwise.
        postprocess={"nms_mode": model.default_nms_mode, **dict(config.get("postprocess") or {})},
        source=source, kept_out_of_int8=kept_out_of_int8)
