"""Coupling subnet factory for FrEIA: LoRALinear -> ReLU -> (Dropout) -> LoRALinear.

With spatial_grid > 0 both layers are SpatialLoRALinear (v4 SC-LoRA) with a spatial_grid^2 expert grid.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from moleflow.flow.lora import LoRALinear
from moleflow.flow.spatial_lora import SpatialLoRALinear


def make_subnet_constructor(
    hidden_dim: int,
    *,
    rank: int,
    alpha: float,
    scaling: str,
    dropout: float = 0.0,
    spatial_grid: int = 0,
) -> Callable[[int, int], nn.Module]:
    """FrEIA `subnet_constructor(c_in, c_out)`; the last base layer is zero so each block starts as identity."""

    def layer(c_in: int, c_out: int) -> LoRALinear:
        if spatial_grid > 0:
            return SpatialLoRALinear(c_in, c_out, rank=rank, alpha=alpha, scaling=scaling, grid_size=spatial_grid)
        return LoRALinear(c_in, c_out, rank=rank, alpha=alpha, scaling=scaling)

    def construct(c_in: int, c_out: int) -> nn.Module:
        first = layer(c_in, hidden_dim)
        last = layer(hidden_dim, c_out)
        # Zero s/t at init -> the coupling is the identity and the flow starts from a stable point.
        nn.init.zeros_(last.base.weight)
        nn.init.zeros_(last.base.bias)
        layers: list[nn.Module] = [first, nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(last)
        return nn.Sequential(*layers)

    return construct
