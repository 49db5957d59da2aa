"""The optimisation loop every trained model shares (`optimise`: AdamW, cosine schedule, gradient clipping,
NaN guard, optional EMA of the parameters) and `LoopOptions`, the options of that loop a model takes into its
own options class (`class MyOptions(LoopOptions)`), so `--num_epochs`, `--lr`, ... exist exactly for the models
that train through it. A model with no gradient steps (knn) has none of them, and they are refused for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm.auto import tqdm

from moleflow.contract import FitContext, FitResult
from moleflow.errors import MoleflowError
from moleflow.options import option


@dataclass(frozen=True)
class LoopOptions:
    """The shared loop's options, inherited by the options class of a model that trains through `optimise`."""

    num_epochs: int = option(40, "training epochs per task", minimum=1)
    batch_size: int = option(16, "images per optimisation step (all their patches)", minimum=1)
    lr: float = option(2e-4, "AdamW learning rate (cosine schedule per task)", above=0)
    weight_decay: float = option(1e-5, "AdamW weight decay", minimum=0)
    grad_clip: float = option(1.0, "gradient-norm clip (0 = off)", minimum=0)


@dataclass
class FitSettings:
    """One task's loop: the model's loop options with the engine's FitContext (seed, device, progress)."""

    num_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    grad_clip: float
    seed: int
    device: torch.device
    progress: bool = True
    ema_decay: float = 0.0  # > 0: the task ends with an exponential moving average of its parameters' steps

    @classmethod
    def of(cls, loop: Any, context: FitContext, **changes: Any) -> "FitSettings":
        """From options with the LoopOptions fields (or `changes` for those a model does not have)."""
        values = {name: changes.pop(name) if name in changes else getattr(loop, name)
                  for name in ("num_epochs", "batch_size", "lr", "weight_decay", "grad_clip")}
        return cls(**values, seed=context.seed, device=context.device, progress=context.progress, **changes)


def _adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all tensors) where torch has it for these parameters: a flow's training
    step is launch-bound at these sizes, and the per-tensor loop was ~13 % of it (83 tensors, CPU)."""
    fusable = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fusable or None)


def optimise(
    module: torch.nn.Module,
    params: list[torch.nn.Parameter],
    settings: FitSettings,
    *,
    epoch_batches: Callable[[torch.Generator], Iterable[Any]],
    step_loss: Callable[[Any, torch.Generator], tuple[torch.Tensor, int]],
    steps_per_epoch: int,
    label: str,
    hint: str = "try a lower --lr or --grad_clip 1",
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
    cosine: bool = True,
    on_epoch: Callable[[int, float], Any] | None = None,
    loss: Any = None,
) -> FitResult:
    """Per epoch, for each batch of `epoch_batches(generator)`, `step_loss(batch, generator) -> (loss, size)`,
    a NaN guard naming task/epoch/step, backward, gradient clipping, an optimiser step (AdamW unless
    `make_optimizer`) and a per-step cosine schedule over all epochs (unless `cosine=False`); with
    `settings.ema_decay` > 0 the parameters end as the exponential moving average of their steps
    (torch.optim.swa_utils' EMA update). One generator seeded with `settings.seed` drives every random draw.
    `loss`: the task's composed loss (LossOptions.make_loss, fresh per task so a resumed run trains what an
    uninterrupted one does) when it may own parameters (the soft-boundary SVDD radius): they are optimised
    with `params`, and their learnt values end in the result's `loss_state`."""
    result = FitResult()
    if loss is not None:
        params = list(params) + loss.parameters()
    if not params:
        return result
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = (make_optimizer or partial(_adamw, lr=settings.lr, weight_decay=settings.weight_decay))(params)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, settings.num_epochs * steps_per_epoch)) if cosine else None
    foreach = all(p.device.type in ("cpu", "cuda") for p in params) or None
    # the average starts at the initial values; with a decay d it weights the last ~1/(1-d) steps
    ema = [p.detach().clone() for p in params] if settings.ema_decay > 0 else None
    ema_update = get_ema_multi_avg_fn(settings.ema_decay) if ema is not None else None
    start = time.perf_counter()
    module.train()
    bar = tqdm(range(settings.num_epochs), desc=f"train {label}", disable=not settings.progress, leave=False)
    for epoch in bar:
        total, count = 0.0, 0
        for step, batch in enumerate(epoch_batches(generator)):
            value, size = step_loss(batch, generator)
            if not torch.isfinite(value):
                raise MoleflowError(f"{label}: loss became {value.item()} at epoch {epoch + 1}, step {step + 1}; "
                                    f"training stopped ({hint})")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if settings.grad_clip > 0:  # foreach: one norm kernel over all tensors (~20 % of the clip's time, CPU)
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip, foreach=foreach)
            optimizer.step()
            if ema_update is not None:
                with torch.no_grad():
                    ema_update(ema, [p.detach() for p in params], result.steps)
            if scheduler is not None:
                scheduler.step()
            total += value.item() * size
            count += size
            result.steps += 1
        result.epoch_losses.append(total / count)
        bar.set_postfix(loss=f"{result.epoch_losses[-1]:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, result.epoch_losses[-1])
    if ema is not None:
        with torch.no_grad():
            for p, average in zip(params, ema):
                p.copy_(average)
    module.eval()
    result.seconds = time.perf_counter() - start
    if loss is not None:
        result.loss_state = loss.state()
    return result
