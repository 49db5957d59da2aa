"""v6: gated single-head self-attention over the patch grid of one image, applied before the flow.

The flow scores every patch token on its own; this block lets a token see the rest of its image first
(e.g. "this texture is regular everywhere else"). It is a pre-LN transformer block,

    x = x + tanh(attn_alpha) * Attention(LayerNorm(x))
    x = x + tanh(ffn_alpha)  * FFN(LayerNorm(x))

with both alphas zero-initialised scalars. tanh(0) == 0 exactly, so at init the block IS the identity
(bitwise: x + 0 * y == x), and training starts from the plain v3 model. A sigmoid gate would start at
0.5 and inject a random attention output on the first step; tanh also lets the gate turn a branch
negative and has slope 1 at 0, so the alphas receive a gradient right away (the branch weights only get
one once their gate is non-zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.errors import MoleflowError


class PatchSelfAttention(nn.Module):
    """(B, h, w, D) -> (B, h, w, D); tokens are the h*w patches of one image (no mixing across images)."""

    def __init__(self, dim: int, ffn_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(round(dim * ffn_ratio))
        if dim < 1 or hidden < 1:
            raise MoleflowError(f"PatchSelfAttention needs dim >= 1 and dim*ffn_ratio >= 1, got {dim}, {ffn_ratio}")
        self.dim = dim
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.attn_alpha = nn.Parameter(torch.zeros(()))
        self.ffn_alpha = nn.Parameter(torch.zeros(()))

    @property
    def gates(self) -> tuple[Tensor, Tensor]:
        """(attention gate, FFN gate), each tanh(alpha) in (-1, 1); both exactly 0 at init."""
        return torch.tanh(self.attn_alpha), torch.tanh(self.ffn_alpha)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise MoleflowError(f"PatchSelfAttention expects (B, h, w, {self.dim}) features, got {tuple(x.shape)}")
        b, h, w, d = x.shape
        tokens = x.reshape(b, h * w, d)
        attn_gate, ffn_gate = self.gates
        q, k, v = self.qkv(self.attn_norm(tokens)).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, N, D): one head of width D
        tokens = tokens + attn_gate * self.attn_out(attended)
        tokens = tokens + ffn_gate * self.ffn(self.ffn_norm(tokens))
        return tokens.reshape(b, h, w, d)
