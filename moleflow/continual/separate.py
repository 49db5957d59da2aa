"""`--strategy separate`: a fresh model per task, nothing shared. The no-sharing ceiling that a zero-forgetting
method is measured against: every task gets the whole model (for MoLE-Flow: its own base flow, expert and
adapter, i.e. what task 0 gets under the moleflow strategy), so the gap between this and the shared model is
what sharing costs. Memory and parameters grow by one whole model per task.

`SeparateModels` is itself a model of the contract (contract.py), built around any registered model: task t is
task 0 of its own model. Task 0's model is the one the run built (so task 0 is bitwise the moleflow strategy's
task 0); a later task's model is built when the task begins, by `build(t)` (the run seeds it from the task).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from moleflow.contract import FitContext, FitResult, ModelHooks, describe
from moleflow.errors import MoleflowError

_TASK, _SHARED = "task.", "shared."  # a task's checkpoint holds its model's task part and its shared part


class SeparateModels(nn.Module):
    """One independent model per task, each used as its own task 0 (see the module docstring)."""

    def __init__(self, first: nn.Module, build: Callable[[int], nn.Module]):
        super().__init__()
        self.models = nn.ModuleList()
        # in a list, not an attribute: a module attribute would register task 0's model twice in state_dict
        self._first, self._build = [first], build

    def _model(self, task_id: int) -> nn.Module:
        if not 0 <= task_id < len(self.models):
            raise MoleflowError(f"task {task_id} has not begun (tasks begun: {len(self.models)})")
        return self.models[task_id]

    def begin_task(self, task_id: int, class_name: str = "") -> None:
        if task_id != len(self.models):
            raise MoleflowError(f"begin_task({task_id}) out of order: next expected is {len(self.models)}")
        model = self._first[0] if task_id == 0 else self._build(task_id)
        model.begin_task(0, class_name)
        self.models.append(model)

    def trainable_parameters(self, task_id: int) -> list[nn.Parameter]:
        return self._model(task_id).trainable_parameters(0)

    def fit_task(self, task_id: int, inputs: Tensor, params: list, context: FitContext) -> FitResult:
        return self._model(task_id).fit_task(0, inputs, params, context)

    def observe_training_features(self, task_id: int, inputs: Tensor) -> None:
        ModelHooks.of(self._model(task_id)).observe_training_features(0, inputs)

    def observe_trained(self, task_id: int, inputs: Tensor) -> None:
        ModelHooks.of(self._model(task_id)).observe_trained(0, inputs)

    def end_task(self, task_id: int) -> None:
        self._model(task_id).end_task(0)

    @torch.no_grad()
    def patch_scores(self, inputs: Tensor, task_id: int) -> Tensor:
        return self._model(task_id).patch_scores(inputs, 0)

    def task_state(self, task_id: int) -> dict[str, Tensor]:
        model = self._model(task_id)
        return {**{_TASK + k: v for k, v in model.task_state(0).items()},
                **{_SHARED + k: v for k, v in model.shared_state().items()}}

    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None:
        model = self._model(task_id)
        model.load_task_state(0, {k[len(_TASK):]: v for k, v in state.items() if k.startswith(_TASK)})
        model.load_shared_state({k[len(_SHARED):]: v for k, v in state.items() if k.startswith(_SHARED)})

    def shared_state(self) -> dict[str, Tensor]:
        return {}  # nothing is shared: each task's checkpoint holds its whole model

    def load_shared_state(self, state: dict[str, Tensor]) -> None:
        if state:
            raise MoleflowError(f"--strategy separate shares nothing, but a shared checkpoint of {len(state)} "
                                "tensors was given; it comes from a run with another strategy")

    def param_counts(self) -> dict:
        """No shared parameters; each task adds a whole model (its shared and its own parameters)."""
        per_task = []
        for model in self.models:
            counts = model.param_counts()
            per_task.append(counts["shared"] + counts["per_task"][0])
        return {"shared": 0, "per_task": per_task}

    def describe(self) -> str:
        inner = describe(self._first[0])
        return f"one independent model per task{': ' + inner if inner else ''}"


class SeparateModelsWithMaps(SeparateModels):
    """SeparateModels around a model with the optional `score_maps` hook (extra named maps)."""

    @torch.no_grad()
    def score_maps(self, inputs: Tensor, task_id: int) -> dict[str, Tensor]:
        return self._model(task_id).score_maps(inputs, 0)


def separate_models(first: Any, build: Callable[[int], Any]) -> SeparateModels:
    """The wrapper for `first`'s kind of model (with `score_maps` exactly when the model has it)."""
    cls = SeparateModelsWithMaps if ModelHooks.of(first).has_score_maps else SeparateModels
    return cls(first, build)
