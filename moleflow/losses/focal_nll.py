"""Focal NLL (v7): the per-patch NLL re-weighted so well-explained patches count less.

With nll the per-patch, per-dimension NLL of nll.py (patch_score / D):

    weight = (1 - exp(-clip(nll, 0, clamp))) ** gamma
    loss   = mean over patches of weight * nll

exp(-nll) plays the part of the focal loss's "probability of the right answer" (Lin et al., 2017).
It is not a probability here: the NLL omits log(2*pi)/2 and a density may exceed 1, so nll can be
negative. Hence the clip, applied ONLY inside the weight (the factor multiplying the weight is the raw
nll, so gamma = 0 is exactly the plain NLL):
  * lower bound 0: a patch with nll <= 0 counts as fully explained and gets weight 0 (for gamma > 0);
    it also keeps exp(-nll) from overflowing for very negative nll.
  * upper bound `clamp` (default 50): exp(-50) ~ 2e-22, so the weight is already 1 in float32; the bound
    only keeps the weight's input finite when a patch's nll is huge or inf.

Choice: the weight is NOT detached, as in the original focal loss, so the gradient also carries the
weight's own derivative (harder patches are pushed a little more than plain re-weighting would). Where
the weight's base is 0 (nll <= 0), the power is evaluated on a stand-in base of 1 and masked out: for
0 < gamma < 1 the derivative of base**gamma is infinite at 0 and would otherwise turn the zero gradient
of the clip into NaN (inf * 0).
"""

from __future__ import annotations

import torch

from moleflow.errors import MoleflowError
from moleflow.losses.nll import NLLLoss


class FocalNLLLoss:
    """Mean per-patch focal-weighted NLL; reads `patch_score` and `z` like NLLLoss."""

    reads = NLLLoss.reads

    def __init__(self, gamma: float = 2.0, clamp: float = 50.0) -> None:
        if gamma < 0:
            raise MoleflowError(f"focal_nll: gamma must be >= 0 (got {gamma}); use 0 for the plain NLL")
        if clamp <= 0:
            raise MoleflowError(f"focal_nll: clamp must be > 0 (got {clamp}); the default 50 is safe")
        self.gamma = float(gamma)
        self.clamp = float(clamp)
        self._nll = NLLLoss()

    def weight(self, nll: torch.Tensor) -> torch.Tensor:
        base = 1.0 - torch.exp(-nll.clamp(0.0, self.clamp))
        if self.gamma == 0.0:
            return torch.ones_like(base)  # 0 ** 0 = 1: every patch counts fully
        positive = base > 0
        safe = torch.where(positive, base, torch.ones_like(base))
        return torch.where(positive, safe.pow(self.gamma), torch.zeros_like(base))

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        nll = self._nll.per_patch(outputs)
        if self.gamma == 0.0:
            return nll.mean()  # same expression as NLLLoss: bitwise-equal value and gradient
        return (self.weight(nll) * nll).mean()
