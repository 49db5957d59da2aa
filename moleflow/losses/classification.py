"""Anomaly classification loss on raw logits (`bce`).

    bce = reduction over elements of  -[w * t * log s(x) + (1 - t) * log(1 - s(x))],   s = sigmoid

with w = pos_weight (1 when None), exactly torch's ``binary_cross_entropy_with_logits``. The logits may
be one per image (B,) or one per patch/pixel (B, h, w); targets t in [0, 1] (1 = anomalous, soft labels
allowed) come from ``batch["targets"]``, else ``outputs["targets"]`` (see targets.py), with one target per
logit. pos_weight > 1 counters the rarity of anomalies (e.g. #normal / #anomalous).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moleflow.errors import MoleflowError
from moleflow.losses.targets import ground_truth, same_shape

REDUCTIONS = ("mean", "sum", "none")


class AnomalyBCELoss:
    """Binary cross-entropy with logits; reads the model output `logits` and the ground truth `targets`."""

    reads = ("logits",)

    def __init__(self, pos_weight: float | None = None, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise MoleflowError(f"loss 'bce': reduction={reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        if pos_weight is not None and not (math.isfinite(pos_weight) and pos_weight > 0):
            raise MoleflowError(f"loss 'bce': pos_weight={pos_weight!r} must be a finite number > 0 "
                                "(e.g. #normal / #anomalous samples) or None")
        self.pos_weight = None if pos_weight is None else float(pos_weight)
        self.reduction = reduction

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        logits = outputs["logits"]
        targets = same_shape(logits, ground_truth(outputs, batch, "targets", "bce", logits), "logits", "targets", "bce")
        pos_weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction=self.reduction)
