"""The models ``--model NAME`` can train (``edgedet.models.builders``' table) and per-family
training defaults.

A model's *family* (``model.head_family``) decides its head decoding
(``edgedet.head_decoding``), its augmentation (SSD-style or RetinaNet-style) and its resize
policy at run time.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

from torch import nn

from edgedet.models.builders import MODEL_BUILDERS, builder_of
from edgedet.models.contract import as_detection_model

__all__ = ["FAMILY_DEFAULTS", "MODEL_BUILDERS", "build_model", "builder_of", "default_img_size",
           "family_defaults", "is_harnet", "models_table"]


@dataclass(frozen=True)
class FamilyDefaults:
    """What differs between the head families during training and evaluation.

    Attributes:
        family: ``edgedet.head_decoding`` family name.
        augmentation: ``"ssd"`` (photometric, zoom-out, IoU crop, flip) or ``"retinanet"``
            (flip, scale jitter).
        resize: ``PreprocessConfig.resize`` used for training and stored for the runtime.
        score_threshold, iou_threshold, pre_nms_top_k, max_detections: evaluation
            post-processing (the papers' test settings).
    """

    family: str
    augmentation: str
    resize: str
    score_threshold: float
    iou_threshold: float
    pre_nms_top_k: int
    max_detections: int = 100


# SSD family (PASSD sec. 6.2): threshold 0.01, top 200, NMS 0.45; SSD trains on stretched
# inputs. RetinaNet family (Lin et al.): threshold 0.05, top 1000, NMS 0.5; it keeps the
# aspect ratio, which at a fixed export input size means letterboxing.
FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    defaults.family: defaults
    for defaults in (
        FamilyDefaults("ssd", "ssd", "stretch", 0.01, 0.45, 200),
        FamilyDefaults("passd", "ssd", "stretch", 0.01, 0.45, 200),
        FamilyDefaults("retinanet", "retinanet", "letterbox", 0.05, 0.5, 1000),
    )
}


def family_defaults(model: nn.Module) -> FamilyDefaults:
    """The defaults of a built detector's ``head_family`` (DDP wrappers are looked through)."""
    detector = as_detection_model(getattr(model, "module", model),
                                  purpose="no training family known")
    return FAMILY_DEFAULTS[detector.head_family]


def is_harnet(model: nn.Module) -> bool:
    """Whether ``model`` (DDP looked through) has HAR-Net's run-time attention switch.

    Incremental training (``train/engine.py``) needs exactly that capability,
    ``set_attention_enabled``, which only HAR-Net has.
    """
    return callable(getattr(getattr(model, "module", model), "set_attention_enabled", None))


def default_img_size(name: str) -> int | tuple[int, int]:
    """The builder's own default input size (the paper's), ``int`` or ``(width, height)``."""
    return inspect.signature(builder_of(name)).parameters["img_size"].default


def build_model(
    name: str, num_classes: int, img_size: tuple[int, int], **switches: object
) -> nn.Module:
    """Build ``name`` for ``num_classes`` object classes and an input of ``img_size = (W, H)``.

    Builders whose architecture only exists at some sizes (PASSD 320/512/768, DAIPNet
    300/512) are built at their default size when ``img_size`` is not one of them; the
    networks are fully convolutional and ``anchor_spec(img_size)`` follows the real input, so
    they still train at ``img_size`` (used by the small CPU tests). A warning says so.
    """
    builder = builder_of(name)
    square = img_size[0] == img_size[1]
    takes_pair = not isinstance(default_img_size(name), int)
    size_arg: int | tuple[int, int] = img_size if takes_pair else img_size[0]
    if not takes_pair and not square:
        warnings.warn(f"{name} is defined for square inputs; building it at its default size "
                      f"and training at {img_size[0]}x{img_size[1]}", stacklevel=2)
        return builder(num_classes=num_classes, **switches)
    try:
        return builder(num_classes=num_classes, img_size=size_arg, **switches)
    except ValueError as error:
        if "img_size" not in str(error):
            raise
        warnings.warn(f"{name}: {error}; building it at its default size "
                      f"{default_img_size(name)} and training at {img_size[0]}x{img_size[1]}",
                      stacklevel=2)
        return builder(num_classes=num_classes, **switches)


def models_table() -> str:
    """``name  builder`` lines for ``--help``."""
    width = max(map(len, MODEL_BUILDERS))
    return "\n".join(
        f"  {name:<{width}}  {builder.__module__}.{builder.__name__}"
        f" (paper input {default_img_size(name)})"
        for name, builder in MODEL_BUILDERS.items()
    )
