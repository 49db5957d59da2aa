"""Soft-boundary Deep SVDD (Ruff et al., "Deep One-Class Classification", ICML 2018), eq. 3 without
the weight-decay term (the optimiser's weight_decay provides it):

    loss = R^2 + (1 / nu) * mean over embeddings of max(0, ||z - c||^2 - R^2)

z is `outputs["embedding"]`, shape (..., D): one vector per image (B, D) or per patch (B, h, w, D);
the mean runs over every vector. c is `outputs["center"]` (D,) when the model provides it, else 0.
nu in (0, 1] bounds the fraction of training vectors allowed outside the sphere (upper bound) and of
support vectors (lower bound).

The radius R is an ``nn.Parameter`` of this loss object (initial value `radius`), so the loss is an
``nn.Module``. It changes only if someone optimises it; two ways, as in the paper:
* gradient: add ``loss.parameters()`` to the optimiser next to the model's trainable parameters
  (CompositeLoss does not collect loss parameters itself; the trainer has to pass
  ``[p for t in composite.terms if hasattr(t.fn, "parameters") for p in t.fn.parameters()]``).
  dloss/dR = 2R (1 - fraction outside / nu), so R grows while more than nu of the vectors lie outside;
  R = 0 is a stationary point, hence the positive initial value.
* line search (Ruff's choice, every few epochs after a warm-up): ``update_radius(outputs)`` sets R to
  the (1 - nu)-quantile of the distances ||z - c||, the exact minimiser of the loss over R for fixed z
  (then keep R out of the optimiser, or it moves again).

The trainer optimises every loss parameter with the model's (AdamW at the run's --lr), so with
``radius_update="gradient"`` (default) R moves by about lr per step: fine at lr 1e-2, slow at the flow's
2e-4. ``radius_update="line_search"`` instead sets R from each training batch (update_radius on the
batch, before the loss) and takes R out of the optimiser: `--loss_opt deep_svdd_soft_boundary.radius_update=line_search`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moleflow.errors import MoleflowError

RADIUS_UPDATES = ("gradient", "line_search")


class SoftBoundaryDeepSVDDLoss(nn.Module):
    """R^2 + mean(relu(||z - c||^2 - R^2)) / nu with a learnable radius R; reads `embedding` (+ optional `center`)."""

    reads = ("embedding",)

    def __init__(self, nu: float = 0.1, radius: float = 1.0, radius_update: str = "gradient") -> None:
        super().__init__()
        if radius_update not in RADIUS_UPDATES:
            raise MoleflowError(f"loss 'deep_svdd_soft_boundary': radius_update={radius_update!r}; choose one of "
                                f"{', '.join(RADIUS_UPDATES)}")
        if not (isinstance(nu, (int, float)) and 0.0 < nu <= 1.0):
            raise MoleflowError(f"loss 'deep_svdd_soft_boundary': nu={nu!r} must be in (0, 1] "
                                "(the allowed fraction of outliers, e.g. 0.1)")
        if not (math.isfinite(radius) and radius >= 0):
            raise MoleflowError(f"loss 'deep_svdd_soft_boundary': radius={radius!r} must be a finite number >= 0")
        self.nu = float(nu)
        self.radius_update = radius_update
        # a line-searched radius is set, not learnt: requires_grad False keeps it out of the optimiser
        self.radius = nn.Parameter(torch.tensor(float(radius)), requires_grad=radius_update == "gradient")

    def squared_distances(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """||z - c||^2 per embedding vector (all leading dims kept)."""
        z = outputs["embedding"]
        center = outputs.get("center")
        if center is None:
            return z.pow(2).sum(-1)
        center = torch.as_tensor(center, dtype=z.dtype, device=z.device)
        if center.shape[-1:] != z.shape[-1:]:
            raise MoleflowError(f"loss 'deep_svdd_soft_boundary': center {tuple(center.shape)} does not match the "
                                f"embedding width {z.shape[-1]}; pass a centre of shape ({z.shape[-1]},)")
        return (z - center).pow(2).sum(-1)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        if self.radius_update == "line_search" and torch.is_grad_enabled():
            self.update_radius(outputs)  # training step: R = the minimiser for this batch
        dist = self.squared_distances(outputs)
        r2 = self.radius.to(dist.dtype).pow(2)
        return r2 + torch.relu(dist - r2).mean() / self.nu

    @torch.no_grad()
    def update_radius(self, outputs: dict[str, torch.Tensor]) -> float:
        """Set R to the exact minimiser of the loss over R for these outputs (Ruff's line search); returns R.

        d/d(R^2) of the loss is 1 - #(d > R^2) / (nu n), so any R^2 = d_(j) (sorted squared distances)
        with #(d > d_(j)) <= nu n <= #(d >= d_(j)) is optimal: j = ceil((1 - nu) n - 1), the
        (1 - nu)-quantile of the distances taken at a data point rather than interpolated.
        """
        dist = self.squared_distances(outputs).detach().flatten().double().sort().values
        if dist.numel() == 0:
            raise MoleflowError("loss 'deep_svdd_soft_boundary': update_radius got no embeddings")
        j = min(max(math.ceil((1.0 - self.nu) * dist.numel() - 1.0 - 1e-9), 0), dist.numel() - 1)
        self.radius.fill_(float(dist[j].sqrt()))
        return float(self.radius)
