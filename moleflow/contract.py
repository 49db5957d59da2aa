"""The model contract: every method and hook the trainer, the evaluator, `predict` and checkpoints call on a
model, declared in one place. Built-in models (MoLE-Flow, knn, discriminator) and plugins go through it alike;
the engine knows a model only through it and never names one of its options.

On the class (read by `model_spec`):

    options_class                          its options: one dataclass of `moleflow.options.option` fields
                                           (help, ranges, choices; `rules` = which option needs which;
                                           optional `validate(context)`): flags, presets, config.json
    from_options(options, context) -> model   build it from its options and the run's `ModelContext`
    input_kind = "features" | "images"     what train/test inputs it gets (default features)
    own_scores = False | True              True: the model defines its anomaly map and image score itself
                                           (e.g. anomalib's models): its maps are final, at image size, and
                                           `score_maps` returns the image score under IMAGE_SCORE (B,); the
                                           engine then neither blurs nor aggregates (--blur_sigma and
                                           --score_aggregation are refused for it)

On the instance (`ContinualModel`, a runtime-checkable Protocol):

    begin_task(task_id, class_name)        create what task `task_id` owns (its expert, adapter, memory, ...)
    trainable_parameters(task_id) -> list  what the optimiser of that task may update ([] if nothing)
    fit_task(task_id, inputs, params, context: FitContext) -> FitResult
                                           its training procedure for one task (epochs, loss, batches: all
                                           its own options; `params` are what the strategy lets it train)
    end_task(task_id)                      freeze what the task owns; its scores never change after this
    patch_scores(inputs, task_id) -> (B,h,w)  anomaly score per patch (or per pixel), higher = more anomalous
    task_state(task_id) / shared_state() -> dict[str, Tensor], load_task_state / load_shared_state
                                           checkpoints by ownership (safetensors in the run folder)
    param_counts() -> {"shared": int, "per_task": [int, ...]}

Optional, on the instance (`ModelHooks.of(model)`: the method, or a no-op):

    observe_training_features(task_id, inputs)  statistics of the task's training inputs, before training
    observe_trained(task_id, inputs)       statistics of the fitted model, after training, before end_task
    score_maps(inputs, task_id) -> {"score": ..., name: map}  extra named maps besides the score
    describe() -> str                      a line every run prints and keeps in metrics.json
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from moleflow.errors import MoleflowError

INPUT_KINDS = ("features", "images")
#: the key of a model's own image score (B,) in `score_maps`' output (own_scores models only)
IMAGE_SCORE = "image_score"


@dataclass(frozen=True)
class ModelContext:
    """What the run around a model decides, handed to its options' checks (before any image is read: `dim` and
    `grid` are None then) and to `from_options` (after the features exist)."""

    img_size: tuple[int, int] = (128, 128)
    #: the strategy trains one model for every task (finetune, joint, replay): nothing is owned per task
    single_model: bool = False
    seed: int = 0
    device: torch.device = torch.device("cpu")
    #: the run's backbone settings (config.BackboneConfig): a model with a network of its own may follow
    #: the run's weights rules (pretrained, a local weights file) for it
    backbone: Any = None
    dim: int | None = None
    grid: tuple[int, int] | None = None
    #: builds the run's frozen feature extractor, for an image model that scores backbone features itself
    build_extractor: Callable[[], Any] | None = field(default=None, compare=False)


@dataclass
class FitContext:
    """What the engine decides about one task's training: the task's seed (every random draw of the fit),
    where to run, whether to show progress, the name used in errors and a per-epoch callback for TensorBoard."""

    seed: int
    device: torch.device
    label: str
    progress: bool = True
    on_epoch: Callable[[int, float], Any] | None = None


@dataclass
class FitResult:
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    #: scalar parameters of the loss after training (e.g. the soft-boundary SVDD radius), logged per task
    loss_state: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class ContinualModel(Protocol):
    def begin_task(self, task_id: int, class_name: str = "") -> None: ...
    def trainable_parameters(self, task_id: int) -> list: ...
    def fit_task(self, task_id: int, inputs: Tensor, params: list, context: FitContext) -> FitResult: ...
    def end_task(self, task_id: int) -> None: ...
    def patch_scores(self, inputs: Tensor, task_id: int) -> Tensor: ...
    def task_state(self, task_id: int) -> dict[str, Tensor]: ...
    def shared_state(self) -> dict[str, Tensor]: ...
    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None: ...
    def load_shared_state(self, state: dict[str, Tensor]) -> None: ...
    def param_counts(self) -> dict: ...


CONTRACT_METHODS = ("begin_task", "trainable_parameters", "fit_task", "end_task", "patch_scores", "task_state",
                    "shared_state", "load_task_state", "load_shared_state", "param_counts")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model class read once: its name, options class, builder and input kind."""

    name: str
    model_class: type
    options_class: type
    input_kind: str
    own_scores: bool = False

    def build(self, options: Any, context: ModelContext) -> Any:
        return self.model_class.from_options(options, context)


