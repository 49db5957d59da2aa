"""Per-task input adapters: small modules that map a task's features toward what the shared flow expects.

All adapters take and return (B, h, w, D) tensors. Every adapter starts close to a fixed, documented
function (zero-initialised last layers), so a new task starts from the shared flow's behaviour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.errors import MoleflowError

ADAPTER_KINDS = ("none", "instancenorm", "film")


def _zero_init_mlp(dim: int, hidden: int) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
    nn.init.zeros_(mlp[2].weight)
    nn.init.zeros_(mlp[2].bias)
    return mlp


class IdentityAdapter(nn.Module):
    """No adaptation; owns no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class InstanceNormAdapter(nn.Module):
    """v1: per image and channel normalisation over the token grid, then a zero-init residual MLP.

    out = n + mlp(n), n = InstanceNorm(x) (affine=False), mlp: D -> D -> D. At init out == n.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.mlp = _zero_init_mlp(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise MoleflowError(f"InstanceNormAdapter expects (B, h, w, D) features, got shape {tuple(x.shape)}")
        # Stats over h*w per (image, channel); use_input_stats semantics in train and eval alike.
        n = F.instance_norm(x.permute(0, 3, 1, 2), eps=self.eps).permute(0, 2, 3, 1)
        return n + self.mlp(n)


class FiLMAdapter(nn.Module):
    """v3: out = (1 - g) * x + g * y, with y = f + mlp(f), f = gamma * LayerNorm(x) + beta.

    LayerNorm has no affine of its own; gamma/beta init 1/0; mlp hidden max(D//2, 128) (v3; `hidden`
    sets it, 0 = no MLP, y = f: 2D + 1 parameters per task) with a zero last layer. The gate is
    g = sigmoid(gate_logit) with gate_logit initialised to 0, so g starts at exactly 0.5 and always
    stays in (0, 1).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        width = max(dim // 2, 128) if hidden is None else hidden
        if width < 0:
            raise MoleflowError(f"FiLM adapter hidden width must be >= 0 (0 = no MLP), got {hidden}")
        self.mlp = _zero_init_mlp(dim, width) if width > 0 else None
        self.gate_logit = nn.Parameter(torch.zeros(()))

    @property
    def gate(self) -> Tensor:
        return torch.sigmoid(self.gate_logit)

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x, (self.dim,)) * self.gamma + self.beta
        if self.mlp is not None:
            y = y + self.mlp(y)
        g = self.gate
        return (1 - g) * x + g * y

    def log_det(self, x: Tensor, mix: float | None = None) -> Tensor:
        """(..., D) inputs -> log|det dy/dx| per patch of y = forward(x), or of (1 - mix) x + mix forward(x).

        Without the MLP the map is y = (1-g) x + g (γ ⊙ LN(x) + β), and LayerNorm's Jacobian is
        (I - 11ᵀ/D - x̂x̂ᵀ/D) / σ (x̂ = (x - μ)/σ, σ² = var + eps), so dy/dx = diag(a) + U Vᵀ with
        a = (1-g) + g γ/σ, U = -(g/(σD)) [γ, γ ⊙ x̂], V = [1, x̂]: by the matrix determinant lemma
        log|det| = Σ log|a| + log|det(I₂ + Vᵀ diag(1/a) U)|, a 2 x 2 determinant per patch. A task 0 mix m
        only scales the gate (g -> m g). Why it matters: outside the density the adapter could shrink a
        task's inputs and so lower its NLL for free (UPDATE_NOTES.md, v11)."""
        if self.mlp is not None:
            raise MoleflowError("the FiLM adapter's log-determinant is computed without its MLP only "
                                "(--adapter_hidden 0)")
        g = self.gate if mix is None else mix * self.gate
        eps = 1e-5  # F.layer_norm's default
        mu = x.mean(-1, keepdim=True)
        sigma = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        xhat = (x - mu) / sigma
        a = (1 - g) + g * self.gamma / sigma
        w = self.gamma / a
        c = -g / (sigma[..., 0] * self.dim)
        s1, sx, sxx = w.sum(-1), (w * xhat).sum(-1), (w * xhat * xhat).sum(-1)
        small = (1 + c * s1) * (1 + c * sxx) - (c * sx) ** 2
        return a.abs().log().sum(-1) + small.abs().log()


def make_adapter(kind: str, dim: int, hidden: int | None = None) -> nn.Module:
    """"none" | "instancenorm" | "film" (`hidden`: the FiLM MLP width, None = v3's max(D//2, 128))."""
    if kind == "none":
        return IdentityAdapter()
    if kind == "instancenorm":
        return InstanceNormAdapter(dim)
    if kind == "film":
        return FiLMAdapter(dim, hidden)
    raise MoleflowError(f"unknown adapter '{kind}'; use one of: {', '.join(ADAPTER_KINDS)}")
