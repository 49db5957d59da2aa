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

With `interior="plane"` (v12, --baseline_interior plane) only the border ring (positions fewer than `border`
patches from an edge) keeps a baseline of its own; the interior's baseline is one plane a + b*row + c*col,
least-squares fitted to the interior positions' training means (and with `scale`, one std: that of the
interior's scores around the plane). Why: a per-position mean learns two things, the backbone's position
artefacts and the class's layout. The artefacts are the border (zero padding) and a slow drift across the
grid (TF-"same" padding pads stride-2 convolutions on the bottom/right only: on the embedded grid and carpet
the interior's training NLL falls by ~30 nats from top-left to bottom-right, in images whose pattern has a
random phase). The layout is where an object sits on its plain background: the object's patches have a higher
NLL than the background's, and subtracting it lifts every background patch to the object's level, so in the
pooled pixel AUROC the background competes with the defects, which lie on the object. Measured by re-scoring
the same trained flows (the baseline does not change training; benchmarks/baseline_variants.py): on the 1x15
stream, seed 0, pill's pixel AUROC is 0.883 with the raw NLL, 0.749 with the per-position z-score and 0.918
with the plane; the plane keeps the drift and drops the layout (a plane cannot draw a blob). Numbers:
UPDATE_NOTES.md, v12.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moleflow.errors import MoleflowError


#: floor of a position's training std, in nats: a position whose training NLL barely varies would
#: otherwise turn float noise into huge scores
STD_FLOOR = 1e-3


#: how the baseline treats the grid's interior: every position its own statistics, or one plane
INTERIORS = ("position", "plane")


def border_ring(grid: tuple[int, int], border: int) -> Tensor:
    """(h, w) bool: the positions fewer than `border` patches from an edge of the grid."""
    h, w = grid
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
    to_edge = torch.minimum(torch.minimum(rows, h - 1 - rows), torch.minimum(cols, w - 1 - cols))
    return to_edge < border


def fit_plane(values: Tensor, where: Tensor) -> Tensor:
    """(h, w) least-squares plane a + b*row + c*col through `values` at the positions `where`, evaluated on
    the whole grid (float64)."""
    h, w = values.shape
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    design = torch.stack([torch.ones_like(rows), rows, cols], -1).reshape(-1, 3)
    picked = where.reshape(-1)
    coef = torch.linalg.lstsq(design[picked], values.double().reshape(-1, 1)[picked]).solution
    return (design @ coef).reshape(h, w)


class PositionBaseline(nn.Module):
    """score - mean_train_score[position] (with `scale`: divided by std_train_score[position] too);
    identity until `fit`. The std buffer exists only with `scale`, so v8 checkpoints keep their keys.
    With interior "plane" the buffers hold, at interior positions, the plane and the interior's pooled std
    (same keys: a checkpoint does not say how its baseline was fitted, its recipe does)."""

    def __init__(self, grid: tuple[int, int], scale: bool = False, interior: str = "position", border: int = 1) -> None:
        super().__init__()
        if interior not in INTERIORS:
            raise MoleflowError(f"unknown baseline interior '{interior}'; use one of: {', '.join(INTERIORS)}")
        # a grid too small for the ring keeps an interior of one row or column: the default works at any size
        self.border = min(border, (min(grid) - 1) // 2)
        self.ring = border_ring(grid, self.border) if interior == "plane" else None
        self.register_buffer("mean", torch.zeros(grid))
        self.register_buffer("std", torch.ones(grid) if scale else None)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, train_scores: Tensor) -> None:
        """(N, h, w) patch scores of the task's training images (N >= 2 for `scale`)."""
        scores = train_scores.double()
        mean = scores.mean(0)
        if self.ring is not None:
            interior = ~self.ring.to(mean.device)
            mean = torch.where(interior, fit_plane(mean.cpu(), interior.cpu()).to(mean.device), mean)
        self.mean.copy_(mean.to(self.mean.dtype))
        if self.std is not None:
            spread = scores.std(0) if scores.shape[0] > 1 else torch.ones_like(scores[0])
            if self.ring is not None and scores.shape[0] > 1:
                pooled = (scores - mean)[:, interior].pow(2).sum() / (interior.sum() * (scores.shape[0] - 1))
                spread = torch.where(interior, pooled.sqrt(), spread)
            self.std.copy_(spread.clamp_min(STD_FLOOR).to(self.std.dtype))
        self.fitted.fill_(True)

    def forward(self, scores: Tensor) -> Tensor:
        centred = scores - self.mean
        return centred if self.std is None else centred / self.std
