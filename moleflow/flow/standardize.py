"""Per-channel input standardisation of backbone features, one set of statistics per task.

Why per task: the base flow is trained (and frozen) on task 0's standardised features. A later task's
features standardised with task 0's statistics can be off by orders of magnitude: a random-init
ResNet-18 has channels that are dead on leather (std 0) but active on grid, and grid's values divided
by leather's floored std reached 3.6e4, which left the later experts with training losses of 1e12.
Each task therefore owns its statistics (2 x D numbers, fitted on its own training features before it
trains and frozen with it), so every expert sees inputs on the scale the base was trained for.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: a channel's std is floored at this fraction of the median channel std (see robust_std)
STD_FLOOR = 0.1


def robust_std(rows: Tensor, floor: float = STD_FLOOR) -> Tensor:
    """Per-channel std of (N, D) rows, floored at `floor` x the median channel std: channels that are
    (nearly) constant on training data, e.g. dead ReLUs of a random backbone, would otherwise blow any
    deviation on a test patch up a million-fold and swamp every other channel."""
    std = rows.std(0)
    return std.clamp_min(max(floor * float(std.median()), 1e-6))


class ChannelStats(nn.Module):
    """(x - mean) / std per channel; identity until `fit` (mean 0, std 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, feats: Tensor) -> None:
        """Fit on (..., D) features (all leading dimensions pooled), in float64 for the sums."""
        flat = feats.reshape(-1, feats.shape[-1]).double()
        self.mean.copy_(flat.mean(0).to(self.mean.dtype))
        self.std.copy_(robust_std(flat).to(self.std.dtype))
        self.fitted.fill_(True)

    def forward(self, feats: Tensor) -> Tensor:
        return (feats - self.mean) / self.std
