"""The optimisation of one task's projection head on its loss (--loss, by default the FIRM term alone), through
moleflow's shared loop (`moleflow.training.optimise`: AdamW, cosine schedule over all steps, gradient clipping,
a NaN guard that names the task, epoch and step).

An epoch is one pass over the task's normal patches in chunks of `--batch_patches`; each step adds as
many outlier patches, drawn without replacement from the outlier pool (all of it when smaller).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from moleflow.contract import FitResult
from moleflow.training import FitSettings, optimise

from moleflow_firm.options import OUTLIER_LABEL, FIRMOptions
from moleflow_firm.patches import PatchPools, make_view

NORMAL_LABEL = 0  # one ID class per task (one-class AD); outliers get OUTLIER_LABEL, FIRMLoss's default

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
               on_epoch: Callable[[int, float], Any] | None = None, loss: Any = None) -> FitResult:
    n = pools.normal.shape[0]

    def epoch_batches(generator: torch.Generator):
        # lazily: each step's outlier draw follows the previous step's view noise in the generator
        for idx in torch.randperm(n, generator=generator).split(opts.batch_patches):
            yield idx, torch.randperm(pools.outlier.shape[0], generator=generator)[: len(idx)]

    def step_loss(batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, int]:
        idx, pick = batch
        outputs = batch_outputs(head, pools.normal[idx.to(pools.normal.device)],
                                pools.outlier[pick.to(pools.outlier.device)], opts, generator)
        return objective(outputs), len(idx)

    return optimise(head, params, settings, epoch_batches=epoch_batches, step_loss=step_loss,
                    steps_per_epoch=math.ceil(n / opts.batch_patches), label=f"{label} (FIRM)",
                    hint="try a lower --lr, a larger --tau or --grad_clip 1", on_epoch=on_epoch, loss=loss)
