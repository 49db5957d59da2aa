"""`knn`: per task, a memory of training patch features; a patch's score is its mean Euclidean distance
to the k nearest memory entries (PatchCore's scoring, with a seeded random subsample instead of the
greedy coreset). A reference for what the frozen features allow, through the same task loop, router,
metrics and compare tables as the flow.

Continual contract: each task owns its memory (saved as its checkpoint), nothing is shared, nothing is
trained by gradients, so forgetting is zero by construction under the moleflow strategy. Under
finetune/joint every round replaces the one memory (model task 0), as those baselines intend.

Options (`--model_opt KEY=VALUE`): k (neighbours, default 1), memory (most patches kept per task,
default 20000; 0 = all), chunk (query rows per distance block, default 2048; memory only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from moleflow.config import check_option_names
from moleflow.errors import MoleflowError


@dataclass(frozen=True)
class KNNOptions:
    k: int = 1
    memory: int = 20000
    chunk: int = 2048

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> KNNOptions:
        check_option_names(raw, cls, "knn")
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise MoleflowError(f"--model_opt {key}={value!r}: expected a whole number")
        opts = cls(**raw)
        if opts.k < 1 or opts.chunk < 1 or opts.memory < 0:
            raise MoleflowError(f"--model_opt k={opts.k} memory={opts.memory} chunk={opts.chunk}: k and chunk must "
                                "be >= 1, memory >= 0 (0 keeps every training patch)")
        return opts


class PatchKNN(nn.Module):
    input_kind = "features"
    #: no flow and no training loop: every flow/loop flag (--lr, --num_epochs, --lora_rank, ...) is refused
    reads_settings: tuple[str, ...] = ()

    def __init__(self, dim: int, options: KNNOptions | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.opts = options or KNNOptions()

    @classmethod
    def validate_config(cls, cfg: Any, *, img_size: tuple[int, int]) -> None:
        from moleflow.config import parse_options

        KNNOptions.parse(parse_options(cfg.flow.model_opt))

    @classmethod
    def from_config(cls, cfg: Any, *, dim: int, grid: tuple[int, int], img_size: tuple[int, int],
                    overrides: dict) -> PatchKNN:
        from moleflow.config import parse_options

        return cls(dim, KNNOptions.parse(parse_options(cfg.flow.model_opt)))

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

    def fit_task(self, task_id: int, inputs: Tensor, params: list, loss_fn: Any, settings: Any, *, label: str,
                 on_epoch: Any = None) -> Any:
        """Fill the task's memory with its training patches (seeded subsample above `memory`); no epochs."""
        from moleflow.continual.fit import FitResult

        start = time.perf_counter()
        rows = inputs.reshape(-1, self.dim)
        if rows.shape[0] == 0:
            raise MoleflowError(f"{label}: no training images")
        if self.opts.memory and rows.shape[0] > self.opts.memory:
            pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(settings.seed))
            rows = rows[pick[: self.opts.memory]]
        if rows.shape[0] < self.opts.k:
            raise MoleflowError(f"--model_opt k={self.opts.k} but {label} has only {rows.shape[0]} training patches")
        self.register_buffer(f"memory_{task_id}", rows.to(settings.device, torch.float32).contiguous())
        return FitResult(seconds=time.perf_counter() - start)

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