def model_spec(name: str, model_class: Any) -> ModelSpec:
    """The class-level declarations of model `name`, checked: one error naming what is missing."""
    label = getattr(model_class, "__name__", model_class)
    kind = getattr(model_class, "input_kind", "features")
    if kind not in INPUT_KINDS:
        raise MoleflowError(f"model '{name}' ({label}) declares input_kind={kind!r}; use one of: "
                            f"{', '.join(INPUT_KINDS)}")
    options_class = getattr(model_class, "options_class", None)
    if options_class is None or not hasattr(options_class, "__dataclass_fields__"):
        raise MoleflowError(f"model '{name}' ({label}) declares no options_class (a dataclass of its options, "
                            "see moleflow/contract.py and moleflow/options.py)")
    if not callable(getattr(model_class, "from_options", None)):
        raise MoleflowError(f"model '{name}' ({label}) has no from_options(options, context) classmethod; see "
                            "moleflow/contract.py")
    own_scores = bool(getattr(model_class, "own_scores", False))
    if own_scores and not callable(getattr(model_class, "score_maps", None)):
        raise MoleflowError(f"model '{name}' ({label}) declares own_scores but has no score_maps(inputs, task_id) "
                            f"returning its map under 'score' and its image score under '{IMAGE_SCORE}'")
    return ModelSpec(name, model_class, options_class, kind, own_scores)


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


def describe(model: Any) -> str:
    """The optional `describe()` hook's line, or "" (on any object: the final report calls it too)."""
    hook = getattr(model, "describe", None)
    return str(hook()) if callable(hook) else ""


@dataclass(frozen=True)
class ModelHooks:
    """A model's optional instance hooks, each its own method or a no-op."""

    observe_training_features: Callable
    observe_trained: Callable
    describe: Callable[[], str]
    has_score_maps: bool

    @classmethod
    def of(cls, model: Any) -> "ModelHooks":
        if not isinstance(model, ContinualModel):
            missing = [m for m in CONTRACT_METHODS if not callable(getattr(model, m, None))]
            raise MoleflowError(f"model {type(model).__name__} does not implement the model contract (missing: "
                                f"{', '.join(missing)}); see moleflow/contract.py")
        return cls(
            observe_training_features=getattr(model, "observe_training_features", None) or _no_op,
            observe_trained=getattr(model, "observe_trained", None) or _no_op,
            describe=partial(describe, model),
            has_score_maps=callable(getattr(model, "score_maps", None)),
        )


def closed_form_fit(fill: Callable[[], Any]) -> FitResult:
    """A fit with no optimisation steps (a memory, statistics): `fill()` timed into a FitResult."""
    start = time.perf_counter()
    fill()
    return FitResult(seconds=time.perf_counter() - start)
