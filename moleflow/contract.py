"""The model contract: every method and hook the trainer, the evaluator, `predict` and checkpoints call on a
model, declared in one place. Built-in models and plugins go through it alike.

Required, on the instance (`ContinualModel`, a runtime-checkable Protocol):

    begin_task(task_id, class_name)        create what task `task_id` owns (its expert, adapter, memory, ...)
    trainable_parameters(task_id) -> list  what the optimiser of that task may update ([] if nothing)
    end_task(task_id)                      freeze what the task owns; its scores never change after this
    patch_scores(inputs, task_id) -> (B,h,w)  anomaly score per patch (or per pixel), higher = more anomalous
    task_state(task_id) / shared_state() -> dict[str, Tensor], load_task_state / load_shared_state
                                           checkpoints by ownership (safetensors in the run folder)
    param_counts() -> {"shared": int, "per_task": [int, ...]}

Optional, on the class (read with their defaults by `model_traits`):

    input_kind = "features" | "images"     what train/test inputs the model gets (default features)
    reads_settings = ALL | (names...)       flow / training-loop settings it reads (inert_settings.py)
    cli_flags = {flag: argparse spec}       its own `moleflow train` flags, spelling --model_opt KEY=VALUE
    from_config(cfg, *, dim, grid, img_size, overrides) -> model   build from the run config (plugins)
    validate_config(cfg, *, img_size)       check its options before any image is read
    default_loss = ("NAME=W", ...)          what --loss means when it is not given (moleflow's own default,
                                           nll=1.0, reads flow outputs); applied in config.resolve_config

Optional, on the instance (`ModelHooks.of(model)`: the method, or a default that does what the trainer does
for a model without it):

    fit_task(task_id, inputs, params, loss_fn, settings, *, label, on_epoch) -> FitResult
                                           its own training procedure (default: continual/fit.py's loop)
    observe_training_features(task_id, inputs)  statistics of the task's training inputs, before training
    observe_trained(task_id, inputs)       statistics of the fitted model, after training, before end_task
    score_maps(inputs, task_id) -> {"score": ..., name: map}  extra named maps besides the score
    describe() -> str                      a line every run prints and keeps in metrics.json
    supports_subgrid -> bool               fit_task may train it on strided patch sub-grids (--token_stride:
                                           forward(inputs, task_id, subgrid=(dy, dx, s)) gets whole grids and
                                           returns the patches [dy::s, dx::s]; the flow: all but SC-LoRA)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol, runtime_checkable

from torch import Tensor

from moleflow.errors import MoleflowError

INPUT_KINDS = ("features", "images")


@runtime_checkable
class ContinualModel(Protocol):
    def begin_task(self, task_id: int, class_name: str = "") -> None: ...
    def trainable_parameters(self, task_id: int) -> list: ...
    def end_task(self, task_id: int) -> None: ...
    def patch_scores(self, inputs: Tensor, task_id: int) -> Tensor: ...
    def task_state(self, task_id: int) -> dict[str, Tensor]: ...
    def shared_state(self) -> dict[str, Tensor]: ...
    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None: ...
    def load_shared_state(self, state: dict[str, Tensor]) -> None: ...
    def param_counts(self) -> dict: ...


@dataclass(frozen=True)
class ModelTraits:
    """The optional class-level declarations of a registered model class, with their defaults."""

    input_kind: str
    cli_flags: dict
    from_config: Callable | None
    validate_config: Callable | None
    default_loss: tuple[str, ...] | None


def model_traits(model_class: Any) -> ModelTraits:
    kind = getattr(model_class, "input_kind", "features")
    if kind not in INPUT_KINDS:
        raise MoleflowError(f"model {getattr(model_class, '__name__', model_class)} declares input_kind={kind!r}; "
                            f"use one of: {', '.join(INPUT_KINDS)}")
    return ModelTraits(
        input_kind=kind,
        cli_flags=dict(getattr(model_class, "cli_flags", None) or {}),
        from_config=getattr(model_class, "from_config", None),
        validate_config=getattr(model_class, "validate_config", None),
        default_loss=tuple(getattr(model_class, "default_loss", None) or ()) or None,
    )


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


def describe(model: Any) -> str:
    """The optional `describe()` hook's line, or "" (on any object: the final report calls it too)."""
    hook = getattr(model, "describe", None)
    return str(hook()) if callable(hook) else ""


@dataclass(frozen=True)
class ModelHooks:
    """A model's optional instance hooks, each its own method or the default."""

    fit_task: Callable
    observe_training_features: Callable
    observe_trained: Callable
    describe: Callable[[], str]
    has_score_maps: bool
    supports_subgrid: bool

    @classmethod
    def of(cls, model: Any) -> "ModelHooks":
        if not isinstance(model, ContinualModel):
            missing = [m for m in ("begin_task", "trainable_parameters", "end_task", "patch_scores", "task_state",
                                   "shared_state", "load_task_state", "load_shared_state", "param_counts")
                       if not callable(getattr(model, m, None))]
            raise MoleflowError(f"model {type(model).__name__} does not implement the model contract (missing: "
                                f"{', '.join(missing)}); see moleflow/contract.py")
        from moleflow.continual.fit import fit_task as generic_fit

        return cls(
            fit_task=getattr(model, "fit_task", None) or partial(generic_fit, model),
            observe_training_features=getattr(model, "observe_training_features", None) or _no_op,
            observe_trained=getattr(model, "observe_trained", None) or _no_op,
            describe=partial(describe, model),
            has_score_maps=callable(getattr(model, "score_maps", None)),
            supports_subgrid=bool(getattr(model, "supports_subgrid", False)),
        )
