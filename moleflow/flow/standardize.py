"""Per-channel input standardisation of backbone features, one set of statistics per task.

Why per task: the base flow is trained (and frozen) on task 0's standardised features. A later task's
features standardised with task 0's statistics can be off by orders of magnitude: a random-init
ResNet-18 has channels that are dead on leather (std 0) but active on grid, and grid's values divided
by leather's floored std reached 3.6e4, which left the later experts with training losses of 1e12.
Each task therefore owns its statistics (2 x D numbers, fitted on its own training features before it
trains and frozen with it), so every expert sees inputs on the scale the base was trained for.

With `whiten` (--whiten_features) the statistics are second order: after the per-channel standardisation,
each task's features are decorrelated by its own ZCA matrix W = V diag((λ + ε)^-1/2) V^T of their channel
correlation C = V diag(λ) V^T (ε = WHITEN_EPS, PaDiM's regulariser on the standardised scale). Why: the base
flow is fitted to task 0 and then frozen, and a per-channel scale cannot undo a later task's different channel
correlations, so a low-rank expert had to learn them; whitened, every task enters the shared flow with the
same first and second moments, and the flow and the expert model only what is beyond a Gaussian. ZCA (not
PCA) keeps each channel aligned with its own feature, so the positional embedding and the FiLM adapter act
on the same channels as before. W is D x D numbers per task, fitted once and frozen with the task; its
Jacobian is the same for every patch of the task, so the patch scores' order within a task is untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: a channel's std is floored at this fraction of the median channel std (see robust_std)
STD_FLOOR = 0.1
#: added to the eigenvalues of the standardised features' correlation before whitening (mean eigenvalue 1)
WHITEN_EPS = 0.01


def robust_std(rows: Tensor, floor: float = STD_FLOOR) -> Tensor:
    """Per-channel std of (N, D) rows, floored at `floor` x the median channel std: channels that are
    (nearly) constant on training data, e.g. dead ReLUs of a random backbone, would otherwise blow any
    deviation on a test patch up a million-fold and swamp every other channel."""
    std = rows.std(0)
    return std.clamp_min(max(floor * float(std.median()), 1e-6))


def zca_matrix(rows: Tensor, eps: float = WHITEN_EPS) -> Tensor:
    """The ZCA whitening matrix of (N, D) standardised rows: V diag((λ + eps)^-1/2) V^T."""
    centred = rows - rows.mean(0)
    corr = centred.T @ centred / max(rows.shape[0] - 1, 1)
    eigenvalues, vectors = torch.linalg.eigh(corr)
    return (vectors * (eigenvalues.clamp_min(0) + eps).rsqrt()) @ vectors.T


class ChannelStats(nn.Module):
    """(x - mean) / std per channel, then (with `whiten`) times the task's ZCA matrix; identity until `fit`."""

    def __init__(self, dim: int, whiten: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        # only with whitening, so the checkpoints of runs without it keep their keys
        self.register_buffer("whiten", torch.eye(dim) if whiten else None)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, feats: Tensor) -> None:
        """Fit on (..., D) features (all leading dimensions pooled), in float64 for the sums."""
        flat = feats.reshape(-1, feats.shape[-1]).double()
        mean, std = flat.mean(0), robust_std(flat)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        if self.whiten is not None:
            self.whiten.copy_(zca_matrix((flat - mean) / std).to(self.whiten.dtype))
        self.fitted.fill_(True)

    def forward(self, feats: Tensor) -> Tensor:
        standardised = (feats - self.mean) / self.std
        return standardised if self.whiten is None else standardised @ self.whiten  # W is symmetric
