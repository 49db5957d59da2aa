"""Regularisers on a selector's (gate's) probabilities `outputs["selector_probs"]`, shape (B, K):
row b is the distribution over the K experts chosen for sample b (non-negative, sums to 1).

* `selector_entropy`: mean over samples of (H(p_b) - target_entropy)^2, H(p) = -sum_k p_k ln p_k in
  nats (0 ln 0 = 0). Default target ln K, the entropy of the uniform gate: the term then keeps the
  selector from committing early (anti-collapse). Pass target_entropy=0 to ask for confident, one-hot
  selections instead; any target in [0, ln K] is reachable.
* `selector_diversity`: -(1/K) sum_k Var_b(p_bk), the population variance over the batch of each
  expert's probability, averaged over experts. Minimising it makes different samples pick different
  experts: it is 0 when every sample has the same gate (collapsed or uniform) and reaches its minimum
  -(1/K)(1 - 1/K) when the samples are split evenly into one-hot selections of each expert. (The
  variance of the mean usage across experts was not used: maximising it would reward collapse.)
  With B = 1 there is no spread and the value is 0.
"""

from __future__ import annotations

import math

import torch

from moleflow.errors import MoleflowError

_ROW_SUM_TOLERANCE = 1e-4


def selector_probs(outputs: dict[str, torch.Tensor], loss: str) -> torch.Tensor:
    """outputs["selector_probs"] checked to be (B, K) rows of probabilities (catches logits passed by mistake)."""
    p = outputs["selector_probs"]
    if p.dim() != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise MoleflowError(f"loss '{loss}': selector_probs have shape {tuple(p.shape)}; expected (B, K), B, K >= 1")
    with torch.no_grad():
        if (torch.isnan(p).any() or p.min() < 0
                          or (p.sum(1) - 1).abs().max() > _ROW_SUM_TOLERANCE):
            raise MoleflowError(f"loss '{loss}': selector_probs must be non-negative rows summing to 1; "
                                "apply softmax(dim=1) to gate logits first")
    return p


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Row entropies in nats; the clamp keeps the gradient finite at p = 0 (where p ln p -> 0)."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


class SelectorEntropyLoss:
    """mean_b (H(p_b) - target)^2; reads `selector_probs`. target_entropy None means ln K."""

    reads = ("selector_probs",)

    def __init__(self, target_entropy: float | None = None) -> None:
        if target_entropy is not None and not (math.isfinite(target_entropy) and target_entropy >= 0):
            raise MoleflowError(f"loss 'selector_entropy': target_entropy={target_entropy!r} must be a number in "
                                "[0, ln K] nats, or None for ln K")
        self.target_entropy = target_entropy

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        p = selector_probs(outputs, "selector_entropy")
        k = p.shape[1]
        target = math.log(k) if self.target_entropy is None else self.target_entropy
        if target > math.log(k) + 1e-12:
            raise MoleflowError(f"loss 'selector_entropy': target_entropy={target} exceeds ln K = {math.log(k):.4f} "
                                f"for K={k} experts, so it is unreachable; pass a value in [0, {math.log(k):.4f}]")
        return (entropy(p) - target).pow(2).mean()


class SelectorDiversityLoss:
    """-(1/K) sum_k Var_b(p_bk) (population variance over the batch); reads `selector_probs`."""

    reads = ("selector_probs",)

    def __init__(self) -> None:
        pass

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        p = selector_probs(outputs, "selector_diversity")
        return -p.var(dim=0, unbiased=False).mean()
