"""Fixed 2-D sinusoidal positional embedding for patch-token grids.

The flow scores every patch token independently, so without this it could not tell a corner from the
centre. The embedding is deterministic (no parameters), so it never needs to be saved. It is timm's
`build_sincos2d_pos_embed` (channels: sin(y), sin(x), cos(y), cos(x), each over dim/4 frequencies
1 .. 1/10000); timm needs a width divisible by 4, so for other widths the last dim % 4 channels stay zero.
"""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from torch import Tensor

from moleflow.errors import MoleflowError


def sinusoidal_2d(h: int, w: int, dim: int) -> Tensor:
    """Fixed (h, w, dim) float32 embedding of each patch position (row y, column x)."""
    if h < 1 or w < 1 or dim < 1:
        raise MoleflowError(f"positional embedding needs a positive grid and dim, got h={h}, w={w}, dim={dim}")
    out = torch.zeros(h, w, dim)
    usable = dim - dim % 4
    if usable:
        out[..., :usable] = build_sincos2d_pos_embed([h, w], usable).reshape(h, w, usable)
    return out.contiguous()
