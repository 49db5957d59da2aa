"""The optimisation loop of one task: AdamW, cosine schedule, gradient clipping, NaN guard (`optimise`,
shared with plugins that bring their own batches), and `fit_task`, the flow's use of it.

Training touches only cached backbone features: every epoch is flow work, nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from moleflow.errors import MoleflowError


@dataclass
class FitSettings:
    num_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    grad_clip: float
    seed: int
    device: torch.device
    progress: bool = True
    token_stride: int = 1  # fit_task: each step sees the patches [dy::s, dx::s] of its images, random (dy, dx)
    ema_decay: float = 0.0  # > 0: the task ends with an exponential moving average of its parameters' steps


@dataclass
class FitResult:
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def _adamw(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel for all tensors) where torch has it for these parameters: a flow's training
    step is launch-bound at these sizes, and the per-tensor loop was ~13 % of it (83 tensors, CPU)."""
    fusable = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fusable or None)


def check_ema_decay(decay: float) -> None:
    """The one range check of --ema_decay (run by check_components before any image is read, and by optimise)."""
    if not 0.0 <= decay < 1.0:
        raise MoleflowError(f"--ema_decay must be in [0, 1) (0 = off), got {decay}")


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
) -> FitResult:
    """The loop every trainer shares (the core flow, and plugins with their own batches): per epoch, for
    each batch of `epoch_batches(generator)`, `step_loss(batch, generator) -> (loss, size)`, a NaN guard
    naming task/epoch/step, backward, gradient clipping, an optimiser step (AdamW unless
    `make_optimizer`) and a per-step cosine schedule over all epochs (unless `cosine=False`).
    One generator seeded with `settings.seed` drives every random draw, in call order."""
    result = FitResult()
    if not params:
        return result
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = (make_optimizer or partial(_adamw, lr=settings.lr, weight_decay=settings.weight_decay))(params)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, settings.num_epochs * steps_per_epoch)) if cosine else None
    check_ema_decay(settings.ema_decay)
    foreach = all(p.device.type in ("cpu", "cuda") for p in params) or None
    # the average starts at the initial values; with a decay d it weights the last ~1/(1-d) steps
    ema = [p.detach().clone() for p in params] if settings.ema_decay > 0 else None
    start = time.perf_counter()
    module.train()
    bar = tqdm(range(settings.num_epochs), desc=f"train {label}", disable=not settings.progress, leave=False)
    for epoch in bar:
        total, count = 0.0, 0
        for step, batch in enumerate(epoch_batches(generator)):
            loss, size = step_loss(batch, generator)
            if not torch.isfinite(loss):
                raise MoleflowError(f"{label}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                    f"training stopped ({hint})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:  # foreach: one norm kernel over all tensors (~20 % of the clip's time, CPU)
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip, foreach=foreach)
            optimizer.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - settings.ema_decay)
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * size
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
    return result


def fit_task(
    model: torch.nn.Module,
    model_task: int,
    feats: torch.Tensor,
    params: list[torch.nn.Parameter],
    loss_fn: Callable[[dict], tuple[torch.Tensor, dict]],
    settings: FitSettings,
    *,
    label: str,
    on_epoch: Callable[[int, float], Any] | None = None,
) -> FitResult:
    """Train `params` on `feats` (N,h,w,D) for the given model task. `label` names the task in errors."""
    n = feats.shape[0]
    if params and n == 0:
        raise MoleflowError(f"{label}: no training images")

    stride = settings.token_stride
    if stride < 1:
        raise MoleflowError(f"--token_stride must be >= 1 (1 = every patch), got {stride}")
    if stride > 1 and not getattr(model, "supports_subgrid", False):
        raise MoleflowError(f"--token_stride {stride}: model {type(model).__name__} cannot train on a sub-grid of "
                            "patches; use --token_stride 1")

    def step_loss(idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        batch = feats[idx].to(settings.device, non_blocking=True)
        if stride == 1:
            return loss_fn(model(batch, model_task))[0], len(idx)
        # neighbouring patches of 3x3-aggregated features are near copies: a strided sub-grid at a random
        # offset keeps the positions' variety at 1/s^2 of the flow's cost per step
        dy, dx = (int(v) for v in torch.randint(stride, (2,), generator=generator))
        return loss_fn(model(batch, model_task, subgrid=(dy, dx, stride)))[0], len(idx)

    return optimise(model, params, settings, epoch_batches=lambda g: torch.randperm(n, generator=g).split(settings.batch_size),
                    step_loss=step_loss, steps_per_epoch=math.ceil(n / settings.batch_size), label=label,
                    hint="try a lower --lr, a smaller --clamp or --grad_clip 1", on_epoch=on_epoch)
