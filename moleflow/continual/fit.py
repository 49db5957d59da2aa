"""The optimisation loop of one task: AdamW, cosine schedule, gradient clipping, NaN guard.

Training touches only cached backbone features: every epoch is flow work, nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


@dataclass
class FitResult:
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


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
    import time

    result = FitResult()
    if not params:
        return result
    n = feats.shape[0]
    if n == 0:
        raise MoleflowError(f"{label}: no training images")
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, settings.num_epochs * steps_per_epoch))
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(settings.num_epochs), desc=f"train {label}", disable=not settings.progress, leave=False)
    for epoch in bar:
        total, count = 0.0, 0
        for step, idx in enumerate(torch.randperm(n, generator=generator).split(settings.batch_size)):
            batch = feats[idx].to(settings.device, non_blocking=True)
            outputs = model(batch, model_task)
            loss, _ = loss_fn(outputs)
            if not torch.isfinite(loss):
                raise MoleflowError(
                    f"{label}: loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    "training stopped (try a lower --lr, a smaller --clamp or --grad_clip 1)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            count += len(idx)
            result.steps += 1
        epoch_loss = total / count
        result.epoch_losses.append(epoch_loss)
        bar.set_postfix(loss=f"{epoch_loss:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
