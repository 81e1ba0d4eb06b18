"""Every builder returns a ``DetectionModel``; its config rebuilds it; non-models are refused.

The all-builders checks build on the meta device (no weights allocated or initialised), so the
ResNet-101 variants cost a fraction of a second; forward passes and weight equality use the
small variants the other model tests use.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from edgedet.anchors import GridAnchorSpec, SsdPriorSpec
from edgedet.head_decoding import HEAD_FAMILIES
from edgedet.models.builders import MODEL_BUILDERS, builder_of
from edgedet.models.contract import (
    CONTRACT_MEMBERS,
    DetectionModel,
    as_detection_model,
    model_config,
)

# Builder name prefix -> head family (every builder must match exactly one).
FAMILY_BY_PREFIX = {
    "passd_": "passd",
    "daipnet_": "ssd",
    "harnet_": "retinanet",
    "dsanet_": "retinanet",
    "retinanet_": "retinanet",
}
KNOWN_OUTPUTS = {"objectness_logits", "propose_deltas", "cls_logits", "box_deltas",
                 "conf_logits"}


def expected_family(name: str) -> str:
    (family,) = [f for prefix, f in FAMILY_BY_PREFIX.items() if name.startswith(prefix)]
    return family


def build_on_meta(name: str, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return builder_of(name)(**kwargs)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
def test_every_builder_meets_the_contract(name: str) -> None:
    model = build_on_meta(name, num_classes=3)
    assert isinstance(model, DetectionModel)
    assert as_detection_model(model) is model
    assert type(model).head_family == expected_family(name)  # a class attribute
    assert model.head_family in HEAD_FAMILIES
    assert len(model.box_coder_weights) == 4
    assert set(model.export_output_names) <= KNOWN_OUTPUTS
    assert {"cls_logits", "box_deltas"} <= set(model.export_output_names)
    assert not hasattr(model, "image_size")  # removed: the anchor spec says the input size

    config = model.config
    assert config["architecture"] == name
    assert config["kwargs"]["num_classes"] == 3
    assert json.loads(json.dumps(config)) == config  # what a checkpoint stores is all of it
    rebuilt = build_on_meta(config["architecture"], **config["kwargs"])
    assert type(rebuilt) is type(model)
    assert rebuilt.config == config
    assert rebuilt.export_output_names == model.export_output_names
    assert shapes(rebuilt) == shapes(model)

    img_size = config["kwargs"]["img_size"]
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    spec = model.anchor_spec(size)
    assert isinstance(spec, GridAnchorSpec | SsdPriorSpec)
    assert spec.image_size == size


# Small variants, with non-default switches so their kwargs take part in the round trip:
# (builder, kwargs, input (width, height)).
SMALL_VARIANTS = [
    ("passd_mobilenet", {"width_mult": 0.25, "fpn_channels": 32}, (128, 128)),
    ("passd_mobilenet", {"width_mult": 0.25, "fpn_channels": 32, "use_pa": False}, (128, 128)),
    ("harnet_resnet18_small", {"img_size": (96, 64), "use_clgn": False}, (96, 64)),
    ("dsanet_resnet18", {"img_size": (96, 64), "with_confidence": True}, (96, 64)),
    ("retinanet_resnet18", {"img_size": (96, 64)}, (96, 64)),
    ("daipnet_vgg16", {"use_pafm": False}, (300, 300)),
]


def seeded_build(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return builder_of(name)(**kwargs).eval()


@pytest.mark.parametrize(("name", "kwargs", "size"), SMALL_VARIANTS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(SMALL_VARIANTS)])
def test_config_rebuilds_an_identical_model(name: str, kwargs: dict, size: tuple[int, int]
                                            ) -> None:
    model = seeded_build(name, num_classes=3, **kwargs)
    config = json.loads(json.dumps(model.config))
    rebuilt = seeded_build(config["architecture"], **config["kwargs"])
    assert rebuilt.config == model.config
    state, rebuilt_state = model.state_dict(), rebuilt.state_dict()
    assert state.keys() == rebuilt_state.keys()
    assert all(torch.equal(state[k], rebuilt_state[k]) for k in state)

    width, height = size
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = model(images)
        exported = model.forward_export(images)
        exported_again = rebuilt.forward_export(images)
    assert set(model.export_output_names) <= set(outputs)
    assert len(exported) == len(model.export_output_names)
    num_anchors = model.anchor_spec(size).num_anchors
    for output_name, tensor, again in zip(model.export_output_names, exported, exported_again,
                                          strict=True):
        assert torch.equal(tensor, outputs[output_name])
        assert torch.equal(tensor, again)
        assert tensor.shape[:2] == (1, num_anchors), output_name


def test_passd_plain_head_ablation_is_still_the_passd_family() -> None:
    plain = build_on_meta("passd_mobilenet", num_classes=3, use_pa=False)
    assert plain.head_family == "passd"
    assert "propose_deltas" not in plain.export_output_names


class _AlmostDetector:
    """Everything of the contract but ``anchor_spec``."""

    head_family = "ssd"
    box_coder_weights = (1.0, 1.0, 1.0, 1.0)
    export_output_names = ("cls_logits", "box_deltas")
    default_nms_mode = "hard"

    def __init__(self) -> None:
        self.config = {"architecture": "almost", "kwargs": {}}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {}

    def forward_export(self, images: Tensor) -> tuple[Tensor, ...]:
        return ()


class _WrongValues(_AlmostDetector):
    head_family = "yolo"
    export_output_names = ()

    def anchor_spec(self, image_size: tuple[int, int]) -> GridAnchorSpec:
        raise NotImplementedError


def test_contract_members_are_the_protocol_definition() -> None:
    assert CONTRACT_MEMBERS == ("head_family", "config", "box_coder_weights",
                                "export_output_names", "default_nms_mode", "forward",
                                "forward_export", "anchor_spec")


def test_non_models_get_a_type_error_naming_what_is_missing() -> None:
    linear = nn.Linear(2, 2)
    assert not isinstance(linear, DetectionModel)
    with pytest.raises(TypeError, match=r"Linear does not meet .*DetectionModel") as info:
        as_detection_model(linear)
    for member in ("head_family", "config", "box_coder_weights", "export_output_names",
                   "forward_export", "anchor_spec"):
        assert member in str(info.value)
    assert "forward," not in str(info.value)  # nn.Module has forward; only what is missing

    with pytest.raises(TypeError, match=r"^needed here: _AlmostDetector .*: missing anchor_spec$"):
        as_detection_model(_AlmostDetector(), purpose="needed here")
    with pytest.raises(TypeError, match="missing head_family, config, box_coder_weights"):
        as_detection_model(object())


def test_wrong_values_are_named() -> None:
    with pytest.raises(TypeError) as info:
        as_detection_model(_WrongValues())
    message = str(info.value)
    assert "head_family 'yolo' is not one of" in message
    assert "export_output_names must be a non-empty tuple" in message


def test_model_config_is_json_plain() -> None:
    config = model_config("x", {"img_size": (3, 4), "nested": [(1, 2)], "flag": True})
    assert config == {"architecture": "x",
                      "kwargs": {"img_size": [3, 4], "nested": [[1, 2]], "flag": True}}
    assert json.loads(json.dumps(config)) == config
