import pytest
import torch

from edgedet.head_decoding import HEAD_FAMILIES
from train.models import (
    FAMILY_DEFAULTS,
    MODEL_BUILDERS,
    build_model,
    default_img_size,
    family_defaults,
    is_harnet,
    models_table,
)


def test_table_lists_every_builder_by_its_own_name():
    for name, builder in MODEL_BUILDERS.items():
        assert builder.__name__ == name
        assert name in models_table()
    assert default_img_size("passd_mobilenet") == 320
    assert tuple(default_img_size("harnet_resnet50")) == (1000, 600)


def test_unsupported_sizes_fall_back_to_the_builder_default_with_a_warning():
    with pytest.warns(UserWarning, match="training at 64x64"):
        model = build_model("passd_mobilenet", 3, (64, 64))
    assert model.config["kwargs"]["img_size"] == 320
    outputs = model.eval()(torch.zeros(1, 3, 64, 64))
    assert outputs["cls_logits"].shape[1] == model.anchor_spec((64, 64)).num_anchors


def test_families_and_errors():
    assert family_defaults(build_model("dsanet_resnet18", 2, (64, 64))).family == "retinanet"
    with pytest.warns(UserWarning):
        assert family_defaults(build_model("passd_mobilenet", 2, (64, 64))).resize == "stretch"
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("yolo", 2, (64, 64))
    with pytest.raises(TypeError, match="no training family"):
        family_defaults(torch.nn.Linear(1, 1))


def test_every_head_family_has_training_defaults():
    assert set(FAMILY_DEFAULTS) == set(HEAD_FAMILIES)
    assert all(defaults.family == family for family, defaults in FAMILY_DEFAULTS.items())
    with pytest.warns(UserWarning):
        daipnet = build_model("daipnet_vgg16", 2, (64, 64))
    assert family_defaults(torch.nn.DataParallel(daipnet)) is FAMILY_DEFAULTS["ssd"]


def test_incremental_attention_is_a_harnet_capability():
    assert is_harnet(build_model("harnet_resnet18_small", 2, (64, 64)))
    assert not is_harnet(build_model("dsanet_resnet18", 2, (64, 64)))
