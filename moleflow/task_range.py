"""Is an image of any learned task at all? Each task's range, from its own training patches.

A router always answers with *some* task: an unrelated photo, or a product the run never learned, goes to
the nearest prototype and gets that expert's score. This check says when an image is beyond every learned
task's range, so that `predict`, per_image.jsonl and the report can say "no learned task" instead.

Per task it keeps a random sample of the task's training patch features (`memory`, float16) and a `range`:
for an image, the statistic is the QUANTILE (a quarter) of its patches' Euclidean distances to their nearest
memory patch; the task's range is the largest statistic among its own training images, each measured
without the memory patches drawn from that same image (leave one image out, so the range is what a new
normal image of the task reaches, not the zero distance of a patch to itself). An image is of no learned
task when, for every task, statistic / range exceeds `margin`.

Why patches and a low quantile, not the router's pooled distance: an anomalous image of a learned class is
an image of that task, and a large defect moves the pooled feature as far as another product does (measured
on the embedded 1x15 stream with 10 classes learned: a flipped metal_nut sat beyond the nearest unseen class
in every pooled statistic tried; UPDATE_NOTES.md). Here the defect occupies some patches, and the quarter of
the image that matches the task best still matches it as long as the defect covers less than three quarters
of the image; an image of another product has no such quarter. The margin (default 1.35, a run setting) is
the one number chosen by measurement: on that stream the learned classes' test images, normal or anomalous,
reached at most 1.20 times their task's range and the unseen classes' images at least 1.49 (1,000 patches
per task; 2,000 gave 1.23 / 1.48).

Each task's state comes from its own data only and is never touched again (adding task t changes nothing
of an earlier task's), like the router's prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from moleflow.errors import MoleflowError

#: per-class metric: the fraction of a learned class's test images said to be of no learned task (each a false
#: alarm: 0 is right)
NO_TASK_KEY = "no_learned_task_rate"

#: the quantile of an image's nearest-memory patch distances that measures it (see the module docstring)
QUANTILE = 0.25


@dataclass
class RangeCheck:
    """The check's answer for B images, each routed to one task."""
    distance: Tensor  # (B,) the statistic against the routed task's memory
    threshold: Tensor  # (B,) margin x the routed task's range
    no_learned_task: Tensor  # (B,) bool: beyond every task's threshold

    def record(self, i: int) -> dict:
        """Image i's fields, as per_image.jsonl and predictions.jsonl write them."""
        return {"no_learned_task": bool(self.no_learned_task[i]), "task_range_distance": float(self.distance[i]),
                "task_range_threshold": float(self.threshold[i])}


