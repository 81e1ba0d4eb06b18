"""The contract every detector in ``edgedet.models`` meets, and the one way to build its config.

Training (criterion, family defaults), export and checkpoints only use what ``DetectionModel``
names, so they dispatch on ``head_family`` and ``export_output_names`` instead of on classes.
A model enters the pipeline through ``as_detection_model``, which says what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

from edgedet.anchors import AnchorSpec
from edgedet.head_decoding import HEAD_FAMILIES
from edgedet.models.box_coder import BoxWeights
from edgedet.postprocess import NMS_MODES


@runtime_checkable
class DetectionModel(Protocol):
    """A single-stage detector as the rest of edgedet sees it (an ``nn.Module`` in practice).

    Attributes:
        head_family: the ``edgedet.head_decoding.HEAD_FAMILIES`` entry that decodes the head
            outputs and picks the training recipe: ``"passd"`` (PASSD, both heads),
            ``"ssd"`` (DAIPNet), ``"retinanet"`` (RetinaNet, HAR-Net, DSANet). A class
            attribute: it is a property of the meta-architecture, not of one instance.
        config: ``model_config(architecture, kwargs)``; ``builder_of(config["architecture"])
            (**config["kwargs"])`` rebuilds the network (JSON-serialisable).
        box_coder_weights: ``(wx, wy, ww, wh)`` scaling of the box offsets.
        export_output_names: names of the ``forward_export`` tensors, in order.
        default_nms_mode: the ``edgedet.postprocess.NMS_MODES`` entry the paper tests with
            (``"soft+voting"`` for HAR-Net, ``"hard"`` otherwise); checkpoints and artifact
            manifests carry it as ``postprocess.nms_mode``. A class attribute.

    ``forward(images (N, 3, H, W))`` (training) returns ``{name: (N, A, k)}`` with at least
    the ``export_output_names`` keys (PASSD's P&A head adds ``adjusted_priors_cxcywh``);
    ``forward_export(images (N, 3, H, W))`` returns those tensors as a tuple in
    ``export_output_names`` order; ``anchor_spec((W, H))`` gives the ``A`` anchors in the
    order of the flattened outputs.
    """

    head_family: ClassVar[str]
    config: dict[str, Any]
    box_coder_weights: BoxWeights
    export_output_names: tuple[str, ...]
    default_nms_mode: ClassVar[str]

    def forward(self, images: Tensor) -> dict[str, Tensor]: ...

    def forward_export(self, images: Tensor) -> tuple[Tensor, ...]: ...

    def anchor_spec(self, image_size: tuple[int, int]) -> AnchorSpec: ...


# The protocol's members in declaration order, read off the class so the error message of
# ``as_detection_model`` cannot drift from the definition.
CONTRACT_MEMBERS: tuple[str, ...] = (
    *DetectionModel.__annotations__,
    *(name for name, value in vars(DetectionModel).items()
      if callable(value) and not name.startswith("_")),
)


def _value_problems(model: DetectionModel) -> list[str]:
    """What is wrong with the values of a model that has every member (empty if nothing)."""
    problems = []
    if model.head_family not in HEAD_FAMILIES:
        problems.append(f"head_family {model.head_family!r} is not one of {HEAD_FAMILIES}")
    config = model.config
    if not (isinstance(config, dict) and isinstance(config.get("architecture"), str)
            and isinstance(config.get("kwargs"), dict)):
        problems.append(f"config must be {{'architecture': str, 'kwargs': dict}}, got {config!r}")
    if model.default_nms_mode not in NMS_MODES:
        problems.append(f"default_nms_mode {model.default_nms_mode!r} is not one of {NMS_MODES}")
    names = model.export_output_names
    if not (isinstance(names, tuple) and names and all(isinstance(n, str) for n in names)):
        problems.append(f"export_output_names must be a non-empty tuple of str, got {names!r}")
    return problems


def as_detection_model(obj: object, purpose: str | None = None) -> DetectionModel:
    """``obj`` itself once it is checked to meet ``DetectionModel``.

    Args:
        obj: the model entering the pipeline (already unwrapped from DDP / ``torch.compile``:
            the check reads the detector's own attributes).
        purpose: what needed the model, put in front of the error (e.g. ``"no training
            criterion for Linear"``).

    Raises:
        TypeError: naming the missing members, or the members whose values are wrong.
    """
    if isinstance(obj, DetectionModel):
        problems = _value_problems(obj)
        if not problems:
            return obj
    else:
        missing = [name for name in CONTRACT_MEMBERS if not hasattr(obj, name)]
        problems = [f"missing {', '.join(missing)}"]
    message = (f"{type(obj).__name__} does not meet edgedet.models.contract.DetectionModel: "
               f"{'; '.join(problems)}")
    raise TypeError(f"{purpose}: {message}" if purpose else message)


def model_config(architecture: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config`` every detector carries: ``{"architecture": ..., "kwargs": {...}}``.

    ``architecture`` is the builder's name (``edgedet.models.builders.MODEL_BUILDERS``) and
    ``kwargs`` its arguments, so ``builder(**kwargs)`` rebuilds the model. Tuples become lists,
    as they would after the JSON round trip through a checkpoint, so a config compares equal
    to its reloaded copy.
    """
    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return {"architecture": architecture, "kwargs": {k: plain(v) for k, v in kwargs.items()}}


__all__ = ["CONTRACT_MEMBERS", "DetectionModel", "as_detection_model", "model_config"]
