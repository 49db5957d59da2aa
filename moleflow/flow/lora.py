"""A Linear layer with a bank of per-task low-rank (LoRA) experts.

The base weight is shared by every task; each task adds its own pair (A, B) so that the layer computes
`base(x) + scale * B A x` for the task that is active. B starts at zero, so a new expert starts as an
exact no-op and the base keeps scoring earlier tasks unchanged.

Which task is active: FrEIA calls a coupling's subnet as `subnet(x)`, so the task cannot be an argument.
It is set for the duration of a pass with `with active_expert(task):` (a `contextvars.ContextVar`:
re-entrant, restored on exit even on error, separate per thread), never parked on the layers. Outside any
such block a layer computes its base alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.errors import MoleflowError

SCALINGS = ("alpha_over_rank", "alpha_over_2rank")


@dataclass(frozen=True)
class ActiveExpert:
    task: int | None
    corner_groups: Any = None  # SC-LoRA: which grid points and weights each row uses (spatial_lora.py)


_ACTIVE: ContextVar[ActiveExpert | None] = ContextVar("moleflow_active_expert", default=None)


@contextmanager
def active_expert(task: int | None, corner_groups: Any = None) -> Iterator[None]:
    """LoRA layers run with task `task`'s expert inside the block (None: the base alone)."""
    token = _ACTIVE.set(ActiveExpert(task, corner_groups))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current_expert() -> ActiveExpert:
    return _ACTIVE.get() or ActiveExpert(None)


def lora_scale(alpha: float, rank: int, scaling: str) -> float:
    """alpha/rank (v2+) or alpha/(2*rank) (v1)."""
    if scaling == "alpha_over_rank":
        return alpha / rank
    if scaling == "alpha_over_2rank":
        return alpha / (2 * rank)
    raise MoleflowError(f"unknown LoRA scaling '{scaling}'; use one of: {', '.join(SCALINGS)}")


class LoRALinear(nn.Module):
    """nn.Linear plus experts keyed by str(task_id); the active task (`active_expert`, module docstring)
    picks the expert used by forward. None, or a task without an expert, means the base layer alone."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        alpha: float,
        scaling: str = "alpha_over_rank",
    ) -> None:
        super().__init__()
        if rank < 1:
            raise MoleflowError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.alpha = alpha
        self.scaling = scaling
        self.scale = lora_scale(alpha, rank, scaling)
        self.base = nn.Linear(in_features, out_features)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()

    def has_expert(self, task_id: int) -> bool:
        return str(task_id) in self.lora_A

    def add_expert(self, task_id: int) -> None:
        key = str(task_id)
        if key in self.lora_A:
            raise MoleflowError(f"LoRA expert for task {task_id} already exists; begin each task only once")
        ref = self.base.weight
        a = torch.empty(self.rank, self.in_features, device=ref.device, dtype=ref.dtype)
        # Same init as the LoRA paper / peft: A random (kaiming-uniform), B zero -> delta starts at exactly 0.
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        b = torch.zeros(self.out_features, self.rank, device=ref.device, dtype=ref.dtype)
        self.lora_A[key] = nn.Parameter(a)
        self.lora_B[key] = nn.Parameter(b)

    def expert_parameters(self, task_id: int) -> list[nn.Parameter]:
        key = str(task_id)
        if key not in self.lora_A:
            return []
        return [self.lora_A[key], self.lora_B[key]]

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        task = current_expert().task
        if task is None or str(task) not in self.lora_A:
            return out
        a = self.lora_A[str(task)]
        b = self.lora_B[str(task)]
        return out + self.scale * F.linear(F.linear(x, a), b)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}, "
            f"experts=[{', '.join(self.lora_A.keys())}]"
        )
