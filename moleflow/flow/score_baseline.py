"""Per-task, per-position baseline of the patch score: the flow's NLL of a task's own training patches,
averaged over its training images at each grid position, is subtracted from every later score of that task.

Why: a CNN's border patches (zero padding, PatchCore's 3x3 aggregation over fewer neighbours) are
atypical features, and a flow trained hard on a task gives them a high NLL on normal images too. Measured on
the embedded benchmark's grid (lr 3e-3, 30 epochs): normal border patches scored ~90 nats above normal
centre patches while defects scored ~50 above, so the pooled pixel AUROC fell to 0.56 (0.78 on the
centre crop). Subtracting each position's training mean compares a patch with what is normal *at that
position*. It is fitted once, from the task's training images only, right after the task trains and before
it is frozen, so it is owned by the task like its input statistics (h x w numbers) and never changes again.

With `scale` (v9, --position_std) the score is also divided by each position's training standard deviation:
a z-score per position. Positions differ in spread as well as in level (a border patch's NLL varies more
from image to image), and the image score is a max over positions, so one noisy position decides it.
Measured (5 seeds, mean image AUROC from the max; UPDATE_NOTES.md, v9): 0.7774 with the mean alone (v8),
0.7846 with the z-score (v9), ahead on 4 of the 5 paired seeds: a small gain, inside the seed spread.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


#: floor of a position's training std, in nats: a position whose training NLL barely varies would
#: otherwise turn float noise into huge scores
STD_FLOOR = 1e-3


class PositionBaseline(nn.Module):
    """score - mean_train_score[position] (with `scale`: divided by std_train_score[position] too);
    identity until `fit`. The std buffer exists only with `scale`, so v8 checkpoints keep their keys."""

    def __init__(self, grid: tuple[int, int], scale: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(grid))
        self.register_buffer("std", torch.ones(grid) if scale else None)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, train_scores: Tensor) -> None:
        """(N, h, w) patch scores of the task's training images (N >= 2 for `scale`)."""
        scores = train_scores.double()
        self.mean.copy_(scores.mean(0).to(self.mean.dtype))
        if self.std is not None:
            spread = scores.std(0) if scores.shape[0] > 1 else torch.ones_like(scores[0])
            self.std.copy_(spread.clamp_min(STD_FLOOR).to(self.std.dtype))
        self.fitted.fill_(True)

    def forward(self, scores: Tensor) -> Tensor:
        centred = scores - self.mean
        return centred if self.std is None else centred / self.std
