"""Tests of train/losses.py: hard negative mining, focal loss, the three criteria, dispatch.

Golden values are written out from the definitions with ``math`` (not with the code under
test). Boxes are mostly 10 px wide strips whose IoU with ``[0, 0, 10, 10]`` is ``h / 10``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgedet.models.daipnet import daipnet_vgg16
from edgedet.models.dsanet import dsanet_resnet18
from edgedet.models.harnet import harnet_resnet18_small
from edgedet.models.passd import passd_mobilenet
from train.losses import (
    MultiboxLoss,
    PassdLoss,
    RetinaNetLoss,
    assign_ssd_targets,
    build_criterion,
    hard_negative_mining,
    sigmoid_focal_loss,
)

SSD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
LOG2 = math.log(2.0)


def cxcywh(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes_xyxy": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long)}


def empty_target() -> dict[str, torch.Tensor]:
    return target([], [])


def smooth_l1(x: float, beta: float) -> float:
    x = abs(x)
    return 0.5 * x * x / beta if x < beta else x - 0.5 * beta


# --------------------------------------------------------------------------- mining


def test_hard_negative_mining_picks_top_three_per_positive():
    loss = torch.tensor([[9.0, 0.1, 5.0, 0.2, 4.0, 7.0, 3.0, 0.3]])
    # anchor 0 is the positive, anchor 5 is not minable (e.g. ignored) despite its loss
    negative = torch.tensor([[False, True, True, True, True, False, True, True]])
    selected = hard_negative_mining(loss, negative, torch.tensor([1]), neg_pos_ratio=3)
    assert selected.nonzero()[:, 1].tolist() == [2, 4, 6]


def test_hard_negative_mining_is_per_image_and_capped_by_negatives():
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    negative = torch.tensor([[False, True, True, True], [True, True, True, True]])
    selected = hard_negative_mining(loss, negative, torch.tensor([1, 0]))
    assert selected[0].tolist() == [False, True, True, True]  # 3 * 1 positive, all 3 negatives
    assert not selected[1].any()  # no positive in the image: no negatives (SSD)
    selected = hard_negative_mining(loss[:1], negative[:1], torch.tensor([5]))
    assert selected.sum().item() == 3


# --------------------------------------------------------------------------- focal loss


def test_sigmoid_focal_loss_matches_hand_computation():
    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected = [
        0.25 * (1 - 0.5) ** 2 * LOG2,  # logit 0, target 1: p_t = 0.5
        0.75 * sigmoid(2.0) ** 2 * math.log(1 + math.exp(2.0)),  # logit 2, target 0
        0.25 * (1 - sigmoid(-1.0)) ** 2 * math.log(1 + math.exp(1.0)),  # logit -1, target 1
    ]
    loss = sigmoid_focal_loss(torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_sigmoid_focal_loss_at_gamma_zero_is_alpha_weighted_bce():
    logits = torch.tensor([[-3.0, 0.5], [1.5, -0.2]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    alpha_t = torch.tensor([[0.75, 0.25], [0.25, 0.75]])
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, gamma=0.0), alpha_t * bce)


# --------------------------------------------------------------------------- SSD multibox


def multibox_case() -> tuple[dict[str, torch.Tensor], torch.Tensor, float, float]:
    """One ground truth (class 1 -> logit 2) on prior 0; four far-away negative priors.

    Negative ``i`` has logits ``[0, b_i, 0]`` so its background cross-entropy is
    ``log(2 + e^b_i)``; with ``b = (3, 1, 2, 0)`` the three hardest are priors 1, 3, 2.
    """
    priors = torch.tensor([cxcywh(0, 0, 10, 10)] + [cxcywh(100 * i, 100, 100 * i + 10, 110)
                                                    for i in range(1, 5)])
    cls_logits = torch.zeros(1, 5, 3)
    for anchor, b in zip((1, 2, 3, 4), (3.0, 1.0, 2.0, 0.0), strict=True):
        cls_logits[0, anchor, 1] = b
    box_deltas = torch.zeros(1, 5, 4)
    box_deltas[0, 0, 0] = 1.0  # target offsets are 0: Smooth-L1(1) = 0.5
    outputs = {"cls_logits": cls_logits, "box_deltas": box_deltas}
    expected_cls = (math.log(3.0) + math.log(2 + math.exp(3.0)) + math.log(2 + math.exp(2.0))
                    + math.log(2 + math.exp(1.0)))
    return outputs, priors, expected_cls, 0.5


def test_multibox_loss_golden_value_with_hard_negatives():
    outputs, priors, expected_cls, expected_box = multibox_case()
    losses = MultiboxLoss(SSD_WEIGHTS)(outputs, priors, [target([[0, 0, 10, 10]], [1])])
    assert losses["cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["box"].item() == pytest.approx(expected_box, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(expected_cls + expected_box, rel=1e-5)


def test_multibox_loss_normalises_by_positives_of_the_batch():
    outputs, priors, expected_cls, expected_box = multibox_case()
    # A second image without objects adds no positive and no mined negative: same loss.
    batch = {name: torch.cat([value, value]) for name, value in outputs.items()}
    losses = MultiboxLoss(SSD_WEIGHTS)(batch, priors, [target([[0, 0, 10, 10]], [1]),
                                                       empty_target()])
    assert losses["cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    # Two objects, one per image: sums double, positives double.
    losses = MultiboxLoss(SSD_WEIGHTS)(batch, priors, [target([[0, 0, 10, 10]], [1])] * 2)
    assert losses["cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["box"].item() == pytest.approx(expected_box, rel=1e-5)


def test_multibox_box_target_uses_the_coder_weights():
    priors = torch.tensor([cxcywh(0, 0, 10, 5), cxcywh(50, 50, 60, 60)])
    outputs = {"cls_logits": torch.zeros(1, 2, 2), "box_deltas": torch.zeros(1, 2, 4)}
    losses = MultiboxLoss(SSD_WEIGHTS)(outputs, priors, [target([[0, 0, 10, 10]], [0])])
    # prior (5, 2.5, 10, 5) vs box (5, 5, 10, 10): dy = 10 * 2.5 / 5 = 5, dh = 5 * log 2
    expected = smooth_l1(5.0, 1.0) + smooth_l1(5 * LOG2, 1.0)
    assert losses["box"].item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- no objects


def passd_outputs(n: int, a: int, num_classes: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "objectness_logits": torch.randn(n, a, 2, generator=generator),
        "propose_deltas": torch.randn(n, a, 4, generator=generator),
        "cls_logits": torch.randn(n, a, num_classes + 1, generator=generator),
        "box_deltas": torch.randn(n, a, 4, generator=generator),
    }


def leaves(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.clone().requires_grad_(True) for name, value in outputs.items()}


def grid_priors(count: int = 6) -> torch.Tensor:
    return torch.tensor([cxcywh(20 * i, 0, 20 * i + 10, 10) for i in range(count)])


@pytest.mark.parametrize("family", ["multibox", "passd"])
def test_softmax_losses_are_zero_with_a_graph_without_objects(family: str):
    priors = grid_priors()
    outputs = leaves(passd_outputs(2, len(priors)))
    if family == "multibox":
        outputs = {k: outputs[k] for k in ("cls_logits", "box_deltas")}
        criterion: nn.Module = MultiboxLoss(SSD_WEIGHTS)
    else:
        outputs["adjusted_priors_cxcywh"] = priors.expand(2, -1, -1).clone()
        criterion = PassdLoss(SSD_WEIGHTS)
    losses = criterion(outputs, priors, [empty_target(), empty_target()])
    assert all(value.item() == 0.0 for value in losses.values())
    losses["loss"].backward()
    for name in ("cls_logits", "box_deltas"):
        assert outputs[name].grad is not None and not outputs[name].grad.any()


def test_retinanet_loss_without_objects_trains_negatives_only():
    priors = grid_priors(3)
    cls_logits = torch.tensor([[[0.0, 1.0], [-2.0, 0.5], [3.0, -1.0]]], requires_grad=True)
    box_deltas = torch.randn(1, 3, 4, requires_grad=True)
    losses = RetinaNetLoss()({"cls_logits": cls_logits, "box_deltas": box_deltas}, priors,
                             [empty_target()])
    expected = sigmoid_focal_loss(cls_logits.detach(), torch.zeros(1, 3, 2)).sum()  # / max(1, 0)
    assert losses["cls"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["box"].item() == 0.0
    losses["loss"].backward()
    assert not box_deltas.grad.any()


# --------------------------------------------------------------------------- RetinaNet


def retinanet_case() -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict]]:
    """Anchors against box [0, 0, 10, 10] (class 1 of K = 2): IoU 1, 0.5, 0.45 (ignored), 0."""
    priors = torch.tensor([cxcywh(0, 0, 10, 10), cxcywh(0, 0, 10, 5), cxcywh(0, 0, 10, 4.5),
                           cxcywh(50, 50, 60, 60)])
    outputs = {"cls_logits": torch.zeros(1, 4, 2), "box_deltas": torch.zeros(1, 4, 4),
               "conf_logits": torch.zeros(1, 4, 1)}
    return priors, outputs, [target([[0, 0, 10, 10]], [1])]


def test_retinanet_focal_loss_normalised_by_positives_and_ignores_band():
    priors, outputs, targets = retinanet_case()
    criterion = RetinaNetLoss(with_confidence=True)
    # At logit 0 every element costs alpha_t * 0.25 * log 2. Non-ignored anchors 0, 1, 3:
    # 2 elements with target 1 (alpha 0.25), 4 with target 0 (alpha 0.75); 2 positives.
    expected_cls = (2 * 0.25 + 4 * 0.75) * 0.25 * LOG2 / 2
    losses = criterion(outputs, priors, targets)
    assert losses["cls"].item() == pytest.approx(expected_cls, rel=1e-6)
    outputs["cls_logits"][0, 2] = 5.0  # the ignored anchor does not count
    assert criterion(outputs, priors, targets)["cls"].item() == pytest.approx(expected_cls,
                                                                              rel=1e-6)


@pytest.mark.parametrize(("box_loss", "per_value"), [
    ("smooth_l1", lambda x: smooth_l1(x, 1 / 9)),
    ("l1", abs),
])
def test_retinanet_box_loss(box_loss: str, per_value):
    priors, outputs, targets = retinanet_case()
    losses = RetinaNetLoss(box_loss=box_loss, with_confidence=True)(outputs, priors, targets)
    # anchor 0 is exact; anchor 1 (5, 2.5, 10, 5) -> dy = 0.5, dh = log 2; 2 positives
    expected = (per_value(0.5) + per_value(LOG2)) / 2
    assert losses["box"].item() == pytest.approx(expected, rel=1e-5)


def test_dsanet_confidence_target_is_iou_of_predicted_box_on_positives():
    priors, outputs, targets = retinanet_case()
    outputs["conf_logits"] = torch.tensor([[[1.0], [-1.0], [4.0], [4.0]]], requires_grad=True)
    box_deltas = outputs["box_deltas"].clone().requires_grad_(True)
    outputs["box_deltas"] = box_deltas
    losses = RetinaNetLoss(with_confidence=True)(outputs, priors, targets)
    # zero deltas decode to the anchors: IoU targets 1.0 (anchor 0) and 0.5 (anchor 1);
    # BCE(x, t) = log(1 + e^x) - t x; ignored and negative anchors do not count.
    expected = ((math.log(1 + math.e) - 1.0) + (math.log(1 + math.exp(-1.0)) + 0.5)) / 2
    assert losses["conf"].item() == pytest.approx(expected, rel=1e-6)
    losses["conf"].backward()
    assert box_deltas.grad is None  # the IoU target is a label, not a path into regression
    assert outputs["conf_logits"].grad[0, 2:].abs().sum() == 0  # ignored, negative: no loss


def test_retinanet_loss_refuses_an_untrained_confidence_branch():
    priors, outputs, targets = retinanet_case()
    with pytest.raises(ValueError, match="with_confidence"):
        RetinaNetLoss(with_confidence=False)(outputs, priors, targets)


# --------------------------------------------------------------------------- PASSD


def passd_attend_case() -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict]]:
    """Default box 0 is (20, 20, 20, 20); the propose stage moved it to (12, 10, 20, 20).

    Box [0, 0, 20, 20] (centre 10, 10): against the default box IoU is 1/7 (forced match) and
    the offsets are (10 * -10/20, 10 * -10/20, 0, 0) = (-5, -5, 0, 0); against the adjusted
    box IoU is 360/440 and the offsets are (10 * -2/20, 0, 0, 0) = (-1, 0, 0, 0).
    """
    priors = torch.tensor([[20.0, 20, 20, 20], [200, 200, 20, 20], [300, 300, 20, 20],
                           [400, 400, 20, 20]])
    adjusted = priors.clone()
    adjusted[0] = torch.tensor([12.0, 10, 20, 20])
    outputs = {name: torch.zeros_like(value) for name, value in passd_outputs(1, 4).items()}
    outputs["adjusted_priors_cxcywh"] = adjusted[None]
    return priors, outputs, [target([[0, 0, 20, 20]], [0])]


def test_passd_attend_targets_are_encoded_against_adjusted_boxes():
    priors, outputs, targets = passd_attend_case()
    losses = PassdLoss(SSD_WEIGHTS)(outputs, priors, targets)
    assert losses["propose_box"].item() == pytest.approx(2 * smooth_l1(5.0, 1.0), rel=1e-6)
    assert losses["attend_box"].item() == pytest.approx(smooth_l1(1.0, 1.0), rel=1e-6)
    # Predicting exactly the adjusted-box encoding zeroes the attend regression term.
    outputs["box_deltas"][0, 0] = torch.tensor([-1.0, 0.0, 0.0, 0.0])
    assert PassdLoss(SSD_WEIGHTS)(outputs, priors, targets)["attend_box"].item() == 0.0


def test_passd_zero_size_adjusted_boxes_give_finite_gradients():
    # Proposals of background anchors can shrink to zero size (exp underflow); the object's
    # forced match then falls on such a box, whose encoding divided by zero before.
    priors, outputs, targets = passd_attend_case()
    outputs["adjusted_priors_cxcywh"][..., 2:] = 0.0
    outputs["box_deltas"].requires_grad_(True)
    losses = PassdLoss(SSD_WEIGHTS)(outputs, priors, targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["attend_box"]) and losses["attend_box"].item() > 0
    assert torch.isfinite(outputs["box_deltas"].grad).all()


def test_passd_attend_stage_matches_against_adjusted_boxes():
    priors = torch.tensor([[200.0, 200, 20, 20], [10, 10, 20, 20], [400, 400, 20, 20]])
    adjusted = priors.clone()
    adjusted[0] = torch.tensor([10.0, 10, 20, 20])  # moved onto the object
    adjusted[1] = torch.tensor([300.0, 300, 20, 20])  # moved away from it
    gts = [(torch.tensor([[0.0, 0, 20, 20]]), torch.tensor([1]))]
    matched, boxes, labels = assign_ssd_targets(adjusted[None], gts, 0.5)
    assert matched.tolist() == [[0, -1, -1]]
    assert labels.tolist() == [[2, 0, 0]]  # class 1 -> logit 2 (background is 0)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.0, 0, 20, 20]))
    matched, _, _ = assign_ssd_targets(priors[None], gts, 0.5)
    assert matched.tolist() == [[-1, 0, -1]]


def test_passd_stages_are_normalised_separately():
    priors, outputs, targets = passd_attend_case()
    # A second object sits exactly on default box 1 (offsets 0), but the propose stage moved
    # that box away, so only the propose stage has a positive for it: 2 propose positives,
    # 1 attend positive, and each stage divides by its own count.
    outputs["adjusted_priors_cxcywh"][0, 1] = torch.tensor([250.0, 250, 20, 20])
    targets = [target([[0, 0, 20, 20], [190, 190, 210, 210]], [0, 1])]
    losses = PassdLoss(SSD_WEIGHTS)(outputs, priors, targets)
    assert losses["propose_box"].item() == pytest.approx(2 * smooth_l1(5.0, 1.0) / 2, rel=1e-6)
    assert losses["attend_box"].item() == pytest.approx(smooth_l1(1.0, 1.0) / 1, rel=1e-6)


# --------------------------------------------------------------------------- gradients


def positive_targets() -> list[dict]:
    return [target([[0, 0, 10, 10], [40, 0, 50, 10]], [0, 1]), target([[20, 0, 30, 10]], [1])]


@pytest.mark.parametrize("family", ["multibox", "passd", "retinanet", "retinanet_conf"])
def test_every_output_gets_gradient_when_there_are_positives(family: str):
    priors = grid_priors(6)
    raw = passd_outputs(2, len(priors))
    if family == "multibox":
        criterion: nn.Module = MultiboxLoss(SSD_WEIGHTS)
        outputs = leaves({k: raw[k] for k in ("cls_logits", "box_deltas")})
    elif family == "passd":
        criterion = PassdLoss(SSD_WEIGHTS)
        outputs = leaves(raw)
        outputs["adjusted_priors_cxcywh"] = (priors + 1.0).expand(2, -1, -1).clone()
        outputs["adjusted_priors_cxcywh"].requires_grad_(True)
    else:
        with_confidence = family == "retinanet_conf"
        criterion = RetinaNetLoss(with_confidence=with_confidence)
        outputs = leaves({"cls_logits": raw["cls_logits"][..., :2],
                          "box_deltas": raw["box_deltas"]})
        if with_confidence:
            outputs["conf_logits"] = torch.randn(2, len(priors), 1, requires_grad=True)
    losses = criterion(outputs, priors, positive_targets())
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    losses["loss"].backward()
    for name, value in outputs.items():
        if name == "adjusted_priors_cxcywh":
            assert value.grad is None  # geometry, detached inside the loss
        else:
            assert value.grad is not None and value.grad.abs().sum() > 0, name


def test_half_precision_outputs_give_float32_losses():
    priors = grid_priors(6)
    outputs = {k: v.half() for k, v in passd_outputs(2, 6).items() if k in ("cls_logits",
                                                                          "box_deltas")}
    losses = MultiboxLoss(SSD_WEIGHTS)(outputs, priors, positive_targets())
    assert losses["loss"].dtype == torch.float32


# --------------------------------------------------------------------------- inputs


def test_bad_inputs_give_clear_errors():
    priors = grid_priors(6)
    outputs = {k: v for k, v in passd_outputs(1, 6).items() if k in ("cls_logits", "box_deltas")}
    criterion = MultiboxLoss(SSD_WEIGHTS)
    with pytest.raises(ValueError, match=r"labels must be 0-based object classes in \[0, 2\)"):
        criterion(outputs, priors, [target([[0, 0, 10, 10]], [2])])
    with pytest.raises(ValueError, match="priors_cxcywh must be"):
        criterion(outputs, priors[:5], [empty_target()])
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        criterion(outputs, priors, [empty_target(), empty_target()])
    with pytest.raises(KeyError, match="adjusted_priors_cxcywh"):
        PassdLoss(SSD_WEIGHTS)(passd_outputs(1, 6), priors, [empty_target()])


def test_boxes_without_area_are_dropped():
    priors = grid_priors(6)
    outputs = {k: v for k, v in passd_outputs(1, 6).items() if k in ("cls_logits", "box_deltas")}
    criterion = MultiboxLoss(SSD_WEIGHTS)
    reference = criterion(outputs, priors, [target([[0, 0, 10, 10]], [0])])
    with_degenerate = criterion(outputs, priors, [target([[0, 0, 10, 10], [40, 0, 40, 10]],
                                                         [0, 1])])
    assert with_degenerate["loss"].item() == pytest.approx(reference["loss"].item())


# --------------------------------------------------------------------------- dispatch


def test_build_criterion_dispatches_on_the_head_family():
    passd = passd_mobilenet(num_classes=2)
    criterion = build_criterion(passd)
    assert isinstance(criterion, PassdLoss)
    assert criterion.box_coder_weights == SSD_WEIGHTS
    # The propose stage without the attend convs (Table 1 exp. 3) still has both losses.
    assert isinstance(build_criterion(passd_mobilenet(num_classes=2, use_attend=False)),
                      PassdLoss)
    assert isinstance(build_criterion(passd_mobilenet(num_classes=2, use_pa=False)),
                      MultiboxLoss)
    daipnet_criterion = build_criterion(daipnet_vgg16(num_classes=2))
    assert isinstance(daipnet_criterion, MultiboxLoss)
    assert daipnet_criterion.box_coder_weights == SSD_WEIGHTS
    harnet_criterion = build_criterion(harnet_resnet18_small(num_classes=2, img_size=128))
    assert isinstance(harnet_criterion, RetinaNetLoss)
    assert not harnet_criterion.with_confidence
    assert harnet_criterion.box_coder_weights == (1.0, 1.0, 1.0, 1.0)
    dsanet = dsanet_resnet18(num_classes=2, img_size=128, with_confidence=True)
    assert build_criterion(dsanet).with_confidence
    assert isinstance(build_criterion(nn.DataParallel(dsanet)), RetinaNetLoss)
    with pytest.raises(TypeError, match="no training criterion for Linear"):
        build_criterion(nn.Linear(2, 2))


# --------------------------------------------------------------------------- real models


def _synthetic_targets(size: int) -> list[dict]:
    return [target([[0.1 * size, 0.2 * size, 0.6 * size, 0.7 * size]], [1]),
            target([[0.5 * size, 0.5 * size, 0.9 * size, 0.8 * size],
                    [0.05 * size, 0.05 * size, 0.3 * size, 0.25 * size]], [0, 1])]


@pytest.mark.slow
def test_passd_model_outputs_train_through_the_criterion():
    torch.manual_seed(0)
    model = passd_mobilenet(num_classes=2, img_size=320)
    priors = torch.from_numpy(model.anchor_spec((320, 320)).generate())
    outputs = model(torch.randn(2, 3, 320, 320))
    losses = build_criterion(model)(outputs, priors, _synthetic_targets(320))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["propose_box"] > 0 and losses["attend_box"] > 0
    losses["loss"].backward()
    head = model.head
    for module in (head.propose_objectness, head.propose_box, head.attend_cls, head.attend_box):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_harnet_criterion_works_with_attention_off_and_on():
    # HAR-Net's incremental training (sec. IV-B) switches the attention on mid-training;
    # the criterion must not care. (The aligned attention is not part of the switch and its
    # deformable conv is the slow part on CPU, so it is left out here.)
    torch.manual_seed(0)
    model = harnet_resnet18_small(num_classes=2, img_size=128, use_aligned_attention=False)
    # The spatial mask's last conv starts at zero, which keeps the gradient from the convs
    # before it until it has moved: moved here, as some way into training.
    assert model.head.spatial_attention is not None
    with torch.no_grad():
        model.head.spatial_attention.layers[-1].weight.normal_(std=0.01)
    priors = torch.from_numpy(model.anchor_spec((128, 128)).generate())
    criterion = build_criterion(model)
    images = torch.randn(2, 3, 128, 128)
    for enabled in (False, True):
        model.zero_grad()
        model.set_attention_enabled(spatial=enabled, channel=enabled)
        losses = criterion(model(images), priors, _synthetic_targets(128))
        assert all(torch.isfinite(v) for v in losses.values())
        losses["loss"].backward()
        attention_grads = [p.grad for p in model.attention_parameters()]
        assert all((g is not None and g.abs().sum() > 0) == enabled
                   for g in attention_grads)
