"""Output distillation: a frozen teacher's dense predictions as extra soft targets.

Used to fine-tune a pruned detector: from the model it was pruned from (``quantize/prune.py
--distill``), which spends no training beyond the teacher's forward passes, or from the
unpruned model trained as long as the pruned one (``train/main.py --distill-from``: how the
zoo's pruned HAR-Net was fine-tuned, README "Pruned HAR-Net"). Student and teacher predict
over the same anchors (pruning keeps the heads' outputs), so their outputs compare anchor by
anchor; no feature adapters are needed.

For the RetinaNet family (sigmoid classification: HAR-Net, DSANet), per anchor ``a`` and class
``k``, with ``t = sigmoid(teacher logit)`` and ``s = sigmoid(student logit)``:

* ``kd_cls = sum BCE(s, t) * |s - t|^gamma / Z``: binary cross-entropy to the teacher's
  probabilities, focused like the focal loss the detector trains with (the soft-target form
  of Li et al.'s quality focal loss, GFL 2020, gamma 2), so the ~10^4 confident-background
  anchors per image do not drown the few that matter;
* ``kd_box = sum_a w_a * |d_student - d_teacher|_1 / sum_a w_a`` with ``w_a = max_k t``: the
  teacher's box offsets, trusted as much as the teacher trusts its own score there;
* ``Z = max(1, #{a : max_k t >= 0.5})``: the anchors the teacher calls objects, as the focal
  loss divides by its number of positives. (The soft count ``sum_a max_k t`` was the first
  choice; measured on the same-budget HAR-Net it is 4-8x the confident anchors, 240-490 per
  image, which left ``kd_cls`` about 40x below the focal loss and its effect nil.)

``loss += weight * (kd_cls + kd_box)``. The choice of these forms over feature imitation is
ours (the HAR-Net paper does not prune); see ``docs/architecture_export.md`` ("Structured pruning").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.models.contract import as_detection_model

DEFAULT_WEIGHT = 1.0
FOCUS_GAMMA = 2.0
# A teacher's top class probability at or above this counts the anchor in kd_cls's normaliser.
CONFIDENT = 0.5


class OutputDistillation(nn.Module):
    """A frozen teacher and the distillation terms against it (see the module docstring).

    Args:
        teacher: a RetinaNet-family detector (eval mode is set here; its weights are frozen).
        weight: multiplier of ``kd_cls + kd_box`` in the training loss.
    """

    def __init__(self, teacher: nn.Module, weight: float = DEFAULT_WEIGHT) -> None:
        super().__init__()
        detector = as_detection_model(teacher, purpose="cannot distill from this teacher")
        if detector.head_family != "retinanet":
            raise ValueError(f"output distillation supports RetinaNet-family teachers "
                             f"(sigmoid classification: HAR-Net, DSANet); got head family "
                             f"{detector.head_family!r}")
        if not weight > 0:
            raise ValueError(f"distillation weight must be > 0, got {weight}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = float(weight)

    def train(self, mode: bool = True) -> OutputDistillation:
        # The teacher stays in eval mode (frozen BN statistics) whatever the trainer sets.
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_outputs(self, images: Tensor) -> dict[str, Tensor]:
        """The teacher's training-forward outputs for ``images (N, 3, H, W)``."""
        return self.teacher(images)

    def terms(self, student: dict[str, Tensor], teacher: dict[str, Tensor]
              ) -> dict[str, Tensor]:
        """``{"kd_cls", "kd_box"}`` (float32 scalars) from ``cls_logits (N, A, K)`` and
        ``box_deltas (N, A, 4)`` of both."""
        s_logits, t_logits = student["cls_logits"].float(), teacher["cls_logits"].float()
        s_deltas, t_deltas = student["box_deltas"].float(), teacher["box_deltas"].float()
        if s_logits.shape != t_logits.shape or s_deltas.shape != t_deltas.shape:
            raise ValueError(f"student and teacher predict different shapes: cls "
                             f"{tuple(s_logits.shape)} vs {tuple(t_logits.shape)}, box "
                             f"{tuple(s_deltas.shape)} vs {tuple(t_deltas.shape)}")
        t_prob = torch.sigmoid(t_logits)
        focus = (torch.sigmoid(s_logits) - t_prob).abs().pow(FOCUS_GAMMA)
        bce = F.binary_cross_entropy_with_logits(s_logits, t_prob, reduction="none")
        confidence = t_prob.max(dim=-1).values  # (N, A)
        confident = (confidence >= CONFIDENT).sum().clamp(min=1)
        kd_cls = (bce * focus).sum() / confident
        box_l1 = (s_deltas - t_deltas).abs().sum(dim=-1)
        kd_box = (box_l1 * confidence).sum() / confidence.sum().clamp(min=1e-6)
        return {"kd_cls": kd_cls, "kd_box": kd_box}

    def add_terms(self, losses: dict[str, Tensor], student: dict[str, Tensor],
                  teacher: dict[str, Tensor]) -> dict[str, Tensor]:
        """``losses`` (a criterion's result) with the distillation terms added to ``loss``."""
        terms = self.terms(student, teacher)
        total = losses["loss"] + self.weight * (terms["kd_cls"] + terms["kd_box"])
        return {**losses, "loss": total, **terms}


def check_same_anchors(student: nn.Module, teacher: nn.Module,
                       input_size: tuple[int, int]) -> None:
    """ValueError unless both predict the same classes over the same anchors at
    ``input_size = (width, height)``."""
    s = as_detection_model(student, purpose="cannot distill into this student")
    t = as_detection_model(teacher, purpose="cannot distill from this teacher")
    s_classes = s.config["kwargs"].get("num_classes")
    t_classes = t.config["kwargs"].get("num_classes")
    if s_classes != t_classes or s.export_output_names != t.export_output_names:
        raise ValueError(f"teacher and student differ: {t_classes} vs {s_classes} classes, "
                         f"outputs {t.export_output_names} vs {s.export_output_names}")
    s_anchors = s.anchor_spec(input_size).generate()
    t_anchors = t.anchor_spec(input_size).generate()
    if s_anchors.shape != t_anchors.shape or not np.allclose(s_anchors, t_anchors):
        raise ValueError(f"teacher and student use different anchors at input {input_size}: "
                         f"{len(t_anchors)} vs {len(s_anchors)}")


def load_distillation(teacher_checkpoint: str | Path, student: nn.Module,
                      input_size: tuple[int, int], device: torch.device,
                      weight: float = DEFAULT_WEIGHT, channels_last: bool = False
                      ) -> OutputDistillation:
    """The teacher of ``teacher_checkpoint`` (``train/main.py --distill-from``) on ``device``,
    checked against ``student``."""
    from edgedet.models.checkpoint import build_from_checkpoint

    teacher, _ = build_from_checkpoint(teacher_checkpoint)
    check_same_anchors(student, teacher, input_size)
    teacher = teacher.to(device)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return OutputDistillation(teacher, weight)
