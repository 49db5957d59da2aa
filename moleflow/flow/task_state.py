"""Checkpoint state by ownership, for a continual model that says which state_dict keys each task owns
(`_task_keys(task_id)`) and how many tasks it has (`num_tasks`, `_check_task`): everything else is shared.
Loading is exact (no missing, no unexpected key), so a checkpoint from another config fails loudly."""

from __future__ import annotations

import torch
from torch import Tensor

from moleflow.errors import MoleflowError


class TaskStateMixin:
    def task_state(self, task_id: int) -> dict[str, Tensor]:
        """Copies of the tensors the task owns on its own (its expert and adapter), keyed as in state_dict."""
        self._check_task(task_id)
        full = self.state_dict()
        return {k: full[k].detach().clone(memory_format=torch.contiguous_format) for k in self._task_keys(task_id)}

    def _shared_keys(self) -> list[str]:
        per_task = {k for t in range(self.num_tasks) for k in self._task_keys(t)}
        return [k for k in self.state_dict() if k not in per_task]

    def shared_state(self) -> dict[str, Tensor]:
        """Copies of everything else in state_dict: base flow, permutation matrices, patch attention."""
        full = self.state_dict()
        return {k: full[k].detach().clone(memory_format=torch.contiguous_format) for k in self._shared_keys()}

    def _load_exact(self, state: dict[str, Tensor], expected: set[str], what: str) -> None:
        missing = sorted(expected - state.keys())
        unexpected = sorted(state.keys() - expected)
        if missing or unexpected:
            raise MoleflowError(
                f"{what} does not match this model (missing: {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected: {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); "
                "build the model with the config the checkpoint was saved with"
            )
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise MoleflowError(f"{what} has wrong tensor shapes ({first}); use the config it was saved with") from exc

    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None:
        self._check_task(task_id)
        self._load_exact(state, set(self._task_keys(task_id)), f"state of task {task_id}")

    def load_shared_state(self, state: dict[str, Tensor]) -> None:
        self._load_exact(state, set(self._shared_keys()), "shared flow state")