class TaskRange:
    """Per-task patch memories and ranges; `check` says which images are of no learned task."""

    state_keys = ("memory", "range")

    def __init__(self, memory_size: int, margin: float) -> None:
        if memory_size < 1:
            raise MoleflowError(f"task range: memory_size must be >= 1, got {memory_size}")
        self.memory_size, self.margin = int(memory_size), float(margin)
        self._tasks: dict[int, dict[str, Tensor]] = {}

    @property
    def task_ids(self) -> list[int]:
        return sorted(self._tasks)

    def complete(self, num_tasks: int) -> bool:
        """True when every one of the first `num_tasks` tasks has a range (runs from before this check have
        none, and then nothing is said about any image)."""
        return all(t in self._tasks for t in range(num_tasks))

    # --- per-task state -----------------------------------------------------------------------------
    def add_task(self, task_id: int, patch: Tensor, seed: int) -> None:
        """`patch`: the task's training patch features (N, h, w, D); `seed` draws the memory sample."""
        task_id = int(task_id)
        if task_id in self._tasks:
            raise MoleflowError(f"task range already has task {task_id}; a task's range is fixed once added")
        if patch.ndim != 4 or patch.shape[0] < 2:
            raise MoleflowError(f"task range needs (N, h, w, D) patch features of at least 2 training images for "
                                f"task {task_id}, got shape {tuple(patch.shape)}")
        n, h, w, d = patch.shape
        flat = patch.detach().to("cpu", torch.float32).reshape(n * h * w, d)
        pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(int(seed)))[: self.memory_size]
        memory = flat[pick].to(torch.float16)
        owner = pick // (h * w)  # the training image each memory patch came from
        own = torch.arange(n)[:, None] == owner[None, :]  # (N, M): leave each image's own patches out
        statistic = self._statistic(patch, memory, exclude=own)
        self._tasks[task_id] = {"memory": memory.contiguous(), "range": statistic.max().to(torch.float64)}

    def task_state(self, task_id: int) -> dict[str, Tensor]:
        if int(task_id) not in self._tasks:
            raise MoleflowError(f"task range has no task {task_id}; known: {self.task_ids}")
        return {k: v.clone() for k, v in self._tasks[int(task_id)].items()}

    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None:
        if any(k not in state for k in self.state_keys):
            return  # a checkpoint from before this check: the run says nothing about unlearned images
        self._tasks[int(task_id)] = {k: torch.as_tensor(state[k]).cpu().clone() for k in self.state_keys}

    def task_bytes(self, task_id: int) -> int:
        """Bytes one task's state takes (its memory: memory_size x D float16, plus one float64)."""
        return sum(v.numel() * v.element_size() for v in self._tasks[int(task_id)].values())

    # --- decisions ----------------------------------------------------------------------------------
    @staticmethod
    def _statistic(patch: Tensor, memory: Tensor, exclude: Tensor | None = None) -> Tensor:
        """(B,) QUANTILE over each image's patches of the distance to the nearest memory patch."""
        b = patch.shape[0]
        x = patch.detach().to("cpu", torch.float32).reshape(b, -1, patch.shape[-1])
        mem = memory.to(torch.float32)
        out = torch.empty(b)
        for i in range(b):  # one image at a time: (h*w, M) distances stay small
            dist = torch.cdist(x[i], mem)
            if exclude is not None:
                dist[:, exclude[i]] = float("inf")
            out[i] = dist.min(dim=1).values.quantile(QUANTILE)
        return out

    def ratios(self, patch: Tensor, task_id: int) -> Tensor:
        """(B,) statistic / the task's range."""
        state = self._tasks[int(task_id)]
        return self._statistic(patch, state["memory"]).double() / float(state["range"])

    def check(self, patch: Tensor, routed: Tensor, cache: dict[int, Tensor] | None = None) -> RangeCheck:
        """For images `patch` (B, h, w, D) routed to `routed` (B,): their distance and threshold for the routed
        task, and whether they are beyond every task's range. The other tasks are measured only for the images
        beyond the routed one's (the decision is the same, the cost one task for almost every image).
        `cache` (task -> ratios of all B images), when given, is filled and reused: a task's state never
        changes, so the same images are measured against a task once (the evaluator's test sets)."""
        if not self._tasks:
            raise MoleflowError("task range has no tasks yet; add_task before checking images")
        routed = torch.as_tensor(routed).long().flatten().cpu()

        def ratios(rows: Tensor, task: int) -> Tensor:
            if cache is None:
                return self.ratios(patch[rows], task)
            if task not in cache:
                cache[task] = self.ratios(patch, task)
            return cache[task][rows]

        ranges = torch.tensor([float(self._tasks[int(t)]["range"]) for t in routed.tolist()], dtype=torch.float64)
        ratio = torch.empty(len(routed), dtype=torch.float64)
        for t in routed.unique().tolist():
            rows = (routed == t).nonzero().flatten()
            ratio[rows] = ratios(rows, t).double()
        beyond = ratio > self.margin
        for t in self.task_ids:
            rows = (beyond & (routed != t)).nonzero().flatten()
            if len(rows):
                beyond[rows] = ratios(rows, t) > self.margin
        return RangeCheck(distance=ratio * ranges, threshold=self.margin * ranges, no_learned_task=beyond)
