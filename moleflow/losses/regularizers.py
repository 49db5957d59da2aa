"""Regularisers on model parameters passed through the outputs dict.

* `orthogonality`: ||W W^T - I||_F^2 for `outputs["weight"]`, a matrix (m, n) or a list/tuple of them
  (summed). Tensors with more than two dims (conv kernels) are flattened to (shape[0], -1), one row per
  output unit. The identity is m x m, so the minimum 0 needs orthonormal rows (m <= n); for a tall matrix
  (m > n) W W^T has rank <= n and the loss is at least m - n.
* `distinctness`: mean cosine similarity over the K(K-1) ordered pairs i != j of the expert/prototype
  vectors `outputs["prototypes"]` (K, D). Signed: orthogonal prototypes give 0, identical ones 1, and
  minimising it spreads them apart (down to -1/(K-1) for a regular simplex). With K = 1 there is no pair
  and the loss is 0 (a task-0 model with one expert is trivially distinct). A zero vector counts as
  similarity 0 to everything (torch's eps-normalisation) instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moleflow.errors import MoleflowError


def _matrices(weight: torch.Tensor | list | tuple) -> list[torch.Tensor]:
    mats = list(weight) if isinstance(weight, (list, tuple)) else [weight]
    if not mats:
        raise MoleflowError("loss 'orthogonality': outputs['weight'] is an empty list; pass at least one matrix")
    out = []
    for w in mats:
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise MoleflowError(f"loss 'orthogonality': each weight must be a tensor with >= 2 dims, got {shape}")
        out.append(w.reshape(w.shape[0], -1))
    return out


class OrthogonalityLoss:
    """Sum over matrices of ||W W^T - I||_F^2; reads `weight` (a tensor or a list of tensors)."""

    reads = ("weight",)

    def __init__(self) -> None:
        pass

    def __call__(self, outputs: dict, batch: dict | None = None) -> torch.Tensor:
        total = None
        for w in _matrices(outputs["weight"]):
            gram = w @ w.T
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            term = (gram - eye).pow(2).sum()
            total = term if total is None else total + term
        return total


class DistinctnessLoss:
    """Mean off-diagonal cosine similarity of the prototypes (K, D); reads `prototypes`."""

    reads = ("prototypes",)

    def __init__(self) -> None:
        pass

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        protos = outputs["prototypes"]
        if protos.dim() != 2:
            raise MoleflowError(f"loss 'distinctness': prototypes have shape {tuple(protos.shape)}; "
                                "expected (K, D), one row per expert")
        k = protos.shape[0]
        if k < 2:
            return protos.sum() * 0.0  # no pair; keeps the graph so backward() still works
        unit = F.normalize(protos, dim=-1)
        cos = unit @ unit.T
        off_diagonal = cos.sum() - cos.diagonal().sum()
        return off_diagonal / (k * (k - 1))
