"""Soft IoU loss between a predicted anomaly map and the ground-truth mask (`iou`).

    iou_loss = 1 - sum(p * t) / sum(p + t - p * t)

over all pixels of the batch together (one population, like `pixel_iou` in evaluation/metrics.py),
where t = `batch["masks"]` (else `outputs["masks"]`, see targets.py) in [0, 1] and p is
`outputs["anomaly_map"]` (B, H, W) or (B, 1, H, W) turned into [0, 1] by `normalize_method`:
* "sigmoid": p = sigmoid(score), for logit-like maps;
* "clamp":   p = clamp(score, 0, 1), for maps that already are probabilities (gradient 0 outside);
* "minmax":  p = (score - min) / (max - min) per image; a constant image maps to 0. Note that this
             always puts some pixel of every image at 1, also on normal images.
With t binary and p binary it is 1 - IoU. When both p and t are all zero the sets agree and the
loss is 0.
"""

from __future__ import annotations

import torch

from moleflow.errors import MoleflowError
from moleflow.losses.targets import ground_truth, same_shape

NORMALIZE_METHODS = ("sigmoid", "clamp", "minmax")


def normalize_scores(scores: torch.Tensor, method: str) -> torch.Tensor:
    if method == "sigmoid":
        return torch.sigmoid(scores)
    if method == "clamp":
        return scores.clamp(0.0, 1.0)
    flat = scores.flatten(1) if scores.dim() > 1 else scores.flatten()[None]
    lo = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - lo
    # a constant image has span 0: its numerator is 0 too, so dividing by 1 maps it to 0
    unit = (flat - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return unit.reshape(scores.shape)


class SoftIoULoss:
    """1 - soft IoU of normalised `anomaly_map` vs ground-truth `masks`; reads `anomaly_map`."""

    reads = ("anomaly_map",)

    def __init__(self, normalize_method: str = "sigmoid") -> None:
        if normalize_method not in NORMALIZE_METHODS:
            raise MoleflowError(f"loss 'iou': normalize_method={normalize_method!r}; "
                                f"choose one of {', '.join(NORMALIZE_METHODS)}")
        self.normalize_method = normalize_method

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        scores = outputs["anomaly_map"]
        masks = same_shape(scores, ground_truth(outputs, batch, "masks", "iou", scores), "anomaly_map", "masks", "iou")
        p = normalize_scores(scores, self.normalize_method)
        intersection = (p * masks).sum()
        union = (p + masks - p * masks).sum()
        safe_union = torch.where(union > 0, union, torch.ones_like(union))
        return torch.where(union > 0, 1.0 - intersection / safe_union, torch.zeros_like(union))
