"""The flow's training of one task: minibatches of whole images' patch features, the loss its options compose
(--loss with the v5/v7 switches), the shared optimisation loop (training.optimise) and, with --token_stride s,
each step on a strided patch sub-grid at a random offset.

Training touches only cached backbone features: every epoch is flow work, nothing else.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moleflow.contract import FitContext, FitResult
from moleflow.errors import MoleflowError
from moleflow.training import FitSettings, optimise


def fit_flow_task(model: Any, model_task: int, feats: torch.Tensor, params: list[torch.nn.Parameter],
                  context: FitContext) -> FitResult:
    """Train `params` (the strategy's; the loss's own are added by `optimise`) on `feats` (N,h,w,D) for the
    given model task."""
    options = model.options
    n = feats.shape[0]
    if params and n == 0:
        raise MoleflowError(f"{context.label}: no training images")
    loss_fn = options.make_loss("moleflow").to(context.device)
    stride = options.token_stride
    settings = FitSettings.of(options, context, ema_decay=options.ema_decay)

    def step_loss(idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        batch = feats[idx].to(settings.device, non_blocking=True)
        if stride == 1:
            return loss_fn(model(batch, model_task))[0], len(idx)
        # neighbouring patches of 3x3-aggregated features are near copies: a strided sub-grid at a random
        # offset keeps the positions' variety at 1/s^2 of the flow's cost per step
        dy, dx = (int(v) for v in torch.randint(stride, (2,), generator=generator))
        return loss_fn(model(batch, model_task, subgrid=(dy, dx, stride)))[0], len(idx)

    return optimise(model, params, settings, step_loss=step_loss, steps_per_epoch=math.ceil(n / settings.batch_size),
                    epoch_batches=lambda g: torch.randperm(n, generator=g).split(settings.batch_size),
                    label=context.label, hint="try a lower --lr, a smaller --clamp or --grad_clip 1",
                    on_epoch=context.on_epoch, loss=loss_fn)
