"""Training criteria of the four detector families, and ``build_criterion`` to pick one.

Every criterion is called as ``criterion(outputs, priors_cxcywh, targets)``:

* ``outputs``: the model's training forward, tensors ``(N, A, k)`` over all anchors;
* ``priors_cxcywh``: ``(A, 4)`` anchors / default boxes in input pixels, in the order of the
  flattened outputs (``model.anchor_spec((W, H)).generate()``);
* ``targets``: one dict per image, ``boxes_xyxy (G, 4)`` float in input pixels and ``labels
  (G,)`` int64 0-based object classes; ``G`` may be 0.

and returns a dict of scalar tensors: ``"loss"`` (to backpropagate) and one entry per term.

Families:

* ``MultiboxLoss`` (SSD, Liu et al. 2016, eq. 1-3; DAIPNet sec. 4.2 "our loss function ...
  the same as SSD", and PASSD's plain-head ablation): softmax cross-entropy over K+1 classes
  with hard negative mining at neg:pos <= 3:1, Smooth-L1 on encoded offsets, divided by the
  number of matched (positive) default boxes in the mini-batch.
* ``PassdLoss`` (PASSD sec. 6.1): the same recipe twice, "a sum of the two losses from the
  propose- and attend-mechanisms", each over "the number of positive samples within the
  process in a mini-batch", set to 0 when it has none.
* ``RetinaNetLoss`` (RetinaNet, Lin et al. 2017; HAR-Net sec. IV-A; DSANet sec. 3.2 "same loss
  function with RetinaNet"): sigmoid focal loss over all non-ignored anchors and Smooth-L1 on
  positives, both divided by max(1, positives); DSANet-Conf adds the object-confidence loss.

Box offsets are the R-CNN parameterisation of ``edgedet.models.box_coder`` with the model's
``box_coder_weights`` ((10, 10, 5, 5) for SSD-style variances, (1, 1, 1, 1) for RetinaNet).
Losses are computed in float32 whatever the dtype of the outputs (AMP).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.models.box_coder import BoxWeights, cxcywh_to_xyxy, decode, encode
from edgedet.models.contract import as_detection_model
from train.matching import BACKGROUND, IGNORE, aligned_box_iou, match_retinanet, match_ssd

Target = dict[str, Tensor]

NEG_POS_RATIO = 3  # SSD sec. 2.2 and PASSD sec. 6.1: "at most 1:3"
MIN_ADJUSTED_SIZE = 1.0  # pixels; PASSD attend-stage anchors (PassdLoss)
SSD_SMOOTH_L1_BETA = 1.0  # Fast R-CNN's Smooth-L1, as SSD and PASSD ([7]) use it
DETECTRON_SMOOTH_L1_BETA = 1.0 / 9.0  # RetinaNet in Detectron (HAR-Net's Caffe2 lineage)


# --------------------------------------------------------------------------- inputs


def _require(outputs: dict[str, Tensor], names: Sequence[str], who: str) -> list[Tensor]:
    missing = [name for name in names if name not in outputs]
    if missing:
        raise KeyError(f"{who} needs model outputs {list(names)}; missing {missing} "
                       f"(got {sorted(outputs)})")
    return [outputs[name] for name in names]


def prepare_targets(
    targets: Sequence[Target], batch_size: int, num_classes: int, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    """Check the per-image targets and move them to ``device``.

    Returns one ``(boxes_xyxy (G, 4) float32, labels (G,) int64)`` per image. Boxes without
    area (x2 <= x1 or y2 <= y1, e.g. clipped away by a crop) are dropped: no anchor can
    overlap them and their regression target would be log(0).
    """
    if len(targets) != batch_size:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
    prepared = []
    for index, target in enumerate(targets):
        if "boxes_xyxy" not in target or "labels" not in target:
            raise KeyError(f"target {index} needs 'boxes_xyxy' and 'labels', got {sorted(target)}")
        # Checked where they are (the data loader's CPU tensors), then moved: no GPU syncs.
        boxes = torch.as_tensor(target["boxes_xyxy"], dtype=torch.float32)
        labels = torch.as_tensor(target["labels"], dtype=torch.long)
        boxes = boxes.reshape(-1, 4) if boxes.numel() == 0 else boxes
        if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"target {index}: boxes_xyxy must be (G, 4) and labels (G,), got "
                             f"{tuple(boxes.shape)} and {tuple(labels.shape)}")
        if not torch.isfinite(boxes).all():
            raise ValueError(f"target {index}: boxes_xyxy contains NaN or inf")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"target {index}: labels must be 0-based object classes in "
                             f"[0, {num_classes}), got {labels.tolist()}")
        has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        prepared.append((boxes[has_area].to(device, non_blocking=True),
                         labels[has_area].to(device, non_blocking=True)))
    return prepared


def _priors_for(priors_cxcywh: Tensor, num_anchors: int, device: torch.device) -> Tensor:
    priors = torch.as_tensor(priors_cxcywh, dtype=torch.float32, device=device)
    if priors.shape != (num_anchors, 4):
        raise ValueError(f"priors_cxcywh must be ({num_anchors}, 4) to match the outputs, "
                         f"got {tuple(priors.shape)}; generate them with "
                         "model.anchor_spec((W, H)) for the training input size")
    return priors


# --------------------------------------------------------------------------- pieces


def hard_negative_mining(
    loss_per_anchor: Tensor, negative: Tensor, num_positive: Tensor,
    neg_pos_ratio: int = NEG_POS_RATIO,
) -> Tensor:
    """SSD's hard negative mining, per image.

    Args:
        loss_per_anchor: ``(N, A)`` classification loss of each anchor against background.
        negative: ``(N, A)`` bool, anchors that may be mined (matched to background).
        num_positive: ``(N,)`` positives of each image.
        neg_pos_ratio: keep at most ``neg_pos_ratio * positives`` negatives per image.

    Returns:
        ``(N, A)`` bool: the negatives with the highest loss, ``min(ratio * P, #negatives)``
        per image (none for an image without positives, as in SSD).
    """
    ranking = loss_per_anchor.detach().float().masked_fill(~negative, float("-inf"))
    num_negative = torch.minimum(neg_pos_ratio * num_positive, negative.sum(dim=1))
    order = ranking.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)
    return (rank < num_negative[:, None]) & negative


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Element-wise focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` (Lin et al., eq. 5).

    ``logits`` and 0/1 ``targets`` have the same shape; ``alpha_t`` is ``alpha`` for
    targets 1 and ``1 - alpha`` for targets 0. Unreduced.
    """
    probabilities = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


def assign_ssd_targets(
    references_cxcywh: Tensor, gts: Sequence[tuple[Tensor, Tensor]], iou_threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """SSD matching of every image against its own reference boxes.

    Args:
        references_cxcywh: ``(N, A, 4)`` boxes to match (default boxes, or PASSD's adjusted
            boxes, which differ per image).
        gts: per image ``(boxes_xyxy (G, 4), labels (G,))``.
        iou_threshold: see ``match_ssd``.

    Returns:
        ``matched (N, A)`` ground-truth index or ``BACKGROUND``, ``matched_boxes_xyxy
        (N, A, 4)`` (the reference box itself where background, so that encoding every
        anchor stays finite) and ``softmax_labels (N, A)``: object class + 1, 0 for background
        (the heads' logit layout).
    """
    n, a, _ = references_cxcywh.shape
    references_xyxy = cxcywh_to_xyxy(references_cxcywh)
    matched = torch.full((n, a), BACKGROUND, dtype=torch.long, device=references_cxcywh.device)
    matched_boxes = references_xyxy.clone()
    softmax_labels = torch.zeros((n, a), dtype=torch.long, device=references_cxcywh.device)
    for i, (boxes, labels) in enumerate(gts):
        if boxes.shape[0] == 0:
            continue
        matched[i] = match_ssd(references_xyxy[i], boxes, iou_threshold)
        positive = matched[i] >= 0
        gt_index = matched[i].clamp(min=0)
        matched_boxes[i] = torch.where(positive[:, None], boxes[gt_index], references_xyxy[i])
        softmax_labels[i] = torch.where(positive, labels[gt_index] + 1, 0)
    return matched, matched_boxes, softmax_labels


def mined_softmax_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    references_cxcywh: Tensor,
    matched: Tensor,
    matched_boxes_xyxy: Tensor,
    softmax_labels: Tensor,
    box_coder_weights: BoxWeights,
    neg_pos_ratio: int = NEG_POS_RATIO,
    smooth_l1_beta: float = SSD_SMOOTH_L1_BETA,
) -> tuple[Tensor, Tensor]:
    """SSD's loss (eq. 1-3) for one prediction stage.

    Args:
        cls_logits: ``(N, A, C)`` softmax logits, background at index 0.
        box_deltas: ``(N, A, 4)`` predicted offsets relative to ``references_cxcywh``.
        references_cxcywh: ``(N, A, 4)`` boxes the offsets are relative to.
        matched, matched_boxes_xyxy, softmax_labels: from ``assign_ssd_targets``.
        box_coder_weights: offset scaling of the model.
        neg_pos_ratio: hard negatives kept per positive.
        smooth_l1_beta: Smooth-L1 transition point.

    Returns:
        ``(cls_loss, box_loss)``: sums over positives (and mined negatives for the
        classification) divided by the number of positives in the batch; both 0 (with a
        graph) when there is no positive.
    """
    n, a, c = cls_logits.shape
    positive = matched >= 0
    ce = F.cross_entropy(cls_logits.float().reshape(n * a, c), softmax_labels.reshape(-1),
                         reduction="none").reshape(n, a)
    hard_negative = hard_negative_mining(ce, matched == BACKGROUND, positive.sum(dim=1),
                                         neg_pos_ratio)
    num_positive = positive.sum().clamp(min=1)
    # Masks via torch.where (not boolean indexing): no GPU sync, and a graph even when empty.
    cls_loss = torch.where(positive | hard_negative, ce, 0.0).sum() / num_positive
    box_targets = encode(matched_boxes_xyxy, references_cxcywh, box_coder_weights)
    box_per_anchor = F.smooth_l1_loss(box_deltas.float(), box_targets, reduction="none",
                                      beta=smooth_l1_beta).sum(dim=-1)
    box_loss = torch.where(positive, box_per_anchor, 0.0).sum() / num_positive
    return cls_loss, box_loss


# --------------------------------------------------------------------------- criteria


class MultiboxLoss(nn.Module):
    """SSD multibox loss (DAIPNet; PASSD with the plain head).

    Outputs: ``cls_logits (N, A, K+1)`` (background 0), ``box_deltas (N, A, 4)`` relative to
    the priors. Terms: ``cls``, ``box``.
    """

    def __init__(self, box_coder_weights: BoxWeights, iou_threshold: float = 0.5,
                 neg_pos_ratio: int = NEG_POS_RATIO,
                 smooth_l1_beta: float = SSD_SMOOTH_L1_BETA) -> None:
        super().__init__()
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.smooth_l1_beta = smooth_l1_beta

    def forward(self, outputs: dict[str, Tensor], priors_cxcywh: Tensor,
                targets: Sequence[Target]) -> dict[str, Tensor]:
        cls_logits, box_deltas = _require(outputs, ("cls_logits", "box_deltas"), "MultiboxLoss")
        n, a, c = cls_logits.shape
        priors = _priors_for(priors_cxcywh, a, cls_logits.device).expand(n, a, 4)
        gts = prepare_targets(targets, n, c - 1, cls_logits.device)
        matched, boxes, labels = assign_ssd_targets(priors, gts, self.iou_threshold)
        cls_loss, box_loss = mined_softmax_loss(
            cls_logits, box_deltas, priors, matched, boxes, labels, self.box_coder_weights,
            self.neg_pos_ratio, self.smooth_l1_beta)
        return {"loss": cls_loss + box_loss, "cls": cls_loss, "box": box_loss}


class PassdLoss(nn.Module):
    """PASSD's propose + attend loss (sec. 6.1).

    * Propose: default boxes matched to ground truth at IoU 0.5 (SSD matching, see below);
      binary objectness cross-entropy (``objectness_logits`` channel 0 = background,
      1 = object) with hard negative mining, Smooth-L1 between ``propose_deltas`` and the
      ground truth encoded against the ORIGINAL default boxes. The model already applied the
      eq. 2 tanh clipping to the centre offsets and expresses them in the same weighted units
      as ``encode`` (``pa_head.ProposeAttendHead._clip``), so the targets are the plain eq. 1
      encoding; a centre target beyond half a cell is out of reach and just saturates tanh.
    * Attend: the same recipe with K+1-way cross-entropy on ``cls_logits`` and Smooth-L1 on
      ``box_deltas``, but matched against and encoded relative to the ADJUSTED boxes
      ``adjusted_priors_cxcywh`` (detached: the propose stage is trained by its own term),
      as the final regressor "predicts the relative offsets between the adjusted default
      boxes and ground-truth boxes" (sec. 5.1.2).

    Choices where the paper is silent:

    * Matching: the paper says "positive if it has a Jaccard overlap score higher than 0.5";
      we use SSD's matching, which also forces each ground truth's best box positive, since
      PASSD follows SSD's training (sec. 6.1) and RefineDet does the same in both of its
      stages.
    * No RefineDet-style filtering of easy negatives (RefineDet drops anchors with negative
      confidence > 0.99 from the second stage): PASSD does not describe it; both stages mine
      hard negatives independently ("We adopt this strategy for training both propose- and
      attend-mechanisms").
    * N_pos is counted over the mini-batch, per stage; mining keeps 3 negatives per positive
      per image.

    Terms: ``propose_cls``, ``propose_box``, ``attend_cls``, ``attend_box``.
    """

    output_names = ("objectness_logits", "propose_deltas", "cls_logits", "box_deltas",
                    "adjusted_priors_cxcywh")

    def __init__(self, box_coder_weights: BoxWeights, iou_threshold: float = 0.5,
                 neg_pos_ratio: int = NEG_POS_RATIO,
                 smooth_l1_beta: float = SSD_SMOOTH_L1_BETA) -> None:
        super().__init__()
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.smooth_l1_beta = smooth_l1_beta

    def forward(self, outputs: dict[str, Tensor], priors_cxcywh: Tensor,
                targets: Sequence[Target]) -> dict[str, Tensor]:
        objectness, propose_deltas, cls_logits, box_deltas, adjusted = _require(
            outputs, self.output_names, "PassdLoss")
        n, a, c = cls_logits.shape
        gts = prepare_targets(targets, n, c - 1, cls_logits.device)
        priors = _priors_for(priors_cxcywh, a, cls_logits.device).expand(n, a, 4)

        matched, boxes, _ = assign_ssd_targets(priors, gts, self.iou_threshold)
        propose_cls, propose_box = mined_softmax_loss(
            objectness, propose_deltas, priors, matched, boxes, (matched >= 0).long(),
            self.box_coder_weights, self.neg_pos_ratio, self.smooth_l1_beta)

        adjusted = adjusted.detach().float()
        # A background anchor's proposal is never trained and can shrink until exp() of its
        # size delta underflows to 0; encoding a target against a zero-size box divides by
        # zero (NaN gradients stopped a paper-width run at epoch 4). Such a box cannot be a
        # detection, so as an anchor it is floored at MIN_ADJUSTED_SIZE pixels.
        adjusted = torch.cat([adjusted[..., :2], adjusted[..., 2:].clamp(min=MIN_ADJUSTED_SIZE)],
                             dim=-1)
        matched, boxes, labels = assign_ssd_targets(adjusted, gts, self.iou_threshold)
        attend_cls, attend_box = mined_softmax_loss(
            cls_logits, box_deltas, adjusted, matched, boxes, labels,
            self.box_coder_weights, self.neg_pos_ratio, self.smooth_l1_beta)

        return {
            "loss": propose_cls + propose_box + attend_cls + attend_box,
            "propose_cls": propose_cls,
            "propose_box": propose_box,
            "attend_cls": attend_cls,
            "attend_box": attend_box,
        }


class RetinaNetLoss(nn.Module):
    """RetinaNet-family loss (HAR-Net, DSANet, DSANet-Conf, the RetinaNet baselines).

    * Matching: IoU >= ``pos_iou`` positive, < ``neg_iou`` background, between ignored, with
      Detectron's low-quality matches (``match_retinanet``).
    * ``cls``: sigmoid focal loss (alpha 0.25, gamma 2) summed over every class of every
      non-ignored anchor, divided by max(1, positives in the batch) (Lin et al. sec. 3.3/4.1).
    * ``box``: on positives, Smooth-L1 with beta = 1/9 (Detectron's RetinaNet, which the
      Caffe2-based HAR-Net and DSANet's "same loss function with RetinaNet" refer to), same
      normaliser. ``box_loss="l1"`` gives the L1 loss of the mmdetection config DSANet's code
      ships with.
    * ``conf`` (DSANet-Conf, ``with_confidence``): the object-confidence task of RetinaNet-Conf
      (DSANet ref. [14], Wu et al. 2020): "uses IoUs between samples and ground-truth boxes as
      targets, and it only uses losses of positive samples". Target: IoU between the box
      decoded from the (detached) predicted offsets and its matched ground truth; loss:
      sigmoid binary cross-entropy on positives, divided by max(1, positives) (as in the
      authors' released ``anchor_head.py``). The IoU target is treated as a label, so this
      term trains only the confidence branch, not the regression.
    """

    def __init__(
        self,
        box_coder_weights: BoxWeights = (1.0, 1.0, 1.0, 1.0),
        pos_iou: float = 0.5,
        neg_iou: float = 0.4,
        allow_low_quality: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: Literal["smooth_l1", "l1"] = "smooth_l1",
        smooth_l1_beta: float = DETECTRON_SMOOTH_L1_BETA,
        with_confidence: bool = False,
    ) -> None:
        super().__init__()
        if box_loss not in ("smooth_l1", "l1"):
            raise ValueError(f"box_loss must be 'smooth_l1' or 'l1', got {box_loss!r}")
        self.box_coder_weights = tuple(float(w) for w in box_coder_weights)
        self.pos_iou = pos_iou
        self.neg_iou = neg_iou
        self.allow_low_quality = allow_low_quality
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.with_confidence = with_confidence

    def forward(self, outputs: dict[str, Tensor], priors_cxcywh: Tensor,
                targets: Sequence[Target]) -> dict[str, Tensor]:
        cls_logits, box_deltas = _require(outputs, ("cls_logits", "box_deltas"), "RetinaNetLoss")
        if "conf_logits" in outputs and not self.with_confidence:
            raise ValueError("the model predicts conf_logits but the criterion was built "
                             "without with_confidence: the confidence branch would not train")
        n, a, k = cls_logits.shape
        device = cls_logits.device
        anchors = _priors_for(priors_cxcywh, a, device)
        anchors_xyxy = cxcywh_to_xyxy(anchors)
        gts = prepare_targets(targets, n, k, device)

        matched = torch.full((n, a), BACKGROUND, dtype=torch.long, device=device)
        matched_boxes = anchors_xyxy.expand(n, a, 4).clone()  # anchors' own box if unmatched
        matched_labels = torch.zeros((n, a), dtype=torch.long, device=device)
        for i, (boxes, labels) in enumerate(gts):
            if boxes.shape[0] == 0:
                continue
            matched[i] = match_retinanet(anchors_xyxy, boxes, self.pos_iou, self.neg_iou,
                                         self.allow_low_quality)
            positive_i = matched[i] >= 0
            gt_index = matched[i].clamp(min=0)
            matched_boxes[i] = torch.where(positive_i[:, None], boxes[gt_index], anchors_xyxy)
            matched_labels[i] = labels[gt_index]

        # Masks via torch.where (not boolean indexing): no GPU sync, and a graph when empty.
        positive = matched >= 0
        num_positive = positive.sum().clamp(min=1)
        cls_targets = F.one_hot(matched_labels, k).float() * positive[..., None]
        focal = sigmoid_focal_loss(cls_logits.float(), cls_targets, self.focal_alpha,
                                   self.focal_gamma)
        cls_loss = torch.where((matched != IGNORE)[..., None], focal, 0.0).sum() / num_positive

        anchors_per_image = anchors.expand(n, a, 4)
        box_targets = encode(matched_boxes, anchors_per_image, self.box_coder_weights)
        if self.box_loss == "l1":
            box_per_value = F.l1_loss(box_deltas.float(), box_targets, reduction="none")
        else:
            box_per_value = F.smooth_l1_loss(box_deltas.float(), box_targets, reduction="none",
                                             beta=self.smooth_l1_beta)
        box_loss = torch.where(positive, box_per_value.sum(dim=-1), 0.0).sum() / num_positive
        losses = {"cls": cls_loss, "box": box_loss}

        if self.with_confidence:
            (conf_logits,) = _require(outputs, ("conf_logits",), "RetinaNetLoss (confidence)")
            with torch.no_grad():
                predicted_boxes = decode(box_deltas.detach().float(), anchors_per_image,
                                         self.box_coder_weights)
                iou_targets = aligned_box_iou(predicted_boxes, matched_boxes)
            conf_per_anchor = F.binary_cross_entropy_with_logits(
                conf_logits.float().squeeze(-1), iou_targets, reduction="none")
            losses["conf"] = torch.where(positive, conf_per_anchor, 0.0).sum() / num_positive

        return {"loss": sum(losses.values()), **losses}


# --------------------------------------------------------------------------- dispatch


def _unwrap(model: nn.Module) -> nn.Module:
    """The detector inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def build_criterion(model: nn.Module) -> nn.Module:
    """The training criterion of ``model``'s ``head_family``, with its ``box_coder_weights``.

    ``"passd"`` with the P&A head (it exports ``propose_deltas``) -> ``PassdLoss``;
    ``"passd"`` with the plain SSD head (Table 1 exp. 1) and ``"ssd"`` (DAIPNet) ->
    ``MultiboxLoss``; ``"retinanet"`` (RetinaNet, HAR-Net, DSANet) -> ``RetinaNetLoss``, with
    the confidence term when the model exports ``conf_logits`` (DSANet-Conf).
    """
    bare = _unwrap(model)
    detector = as_detection_model(bare, purpose=f"no training criterion for {type(bare).__name__}")
    weights = tuple(float(w) for w in detector.box_coder_weights)
    family, names = detector.head_family, detector.export_output_names
    if family == "passd" and "propose_deltas" in names:
        return PassdLoss(weights)
    if family in ("passd", "ssd"):
        return MultiboxLoss(weights)
    if family == "retinanet":
        return RetinaNetLoss(weights, with_confidence="conf_logits" in names)
    raise TypeError(f"no training criterion for head family {family!r}")


__all__ = [
    "MultiboxLoss",
    "PassdLoss",
    "RetinaNetLoss",
    "assign_ssd_targets",
    "build_criterion",
    "hard_negative_mining",
    "mined_softmax_loss",
    "prepare_targets",
    "sigmoid_focal_loss",
]
