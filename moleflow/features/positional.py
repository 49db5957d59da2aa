"""Fixed 2-D sinusoidal positional embedding for patch-token grids.

The flow scores every patch token independently, so without this it could not tell a corner from the
centre. The embedding is deterministic (no parameters), so it never needs to be saved.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moleflow.errors import MoleflowError


def _sinusoid_1d(positions: Tensor, channels: int) -> Tensor:
    """(n,) positions -> (n, channels): sin for the first half of the frequencies, cos for the second.

    An odd `channels` leaves the last column zero, which is how dims not divisible by 4 are handled.
    """
    n_freq = channels // 2
    out = torch.zeros(positions.shape[0], channels, dtype=torch.float64)
    if n_freq == 0:
        return out
    # Transformer-style geometric frequency ladder 1 .. 1/10000.
    freqs = 1.0 / (10000.0 ** (torch.arange(n_freq, dtype=torch.float64) / n_freq))
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    out[:, :n_freq] = torch.sin(angles)
    out[:, n_freq : 2 * n_freq] = torch.cos(angles)
    return out


def sinusoidal_2d(h: int, w: int, dim: int) -> Tensor:
    """Fixed (h, w, dim) float32 embedding: the first dim//2 channels encode the row (y), the rest the column (x)."""
    if h < 1 or w < 1 or dim < 1:
        raise MoleflowError(f"positional embedding needs a positive grid and dim, got h={h}, w={w}, dim={dim}")
    dim_y = dim // 2
    dim_x = dim - dim_y
    emb_y = _sinusoid_1d(torch.arange(h), dim_y)  # (h, dim_y)
    emb_x = _sinusoid_1d(torch.arange(w), dim_x)  # (w, dim_x)
    grid = torch.cat(
        [emb_y[:, None, :].expand(h, w, dim_y), emb_x[None, :, :].expand(h, w, dim_x)],
        dim=-1,
    )
    return grid.to(torch.float32).contiguous()
