"""`knn`: per task, a memory of training patch features; a patch's score is its mean Euclidean distance
to the k nearest memory entries (PatchCore's scoring, with a seeded random subsample instead of the
greedy coreset). A reference for what the frozen features allow, through the same task loop, router,
metrics and compare tables as the flow.

Continual contract: each task owns its memory (saved as its checkpoint), nothing is shared, nothing is
trained by gradients, so forgetting is zero by construction under the moleflow strategy. Under
finetune/joint every round replaces the one memory (model task 0), as those baselines intend.

Options (KNNOptions: `moleflow train --model knn --help`): --k, --memory, --chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from moleflow.contract import FitContext, FitResult, ModelContext, closed_form_fit
from moleflow.errors import MoleflowError
from moleflow.options import option


@dataclass(frozen=True)
class KNNOptions:
    k: int = option(1, "neighbours whose mean distance is a patch's score", minimum=1)
    memory: int = option(20000, "most training patches kept per task (seeded subsample; 0 = all)", minimum=0)
    chunk: int = option(2048, "query rows per distance block (memory use only, same scores)", minimum=1)


class PatchKNN(nn.Module):
    input_kind = "features"
    #: no flow and no training loop: its options are all it reads (--lr, --num_epochs, ... are not among them)
    options_class = KNNOptions

    def __init__(self, dim: int, options: KNNOptions | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.opts = options or KNNOptions()

    @classmethod
    def from_options(cls, options: KNNOptions, context: ModelContext) -> PatchKNN:
        return cls(context.dim, options)

    def _memory(self, task_id: int) -> Tensor:
        memory = getattr(self, f"memory_{task_id}", None)
        if memory is None:
            raise MoleflowError(f"model 'knn' has no memory for task {task_id}; fit that task first")
        return memory

    # --- the continual contract ---
    def begin_task(self, task_id: int, class_name: str = "") -> None:
        pass  # a task's memory is created by its fit_task

    def trainable_parameters(self, task_id: int) -> list:
        return []

    def fit_task(self, task_id: int, inputs: Tensor, params: list, context: FitContext) -> FitResult:
        """Fill the task's memory with its training patches (seeded subsample above `memory`); no epochs."""
        return closed_form_fit(lambda: self._fill_memory(task_id, inputs, context))

    def _fill_memory(self, task_id: int, inputs: Tensor, context: FitContext) -> None:
        rows = inputs.reshape(-1, self.dim)
        if rows.shape[0] == 0:
            raise MoleflowError(f"{context.label}: no training images")
        if self.opts.memory and rows.shape[0] > self.opts.memory:
            pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(context.seed))
            rows = rows[pick[: self.opts.memory]]
        if rows.shape[0] < self.opts.k:
            raise MoleflowError(f"--k {self.opts.k} but {context.label} has only {rows.shape[0]} training patches")
        self.register_buffer(f"memory_{task_id}", rows.to(context.device, torch.float32).contiguous())

    def end_task(self, task_id: int) -> None:
        pass  # nothing trainable: the memory is final once fitted

    @torch.no_grad()
    def patch_scores(self, feats: Tensor, task_id: int) -> Tensor:
        """(B,h,w,D) -> (B,h,w): mean distance to the k nearest memory patches."""
        memory = self._memory(task_id)
        b, h, w, d = feats.shape
        if d != self.dim:
            raise MoleflowError(f"model 'knn' was built for {self.dim}-dim features, got {d}")
        queries = feats.reshape(-1, d).to(memory.device, memory.dtype)
        out = [torch.cdist(chunk, memory).topk(self.opts.k, dim=1, largest=False).values.mean(1)
               for chunk in queries.split(self.opts.chunk)]
        return torch.cat(out).reshape(b, h, w)

    # --- checkpoints ---
    def task_state(self, task_id: int) -> dict[str, Tensor]:
        return {"memory": self._memory(task_id).detach().clone()}

    def shared_state(self) -> dict[str, Tensor]:
        return {}

    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None:
        self.register_buffer(f"memory_{task_id}", state["memory"].to(torch.float32).contiguous())

    def load_shared_state(self, state: dict[str, Tensor]) -> None:
        pass

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """The finetune/joint checkpoints hold the whole state_dict: create the memory buffers it names
        (their sizes are only known from the checkpoint) before loading."""
        for key, value in state_dict.items():
            if key.startswith("memory_") and key[7:].isdigit():
                self.register_buffer(key, torch.empty_like(value, dtype=torch.float32))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def param_counts(self) -> dict:
        """Nothing is learnt; per task = the stored memory values (what its checkpoint holds)."""
        memories = {int(name[7:]): buf for name, buf in self.named_buffers() if name.startswith("memory_")}
        return {"shared": 0, "per_task": [memories[t].numel() for t in sorted(memories)]}
