import json
import math

import numpy as np
import pytest
import torch

from edgedet import box_coding
from edgedet.models.passd import (
    PASSD_COCO_ANCHOR_SCALES,
    PASSD_VOC_ANCHOR_SCALES,
    passd_mobilenet,
    passd_resnet101,
    passd_vgg16,
)
from edgedet.models.summary import count_parameters

BUILDERS = {"passd_vgg16": passd_vgg16, "passd_resnet101": passd_resnet101,
            "passd_mobilenet": passd_mobilenet}


@pytest.mark.parametrize(
    ("builder", "kwargs", "paper_params"),
    [
        (passd_vgg16, {}, 24.87e6),  # Table 1 exp. 7, VOC
        (passd_vgg16, {"use_pa": False}, 24.82e6),  # Table 1 exp. 1, plain conv head
        (passd_vgg16, {"use_attend": False}, 24.87e6),  # Table 1 exp. 3
        (passd_mobilenet, {}, 6.7e6),  # Table 6, COCO
        (passd_resnet101, {}, 47e6),  # Table 5, COCO
        (passd_resnet101, {"img_size": 768}, 48e6),  # Table 5, PASSD-768
    ],
)
def test_parameter_counts_match_paper(builder, kwargs, paper_params):
    with torch.device("meta"):  # counting needs no memory or initialisation
        model = builder(**kwargs)
    assert count_parameters(model) == pytest.approx(paper_params, rel=0.03)


