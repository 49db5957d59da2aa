"""Center loss on the flow latent (v5): pull every patch's z towards a fixed centre at zero.

    center(z) = mean over patches of ||z||^2 / D

Divided by D so it is per feature dimension, like the NLL (see nll.py): the composite
`nll + lambda * center` then keeps the same relative balance whatever the feature width. The centre is
fixed at 0 (the mode of the flow's N(0, I) base density), so the term adds no parameters and nothing
per task: it only sharpens the 0.5*||z||^2 part of the NLL, trading some log-det for tighter latents.
"""

from __future__ import annotations

import torch


class CenterLoss:
    """Mean per-patch ||z||^2 / D; reads only the model output `z` (B, h, w, D)."""

    reads = ("z",)

    def __init__(self) -> None:
        pass

    def per_patch(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        z = outputs["z"]
        return z.pow(2).sum(-1) / z.shape[-1]

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        return self.per_patch(outputs).mean()
