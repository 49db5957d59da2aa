"""v4 SC-LoRA: a LoRA expert that is a G x G grid of (A, B) pairs, bilinearly blended by patch position.

The grid's corners sit on the patch grid's corners (align_corners=True semantics): patch (y, x) of an
h x w grid is at grid coordinate (y*(G-1)/(h-1), x*(G-1)/(w-1)). Its expert update is the bilinear blend
of the 4 surrounding grid points' updates,

    delta(x_row) = sum_k w_k * B_k A_k x_row        (w = bilinear weights, sum_k w_k = 1)

i.e. the low-rank weight update dW_k = B_k A_k is what gets interpolated (the output is linear in dW).
A patch exactly on a grid point uses that point's (A, B) alone. A and B are not interpolated separately:
(sum w B)(sum w A) would add cross terms B_i A_j that belong to no grid point.

Efficiency: rows are grouped by their 4 corners (every patch of one grid cell shares them), so the whole
layer is two batched matmuls over (cells, rows per cell, 4*rank): 4x a plain LoRA's cost whatever G is,
and no per-row matrix is ever built. The owning flow passes the rows' `corner_groups` with the active task
(`with active_expert(task, corner_groups)`, lora.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moleflow.errors import MoleflowError
from moleflow.flow.lora import LoRALinear, current_expert


def bilinear_corners(h: int, w: int, grid_size: int) -> tuple[Tensor, Tensor]:
    """Per patch position (row-major, h*w): the 4 surrounding grid-point indices (y*G + x), ordered
    top-left, top-right, bottom-left, bottom-right, and their bilinear weights (float64, sum 1)."""
    if grid_size < 1:
        raise MoleflowError(f"sc_lora_grid_size must be >= 1, got {grid_size}")

    def axis(n: int) -> tuple[Tensor, Tensor, Tensor]:
        pos = torch.arange(n, dtype=torch.float64) * ((grid_size - 1) / (n - 1) if n > 1 else 0.0)
        lo = pos.floor().clamp(max=max(grid_size - 2, 0)).long()  # last cell owns the far edge
        frac = pos - lo
        return lo, (lo + 1).clamp(max=grid_size - 1), frac

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    y0, y1, fy = (t[:, None].expand(h, w) for t in (y0, y1, fy))
    x0, x1, fx = (t[None, :].expand(h, w) for t in (x0, x1, fx))
    g = grid_size
    idx = torch.stack([y0 * g + x0, y0 * g + x1, y1 * g + x0, y1 * g + x1], dim=-1)
    weights = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=-1)
    return idx.reshape(h * w, 4), weights.reshape(h * w, 4)


@dataclass(frozen=True)
class CornerGroups:
    """Rows grouped by identical 4-corner tuples, padded to a (groups, slots) layout for bmm.

    corners (C,4) grid points of each group; gather (C*M,) row per slot (padding -> N, a zero row);
    weights (C,M,4) bilinear weights per slot (0 at padding); scatter (N,) slot of every row.
    """

    corners: Tensor
    gather: Tensor
    weights: Tensor
    scatter: Tensor

    @classmethod
    def from_rows(cls, corner_idx: Tensor, corner_weights: Tensor) -> "CornerGroups":
        """corner_idx (N,4) long, corner_weights (N,4) -> groups (computed once per flow call)."""
        n = corner_idx.shape[0]
        corners, group = torch.unique(corner_idx, dim=0, return_inverse=True)
        num_groups = corners.shape[0]
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group, minlength=num_groups)
        slots = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        sorted_group = group[order]
        slot = sorted_group * slots + torch.arange(n, device=group.device) - starts[sorted_group]
        gather = torch.full((num_groups * slots,), n, dtype=torch.long, device=group.device)
        gather[slot] = order
        scatter = torch.empty(n, dtype=torch.long, device=group.device)
        scatter[order] = slot
        weights = corner_weights.new_zeros(num_groups * slots, 4)
        weights[slot] = corner_weights[order]
        return cls(corners, gather, weights.view(num_groups, slots, 4), scatter)


class SpatialLoRALinear(LoRALinear):
    """LoRALinear whose expert is a grid_size^2 bank of (A, B); see the module docstring.

    Stored as lora_A[task] (G*G, rank, in) and lora_B[task] (G*G, out, rank), so ownership, state keys and
    freezing work exactly as for plain experts. B starts at zero: a new expert is an exact no-op.
    """

    def __init__(self, in_features: int, out_features: int, *, rank: int, alpha: float,
                 scaling: str = "alpha_over_rank", grid_size: int = 4) -> None:
        super().__init__(in_features, out_features, rank=rank, alpha=alpha, scaling=scaling)
        if grid_size < 1:
            raise MoleflowError(f"sc_lora_grid_size must be >= 1, got {grid_size}")
        self.grid_size = grid_size

    def add_expert(self, task_id: int) -> None:
        key = str(task_id)
        if key in self.lora_A:
            raise MoleflowError(f"LoRA expert for task {task_id} already exists; begin each task only once")
        ref = self.base.weight
        points = self.grid_size**2
        a = torch.empty(points, self.rank, self.in_features, device=ref.device, dtype=ref.dtype)
        for grid_point in a:  # each grid point gets the plain LoRA init of its own
            nn.init.kaiming_uniform_(grid_point, a=math.sqrt(5))
        self.lora_A[key] = nn.Parameter(a)
        self.lora_B[key] = nn.Parameter(torch.zeros(points, self.out_features, self.rank, device=ref.device,
                                                    dtype=ref.dtype))

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        active = current_expert()
        task = active.task
        if task is None or str(task) not in self.lora_A:
            return out
        groups = active.corner_groups
        if groups is None or groups.scatter.shape[0] != x.shape[0]:
            raise MoleflowError("SpatialLoRALinear needs corner_groups for these rows; run it through MoLEFlow")
        num_groups, slots, _ = groups.weights.shape
        a = self.lora_A[str(task)][groups.corners]  # (C, 4, r, in): per group, not per row
        b = self.lora_B[str(task)][groups.corners]  # (C, 4, out, r)
        rows = torch.cat([x, x.new_zeros(1, x.shape[1])])[groups.gather].view(num_groups, slots, -1)
        hidden = torch.bmm(rows, a.flatten(1, 2).transpose(1, 2))  # (C, M, 4r)
        hidden = (hidden.view(num_groups, slots, 4, self.rank) * groups.weights.unsqueeze(-1)).flatten(2)
        delta = torch.bmm(hidden, b.permute(0, 2, 1, 3).flatten(2).transpose(1, 2))  # (C, M, out)
        return out + self.scale * delta.reshape(num_groups * slots, -1)[groups.scatter]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.grid_size}x{self.grid_size}"