def test_vgg16_counts_are_exact_to_the_reading():
    # The P&A module adds exactly the propose convs (+41,490) to the plain head (Table 1).
    with torch.device("meta"):
        pa, plain = passd_vgg16(), passd_vgg16(use_pa=False)
    assert count_parameters(pa) - count_parameters(plain) == 256 * 9 * 18 + 18
    assert round(count_parameters(plain) / 1e6, 2) == 24.82
    assert round(count_parameters(pa) / 1e6, 2) == 24.86  # paper: 24.87


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("img_size", [320, 512, 768])
def test_output_shapes_at_paper_sizes(name, img_size):
    # Shape-only forward on the meta device: no memory, no arithmetic.
    with torch.device("meta"):
        model = BUILDERS[name](num_classes=7, img_size=img_size)
        images = torch.empty(2, 3, img_size, img_size)
        out = model(images)
        exported = model.forward_export(images)
    total = model.anchor_spec((img_size, img_size)).num_anchors
    expected = {"objectness_logits": 2, "propose_deltas": 4, "cls_logits": 8, "box_deltas": 4,
                "adjusted_priors_cxcywh": 4}
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (2, total, c) for k, c in expected.items()}
    assert model.export_output_names == ("objectness_logits", "propose_deltas",
                                         "cls_logits", "box_deltas")
    assert [tuple(t.shape) for t in exported] == [
        (2, total, expected[k]) for k in model.export_output_names]
    # Table 4: 6,375 default boxes at 320 and 16,320 at 512; 768 adds the stride-128 level.
    cells = sum((img_size // s) ** 2 for s in (8, 16, 32, 64))
    if img_size == 768:
        cells += (768 // 128) ** 2
    assert total == 3 * cells
    assert {320: 6375, 512: 16320}.get(img_size, total) == total


def test_vgg16_320_forward():
    torch.manual_seed(0)
    model = passd_vgg16().eval()
    images = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        out = model(images)
        exported = model.forward_export(images)
    spec = model.anchor_spec((320, 320))
    assert spec.strides == (8, 16, 32, 64)
    assert spec.feature_sizes == ((40, 40), (20, 20), (10, 10), (5, 5))
    assert out["cls_logits"].shape == (1, 6375, 21)
    for name, tensor in zip(model.export_output_names, exported, strict=True):
        torch.testing.assert_close(tensor, out[name])
    priors = spec.generate()
    levels = [model.level_priors(hw, s).reshape(-1, 4)
              for hw, s in zip(spec.feature_sizes, spec.strides, strict=True)]
    np.testing.assert_array_equal(torch.cat(levels).numpy(), priors)
    # Adjusted boxes are the numpy decode of the propose deltas against the default boxes.
    adjusted = box_coding.xyxy_to_cxcywh(box_coding.decode(
        out["propose_deltas"][0].numpy(), priors, model.box_coder_weights))
    np.testing.assert_allclose(out["adjusted_priors_cxcywh"][0].numpy(), adjusted,
                               rtol=1e-5, atol=1e-3)
    # Eq. 2: the centre never moves more than half a stride.
    strides = np.repeat([8, 16, 32, 64], [4800, 1200, 300, 75])
    shift = np.abs(adjusted[:, :2] - priors[:, :2]).max(axis=1)
    assert (shift <= strides / 2 + 1e-4).all()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_small_input_anchor_count_and_gradients(name):
    torch.manual_seed(0)
    model = BUILDERS[name](num_classes=3).train()
    images = torch.randn(2, 3, 96, 128)
    out = model(images)
    spec = model.anchor_spec((128, 96))
    assert out["cls_logits"].shape == (2, spec.num_anchors, 4)
    loss = sum(out[k].sum() for k in model.export_output_names)
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def _mobilenet_pair(**kwargs):
    torch.manual_seed(0)
    reference = passd_mobilenet(num_classes=3).eval()
    variant = passd_mobilenet(num_classes=3, **kwargs).eval()
    variant.load_state_dict(reference.state_dict())  # same weights, different computation
    return reference, variant


def test_switches_change_the_output():
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference, no_attend = _mobilenet_pair(use_attend=False)
        base = reference(images)
        out = no_attend(images)
        torch.testing.assert_close(out["propose_deltas"], base["propose_deltas"])
        assert not torch.allclose(out["cls_logits"], base["cls_logits"])
        _, no_clip = _mobilenet_pair(clip_propose_offsets=False)
        assert not torch.allclose(no_clip(images)["propose_deltas"], base["propose_deltas"])
        plain = passd_mobilenet(num_classes=3, use_pa=False).eval()
        out = plain(images)
    assert set(out) == {"cls_logits", "box_deltas"}
    assert plain.export_output_names == ("cls_logits", "box_deltas")
    assert out["cls_logits"].shape == base["cls_logits"].shape


def test_attend_equals_plain_conv_when_the_adjusted_box_is_the_3x3_grid():
    # Propose deltas that keep the centre and scale every default box to 3 x stride make the
    # attend taps the cells of a plain 3x3 conv: both models must agree.
    reference, no_attend = _mobilenet_pair(use_attend=False)
    head = reference.head
    raw_size = [5 * math.log(3 / (4 * s)) for s in reference.anchor_scales]  # weight 5 on w, h
    with torch.no_grad():
        head.propose_box.weight.zero_()
        head.propose_box.bias.copy_(torch.tensor([[0.0, 0.0, r, r] for r in raw_size]).view(-1))
        no_attend.load_state_dict(reference.state_dict())
        images = torch.randn(1, 3, 64, 96)
        a, b = reference(images), no_attend(images)
    adjusted = a["adjusted_priors_cxcywh"]
    strides = torch.tensor([8.0, 16, 32, 64]).repeat_interleave(
        torch.tensor([8 * 12, 4 * 6, 2 * 3, 1 * 2]) * 3)
    torch.testing.assert_close(adjusted[0, :, 2], 3 * strides)
    torch.testing.assert_close(a["cls_logits"], b["cls_logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a["box_deltas"], b["box_deltas"], rtol=1e-4, atol=1e-5)


def test_config_round_trip_and_anchor_scale_defaults():
    with torch.device("meta"):
        for name, builder in BUILDERS.items():
            model = builder(num_classes=5, use_attend=False)
            config = json.loads(json.dumps(model.config))
            assert config["architecture"] == name
            rebuilt = BUILDERS[config["architecture"]](**config["kwargs"])
            assert [n for n, _ in rebuilt.named_parameters()] == [
                n for n, _ in model.named_parameters()]
            assert rebuilt.config == model.config
        assert passd_vgg16().anchor_scales == pytest.approx(PASSD_VOC_ANCHOR_SCALES)
        assert passd_mobilenet().anchor_scales == pytest.approx(PASSD_COCO_ANCHOR_SCALES)
        assert passd_resnet101().anchor_scales == pytest.approx(PASSD_COCO_ANCHOR_SCALES)
    assert passd_vgg16().box_coder_weights == (10.0, 10.0, 5.0, 5.0)
    with pytest.raises(ValueError, match="img_size"):
        passd_vgg16(img_size=300)


def test_mobilenet_width_multiplier_and_fpn_channels_shrink_the_model() -> None:
    from edgedet.models.builders import builder_of
    from edgedet.models.passd import passd_mobilenet

    full = passd_mobilenet(num_classes=12)
    small = passd_mobilenet(num_classes=12, width_mult=0.5, fpn_channels=128)
    n_full = sum(p.numel() for p in full.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < 0.3 * n_full
    assert small.backbone.out_channels == (128, 256, 512, 256)
    # the config rebuilds the same network; the paper configuration keeps its old config
    rebuilt = builder_of(small.config["architecture"])(**small.config["kwargs"])
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in small.parameters()]
    assert "width_mult" not in full.config["kwargs"]
    outputs = small.forward_export(torch.zeros(1, 3, 320, 320))
    assert [tuple(t.shape) for t in outputs] == [(1, 6375, 2), (1, 6375, 4), (1, 6375, 13),
                                                 (1, 6375, 4)]
