import json

import pytest
import torch

from edgedet.models.daipnet import (
    AdaptiveFeatureFusion,
    ProgressiveAttentionFusion,
    daipnet_vgg16,
    daipnet_vgg16_small,
)

SWITCHES = [{}, {"use_ipn": False}, {"use_affm": False}, {"use_pafm": False}]


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("img_size", "paper_params"), [(300, 34.3e6), (512, 36e6)])
def test_without_extensions_it_is_ssd(img_size, paper_params):
    # The paper gives no DAIPNet parameter count; with everything switched off the model is
    # SSD on COCO, whose size PASSD's Tables 5-6 give (SSD-300 34.3M, SSD512 36M).
    with torch.device("meta"):
        model = daipnet_vgg16(img_size=img_size, use_ipn=False, use_affm=False, use_pafm=False)
    assert _count(model) == pytest.approx(paper_params, rel=0.03)


@pytest.mark.parametrize("img_size", [300, 512])
@pytest.mark.parametrize("switches", SWITCHES)
def test_output_shapes_and_priors(img_size, switches):
    with torch.device("meta"):
        model = daipnet_vgg16(num_classes=5, img_size=img_size, **switches)
        images = torch.empty(2, 3, img_size, img_size)
        out = model(images)
        exported = model.forward_export(images)
    spec = model.anchor_spec((img_size, img_size))
    total = {300: 8732, 512: 24564}[img_size]  # SSD's prior counts
    assert spec.num_anchors == total
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "cls_logits": (2, total, 6), "box_deltas": (2, total, 4)}
    assert [tuple(t.shape) for t in exported] == [(2, total, 6), (2, total, 4)]
    expected_sizes = {300: ((38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)),
                      512: ((64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1))}
    assert spec.feature_sizes == expected_sizes[img_size]
    assert model.box_coder_weights == (10.0, 10.0, 5.0, 5.0)


def test_ssd300_prior_spec():
    with torch.device("meta"):
        spec = daipnet_vgg16().anchor_spec((300, 300))
    assert spec.steps == (8, 16, 32, 64, 100, 300)
    assert spec.min_sizes == (30, 60, 111, 162, 213, 264)
    assert spec.max_sizes == (60, 111, 162, 213, 264, 315)
    assert spec.aspect_ratios == ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = daipnet_vgg16(num_classes=3, img_size=300).eval()
    return model, torch.randn(1, 3, 300, 300)


def _omegas(model):
    return [fusion.omega for fusion in model.affm]


def test_affm_with_zero_omega_ignores_the_image_pyramid(model_and_images):
    model, images = model_and_images
    assert all(float(w.detach()) == 0.0 for w in _omegas(model))  # eq. 1: initial value 0
    with torch.no_grad():
        before = model(images)
        for p in model.ipn.parameters():
            p.add_(torch.randn_like(p))  # perturb the whole IPN path
        after = model(images)
        for key in before:
            assert torch.equal(before[key], after[key]), key
        _omegas(model)[0].fill_(0.25)
        changed = model(images)
        _omegas(model)[0].zero_()
    assert not torch.allclose(changed["cls_logits"], before["cls_logits"])


def test_switches_change_the_output(model_and_images):
    model, images = model_and_images
    with torch.no_grad():
        for w in _omegas(model):
            w.fill_(0.5)  # with omega = 0 the IPN switch is (by design) a no-op
        reference = model(images)["cls_logits"]
        for switches in SWITCHES[1:]:
            with torch.device("meta"):  # skip the initialisation: every weight is loaded
                variant = daipnet_vgg16(num_classes=3, img_size=300, **switches)
            variant = variant.to_empty(device="cpu").eval()
            missing, _ = variant.load_state_dict(model.state_dict(), strict=False)
            assert not missing  # every variant parameter is shared with the full model
            assert not torch.allclose(variant(images)["cls_logits"], reference), switches
        for w in _omegas(model):
            w.zero_()


def test_gradients_reach_every_parameter(model_and_images):
    model, images = model_and_images
    model.train()
    with torch.no_grad():
        for w in _omegas(model):
            w.fill_(0.5)  # at omega = 0 the IPN gets no gradient yet (it is multiplied by 0)
    out = model(images)
    (out["cls_logits"].sum() + out["box_deltas"].sum()).backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.any(p.grad != 0)]
    model.eval()
    model.zero_grad()
    with torch.no_grad():
        for w in _omegas(model):
            w.zero_()
    assert not missing


def test_affm_and_pafm_modules():
    torch.manual_seed(0)
    affm = AdaptiveFeatureFusion(8, prev_channels=4).eval()
    e, e_prev, aux = torch.randn(2, 8, 5, 5), torch.randn(2, 4, 10, 10), torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        b = affm(e, e_prev, None)
        torch.testing.assert_close(affm(e, e_prev, aux), b)
        affm.omega.fill_(1.0)
        torch.testing.assert_close(affm(e, e_prev, aux), aux)  # eq. 1 at w = 1
    pafm = ProgressiveAttentionFusion([8, 16, 8, 4])
    xs = [torch.randn(2, c, s, s) for c, s in ((8, 10), (16, 5), (8, 3), (4, 2))]
    out = pafm(xs)
    assert [tuple(o.shape) for o in out] == [tuple(x.shape) for x in xs]
    assert out[-1] is xs[-1]
    # Level 1 concatenates three projected higher levels (3 x 128 channels).
    assert pafm.levels[0].gate_reduce.in_channels == 3 * 128


def test_config_round_trip():
    with torch.device("meta"):
        model = daipnet_vgg16(num_classes=20, img_size=512, use_pafm=False)
        config = json.loads(json.dumps(model.config))
        rebuilt = daipnet_vgg16(**config["kwargs"])
    assert config["architecture"] == "daipnet_vgg16"
    assert _count(rebuilt) == _count(model)
    with pytest.raises(ValueError, match="300 or 512"):
        daipnet_vgg16(img_size=320)


def test_small_edge_configuration():
    with torch.device("meta"):
        model = daipnet_vgg16_small(num_classes=12).eval()
        full = daipnet_vgg16(num_classes=12)
        out = model(torch.empty(1, 3, 300, 300))
    assert model.config["architecture"] == "daipnet_vgg16_small"
    # Quarter width: about 1/16 of the parameters (3.2M against 50M), same priors and outputs.
    assert _count(model) == pytest.approx(3.206e6, rel=0.01)
    assert _count(model) < _count(full) / 10
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "cls_logits": (1, 8732, 13), "box_deltas": (1, 8732, 4)}
    assert model.anchor_spec((300, 300)) == full.anchor_spec((300, 300))
    assert model.extras.out_channels == (128, 64, 64, 64)
    assert model.pafm.projections[0][0].out_channels == 32  # PAFM's C = 128 / 4
