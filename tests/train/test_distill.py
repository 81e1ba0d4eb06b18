"""``train.distill``: output distillation from a frozen teacher — hand-computed terms, the
teacher stays frozen, mismatches are refused, and ``train/main.py --distill-from`` and
``quantize/prune.py --distill`` wire it in."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from edgedet.data.synthetic import SYNTHETIC_CLASSES
from edgedet.models.harnet import harnet_resnet18_small
from edgedet.models.passd import passd_mobilenet
from train.distill import OutputDistillation, check_same_anchors
from train.main import main
from train.metrics_log import read_metrics

TINY_HARNET = ["--model", "harnet_resnet18_small", "--data", "synthetic", "--img-size", "64",
               "--synthetic-train", "8", "--synthetic-val", "2", "--batch-size", "4",
               "--workers", "0", "--device", "cpu", "--no-progress", "--warmup-iters", "1",
               "--lr", "1e-4", "--optimizer", "adamw"]


def _harnet(size: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    return harnet_resnet18_small(num_classes=len(SYNTHETIC_CLASSES), img_size=size)


def _outputs(cls: list[float], box: list[float]) -> dict[str, torch.Tensor]:
    """One image, one anchor: ``cls_logits (1, 1, K)``, ``box_deltas (1, 1, 4)``."""
    return {"cls_logits": torch.tensor([[cls]]), "box_deltas": torch.tensor([[box]])}


def test_terms_match_hand_computed_values():
    distill = OutputDistillation(_harnet())
    # Teacher probability sigmoid(ln 3) = 0.75, student 0.5: BCE = ln 2 (the soft target's
    # two log-terms both read log 0.5), focus (0.25)^2, one confident anchor.
    terms = distill.terms(_outputs([0.0], [1.0, 0.0, 0.0, -2.0]),
                          _outputs([math.log(3.0)], [0.0, 0.0, 0.0, 0.0]))
    assert terms["kd_cls"].item() == pytest.approx(math.log(2.0) * 0.0625, rel=1e-6)
    # |1| + |-2| = 3, weighted by the teacher's confidence 0.75 over 0.75.
    assert terms["kd_box"].item() == pytest.approx(3.0, rel=1e-6)


def test_kd_cls_divides_by_the_anchors_the_teacher_is_confident_about():
    distill = OutputDistillation(_harnet())
    logit_09 = math.log(9.0)  # sigmoid = 0.9
    student = {"cls_logits": torch.zeros(1, 3, 1), "box_deltas": torch.zeros(1, 3, 4)}
    teacher = {"cls_logits": torch.tensor([[[logit_09], [logit_09], [-logit_09]]]),
               "box_deltas": torch.zeros(1, 3, 4)}
    # Per anchor: BCE(0.5, t) = ln 2 whatever t, focus (0.4)^2; two anchors at 0.9 count.
    expected = 3 * math.log(2.0) * 0.16 / 2
    assert distill.terms(student, teacher)["kd_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_identical_predictions_add_nothing_and_the_loss_keeps_its_terms():
    distill = OutputDistillation(_harnet(), weight=2.0)
    outputs = _outputs([0.3, -1.0], [0.1, 0.2, 0.3, 0.4])
    losses = {"loss": torch.tensor(1.5), "cls": torch.tensor(1.0), "box": torch.tensor(0.5)}
    added = distill.add_terms(losses, outputs, outputs)
    assert added["kd_cls"].item() == 0.0 and added["kd_box"].item() == 0.0
    assert added["loss"].item() == 1.5 and added["cls"].item() == 1.0


def test_gradient_pulls_the_student_towards_the_teacher():
    distill = OutputDistillation(_harnet())
    student = {"cls_logits": torch.zeros(1, 3, 2, requires_grad=True),
               "box_deltas": torch.zeros(1, 3, 4, requires_grad=True)}
    teacher = {"cls_logits": torch.full((1, 3, 2), 2.0), "box_deltas": torch.ones(1, 3, 4)}
    terms = distill.terms(student, teacher)
    (terms["kd_cls"] + terms["kd_box"]).backward()
    assert (student["cls_logits"].grad < 0).all()  # raise the logits towards 2
    assert (student["box_deltas"].grad < 0).all()  # and the deltas towards 1


def test_teacher_is_frozen_and_stays_in_eval_mode():
    distill = OutputDistillation(_harnet())
    distill.train()
    assert not distill.teacher.training
    assert not any(p.requires_grad for p in distill.teacher.parameters())
    outputs = distill.teacher_outputs(torch.rand(1, 3, 64, 64))
    assert not outputs["cls_logits"].requires_grad


def test_mismatches_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="RetinaNet-family"):
        OutputDistillation(passd_mobilenet(num_classes=3, img_size=320))
    with pytest.raises(ValueError, match="weight must be > 0"):
        OutputDistillation(_harnet(), weight=0.0)
    other_classes = harnet_resnet18_small(num_classes=3, img_size=64)
    with pytest.raises(ValueError, match="classes"):
        check_same_anchors(_harnet(), other_classes, (64, 64))
    check_same_anchors(_harnet(), _harnet(), (64, 64))
    with pytest.raises(ValueError, match="different shapes"):
        OutputDistillation(_harnet()).terms(_outputs([0.0], [0.0] * 4),
                                            _outputs([0.0, 1.0], [0.0] * 4))


def _run(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


def test_training_with_a_teacher_logs_the_distillation_terms(tmp_path):
    teacher = tmp_path / "teacher"
    assert _run([*TINY_HARNET, "--epochs", "1", "--out", str(teacher)]) == 0
    student = tmp_path / "student"
    assert _run([*TINY_HARNET, "--epochs", "1", "--out", str(student), "--init-checkpoint",
                 str(teacher / "best"), "--distill-from", str(teacher / "best"),
                 "--distill-weight", "0.5"]) == 0
    steps = [r for r in read_metrics(student) if r["type"] == "train"]
    assert steps and all("kd_cls" in r and "kd_box" in r for r in steps)
    # The student starts as the teacher (only BatchNorm's batch statistics differ, the teacher
    # runs in eval mode): the first step's terms are far below the detection loss's.
    assert 0 <= steps[0]["kd_box"] < 0.2 * steps[0]["box"]
    assert 0 <= steps[0]["kd_cls"] < 0.2 * steps[0]["cls"]
    args = json.loads((student / "args.json").read_text())
    assert args["distill_from"] == str(teacher / "best") and args["distill_weight"] == 0.5
