"""Per-task, per-position baseline of the patch score: the flow's NLL of a task's own training patches,
averaged over its training images at each grid position, is subtracted from every later score of that task.

Why: a CNN's border patches (zero padding, PatchCore's 3x3 aggregation over fewer neighbours) are
atypical features, and a flow trained hard on a task gives them a high NLL on normal images too. Measured on
the embedded benchmark's grid (lr 3e-3, 30 epochs): normal border patches scored ~90 nats above normal
centre patches while defects scored ~50 above, so the pooled pixel AUROC fell to 0.56 (0.78 on the
centre crop). Subtracting each position's training mean compares a patch with what is normal *at that
position*. It is fitted once, from the task's training images only, right after the task trains and before
it is frozen, so it is owned by the task like its input statistics (h x w numbers) and never changes again.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PositionBaseline(nn.Module):
    """score - mean_train_score[position]; identity (zeros) until `fit`."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(grid))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, train_scores: Tensor) -> None:
        """(N, h, w) patch scores of the task's training images."""
        self.mean.copy_(train_scores.double().mean(0).to(self.mean.dtype))
        self.fitted.fill_(True)

    def forward(self, scores: Tensor) -> Tensor:
        return scores - self.mean
