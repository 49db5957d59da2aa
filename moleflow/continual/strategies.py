"""Continual strategies: thin wrappers around the model contract (begin/trainable/forward/end/state).
Registered in the `moleflow.strategies` entry-point group (built-ins through moleflow's setup.cfg), so a
plugin can add one: a `Strategy` subclass, constructed as `cls(model, num_tasks)`.

- moleflow: each task trains only what it owns (task 0: base + its expert/adapter), then freezes it.
- finetune: one model (a plain flow), trained task after task, nothing frozen: the forgetting lower bound.
- joint:    one plain flow trained once on all tasks' data together: the upper bound (no sequence, so
            no accuracy-matrix diagonal, BWT or FM).
- replay:   one plain flow trained task after task on the new task plus a bounded, seeded memory of
            earlier tasks' training inputs (`--replay_per_task` images each): the classic baseline
            between finetune and joint.
- separate: a fresh model per task, nothing shared (continual/separate.py): the no-sharing ceiling a
            zero-forgetting method is measured against; it grows by one whole model per task.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from moleflow import registry
from moleflow.continual.separate import separate_models
from moleflow.errors import MoleflowError


class Strategy:
    name = "base"
    #: True when the strategy trains one model for every task (nothing owned per task): the model learns it
    #: from ModelContext.single_model (the flow then builds no experts and no adapters, and refuses their options)
    single_model = False
    #: True when a task's scoring parameters never change after its end_task (enables score caching)
    frozen_after_task = False
    #: the strategy's own settings (config.TrainConfig); requesting one under another strategy is refused
    reads_settings: tuple[str, ...] = ()

    def __init__(self, model: Any, num_tasks: int):
        self.model = model
        self.num_tasks = num_tasks

    @classmethod
    def model_for_run(cls, model: Any, build: Callable[[int], Any]) -> Any:
        """The model the run trains, given the one it built (`build(t)` builds another, seeded from task t):
        by default that one."""
        return model

    @classmethod
    def from_config(cls, model: Any, num_tasks: int, cfg: Any) -> "Strategy":
        """Built by the trainer; a strategy with settings of its own reads them here."""
        return cls(model, num_tasks)

    def model_task(self, task_id: int) -> int:
        """The model-side task id used to train and score task `task_id`."""
        return task_id

    def begin_task(self, task_id: int, class_name: str) -> None:
        self.model.begin_task(task_id, class_name)

    def trainable(self, task_id: int) -> list[torch.nn.Parameter]:
        return self.model.trainable_parameters(task_id)

    def end_task(self, task_id: int) -> None:
        self.model.end_task(task_id)

    def training_indices(self, task_id: int) -> list[int] | None:
        """Which tasks' training data the round for `task_id` uses (None = no training this round)."""
        return [task_id]

    def training_inputs(self, task_id: int, tasks: list[Any]) -> torch.Tensor | None:
        """What the round for `task_id` trains on (None = no training this round): by default every
        training input of the tasks `training_indices` names."""
        rounds = self.training_indices(task_id)
        return None if rounds is None else torch.cat([tasks[i].train_inputs for i in rounds])

    def evaluates_after(self, task_id: int) -> bool:
        return True

    def shared_changes(self, task_id: int) -> bool:
        """Whether training task `task_id` can change the shared (non-task-owned) state."""
        return task_id == 0


class MoLEFlowStrategy(Strategy):
    name = "moleflow"
    frozen_after_task = True


class SeparateStrategy(MoLEFlowStrategy):
    """A fresh model per task (task t is task 0 of its own model); nothing shared, nothing forgotten."""

    name = "separate"

    @classmethod
    def model_for_run(cls, model: Any, build: Callable[[int], Any]) -> Any:
        return separate_models(model, build)

    def shared_changes(self, task_id: int) -> bool:
        return False  # each task's checkpoint holds its whole model


class _SingleFlow(Strategy):
    """One model (for the flow: a plain flow, no experts, no adapters) used for every task."""

    single_model = True

    def model_task(self, task_id: int) -> int:
        return 0

    def begin_task(self, task_id: int, class_name: str) -> None:
        if task_id == 0:
            self.model.begin_task(0, class_name)

    def trainable(self, task_id: int) -> list[torch.nn.Parameter]:
        params = self.model.trainable_parameters(0)
        for p in params:
            p.requires_grad_(True)
        return params

    def end_task(self, task_id: int) -> None:
        pass  # nothing is frozen: that is the point of the baseline


class FinetuneStrategy(_SingleFlow):
    name = "finetune"

    def shared_changes(self, task_id: int) -> bool:
        return True


class JointStrategy(_SingleFlow):
    name = "joint"

    def training_indices(self, task_id: int) -> list[int] | None:
        return list(range(self.num_tasks)) if task_id == self.num_tasks - 1 else None

    def evaluates_after(self, task_id: int) -> bool:
        return task_id == self.num_tasks - 1

    def shared_changes(self, task_id: int) -> bool:
        return task_id == self.num_tasks - 1


class ReplayStrategy(_SingleFlow):
    """Finetune plus rehearsal: task t trains on its own data and on a memory of `replay_per_task` training
    inputs of every earlier task. Each task's memory is drawn once, by a generator seeded from the run seed
    and the task, so it is the same in every round and in a resumed run; memory grows linearly with T."""

    name = "replay"
    reads_settings = ("replay_per_task",)

    def __init__(self, model: Any, num_tasks: int, per_task: int = 20, seed: int = 0):
        super().__init__(model, num_tasks)
        if per_task < 1:
            raise MoleflowError(f"--replay_per_task {per_task}: must be >= 1")
        self.per_task, self.seed = per_task, seed

    @classmethod
    def from_config(cls, model: Any, num_tasks: int, cfg: Any) -> "ReplayStrategy":
        return cls(model, num_tasks, cfg.train.replay_per_task, cfg.train.seed)

    def shared_changes(self, task_id: int) -> bool:
        return True

    def memory_rows(self, task_id: int, n_inputs: int) -> torch.Tensor:
        """The rows of task `task_id`'s training inputs kept in memory (sorted; all when there are fewer)."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + task_id)
        return torch.randperm(n_inputs, generator=generator)[: self.per_task].sort().values

    def training_inputs(self, task_id: int, tasks: list[Any]) -> torch.Tensor:
        memory = [tasks[k].train_inputs[self.memory_rows(k, len(tasks[k].train_inputs))] for k in range(task_id)]
        return torch.cat([tasks[task_id].train_inputs, *memory])


def strategy_class(name: str) -> type[Strategy]:
    """The strategy registered as `name` in moleflow.strategies (unknown names list the known ones)."""
    cls = registry.get("strategies", name)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise MoleflowError(f"strategy '{name}' is registered but is not a Strategy subclass ({cls!r})")
    return cls
