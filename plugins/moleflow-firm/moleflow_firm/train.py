"""The optimisation loop of one task's projection head on FIRM (mirrors moleflow.continual.fit: AdamW,
cosine schedule over all steps, gradient clipping, a NaN guard that names the task, epoch and step).

An epoch is one pass over the task's normal patches in chunks of `batch_patches`; each step adds as
many outlier patches, drawn without replacement from the outlier pool (all of it when smaller).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from moleflow.continual.fit import FitResult, FitSettings
from moleflow.errors import MoleflowError

from moleflow_firm.options import FIRMOptions
from moleflow_firm.patches import PatchPools, make_view

NORMAL_LABEL, OUTLIER_LABEL = 0, -1  # one ID class per task (one-class AD); FIRMLoss's default outlier label

Objective = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def batch_outputs(head: torch.nn.Module, normal: torch.Tensor, outlier: torch.Tensor, opts: FIRMOptions,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The loss inputs of one step: two views of standardised normal + outlier patches, their labels."""
    x = head.standardize(torch.cat([normal, outlier]))
    labels = torch.cat([torch.full((len(normal),), NORMAL_LABEL), torch.full((len(outlier),), OUTLIER_LABEL)])
    z1, z2 = (head.project(make_view(x, opts.view_noise, opts.view_dropout, generator)) for _ in range(2))
    return {"z1": z1, "z2": z2, "labels": labels.to(x.device)}


def train_head(head: torch.nn.Module, pools: PatchPools, params: list[torch.nn.Parameter], objective: Objective,
               settings: FitSettings, opts: FIRMOptions, *, label: str,
               on_epoch: Callable[[int, float], Any] | None = None) -> FitResult:
    result = FitResult()
    if not params:
        return result
    n = pools.normal.shape[0]
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(n / opts.batch_patches)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, settings.num_epochs * steps_per_epoch))
    start = time.perf_counter()
    head.train()
    bar = tqdm(range(settings.num_epochs), desc=f"train {label}", disable=not settings.progress, leave=False)
    for epoch in bar:
        total, count = 0.0, 0
        for step, idx in enumerate(torch.randperm(n, generator=generator).split(opts.batch_patches)):
            pick = torch.randperm(pools.outlier.shape[0], generator=generator)[: len(idx)]
            outputs = batch_outputs(head, pools.normal[idx.to(pools.normal.device)],
                                    pools.outlier[pick.to(pools.outlier.device)], opts, generator)
            loss = objective(outputs)
            if not torch.isfinite(loss):
                raise MoleflowError(f"{label}: FIRM loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                    "training stopped (try a lower --lr, a larger --model_opt tau or --grad_clip 1)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            count += len(idx)
            result.steps += 1
        result.epoch_losses.append(total / count)
        bar.set_postfix(loss=f"{result.epoch_losses[-1]:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, result.epoch_losses[-1])
    head.eval()
    result.seconds = time.perf_counter() - start
    return result
