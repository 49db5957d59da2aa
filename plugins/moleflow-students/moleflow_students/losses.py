"""The Uninformed Students losses as moleflow loss components (registered in `moleflow.losses`).

The model combines them itself through moleflow's CompositeLoss (teacher: distill + compactness; students:
regression), so the run's `--loss` (a flow loss by default) does not apply to this model.
"""

from __future__ import annotations

from torch import Tensor


class DistillationLoss:
    """Knowledge distillation: squared error between the decoded teacher descriptor and the (standardised)
    pretrained descriptor of the same patch, averaged over patches and dimensions."""

    reads = ("decoded", "target")

    def __call__(self, outputs: dict[str, Tensor], batch: dict | None = None) -> Tensor:
        return (outputs["decoded"] - outputs["target"]).pow(2).mean()


class CompactnessLoss:
    """Sum of the absolute off-diagonal entries of the correlation matrix of the teacher's descriptors
    over the batch: pushes the d dimensions to be decorrelated (a compact descriptor)."""

    reads = ("descriptor",)

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def __call__(self, outputs: dict[str, Tensor], batch: dict | None = None) -> Tensor:
        x = outputs["descriptor"].flatten(1)  # (B,d)
        x = x - x.mean(0, keepdim=True)
        # eps keeps a dead (constant) dimension from turning the whole loss into NaN
        x = x / (x.pow(2).sum(0, keepdim=True).sqrt() + self.eps)
        corr = x.T @ x
        return corr.abs().sum() - corr.diagonal().abs().sum()


class StudentRegressionLoss:
    """Students regress the normalised teacher output: squared error summed over the descriptor's
    dimensions, averaged over pixels, batch and students."""

    reads = ("students", "target")

    def __call__(self, outputs: dict[str, Tensor], batch: dict | None = None) -> Tensor:
        students, target = outputs["students"], outputs["target"]  # (M,B,d,H,W), (B,d,H,W)
        return (students - target.unsqueeze(0)).pow(2).sum(2).mean()


def squared_distance(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).sum(-3)  # over the descriptor dimension of (..., d, H, W)


def regression_and_uncertainty(students: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """(M,B,d,H,W) student predictions and (B,d,H,W) normalised teacher -> per-pixel regression error
    ||mean student - teacher||^2 and predictive uncertainty mean_m ||student_m - mean student||^2."""
    mean = students.mean(0)
    return squared_distance(mean, teacher), squared_distance(students, mean.unsqueeze(0)).mean(0)

