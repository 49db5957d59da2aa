"""Per-patch negative log-likelihood of the flow.

Definition used everywhere in moleflow (reported in README): for a patch feature x with flow output z,
    nll(x) = (0.5 * ||z||^2 - log|det J(x)|) / D
i.e. the negative log-density in nats per feature dimension, without the constant D/2*log(2*pi).
The training loss is its mean over all patches of the batch.
"""

from __future__ import annotations

import torch


class NLLLoss:
    """Mean per-patch, per-dimension NLL; reads the model outputs `patch_score` and `z`."""

    reads = ("patch_score", "z")

    def __init__(self) -> None:
        pass

    def per_patch(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["patch_score"] / outputs["z"].shape[-1]

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        return self.per_patch(outputs).mean()
