"""Coupling subnet factory for FrEIA: LoRALinear -> ReLU -> (Dropout) -> LoRALinear."""

from __future__ import annotations

from typing import Callable

from torch import nn

from moleflow.flow.lora import LoRALinear


def make_subnet_constructor(
    hidden_dim: int,
    *,
    rank: int,
    alpha: float,
    scaling: str,
    dropout: float = 0.0,
) -> Callable[[int, int], nn.Module]:
    """FrEIA `subnet_constructor(c_in, c_out)`; the last base layer is zero so each block starts as identity."""

    def construct(c_in: int, c_out: int) -> nn.Module:
        first = LoRALinear(c_in, hidden_dim, rank=rank, alpha=alpha, scaling=scaling)
        last = LoRALinear(hidden_dim, c_out, rank=rank, alpha=alpha, scaling=scaling)
        # Zero s/t at init -> the coupling is the identity and the flow starts from a stable point.
        nn.init.zeros_(last.base.weight)
        nn.init.zeros_(last.base.bias)
        layers: list[nn.Module] = [first, nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(last)
        return nn.Sequential(*layers)

    return construct
