"""The `ae` model: one reconstruction autoencoder per task, trained to repair synthetic defects.

Continual contract: every task gets its own network (and its own score normalisers), trained only in
that task's round and frozen at end_task, so nothing used to score an earlier task ever changes (zero
forgetting by construction; the price is one AE of parameters per task, nothing shared).

Options (AEOptions, moleflow_ae/options.py: `moleflow train --model ae --help`): the loop's --num_epochs,
--batch_size, --lr, --grad_clip, --loss (default mse=1), and --arch, --channels, --width, --depth, --latent,
--synthetic, --anomaly_prob, --foreground, --rotate, --scale, --score.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn

from moleflow.contract import FitContext, FitResult, ModelContext
from moleflow.errors import MoleflowError
from moleflow.options import build_options
from moleflow.training import FitSettings, optimise

from moleflow_ae.corruption import TrainingCorruption
from moleflow_ae.networks import ReconstructionNet, build_network, count_parameters
from moleflow_ae.options import AEOptions
from moleflow_ae.scoring import combine, score_maps, training_means


class TaskAE(nn.Module):
    """What one task owns: its network and the training-set means used by score=both."""

    def __init__(self, net: ReconstructionNet) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("score_means", torch.ones(2))


class ReconstructionAE(nn.Module):
    input_kind = "images"
    #: every option it reads, the loop's (--num_epochs, --batch_size, --lr, --grad_clip) and --loss included:
    #: `moleflow train --model ae --help` lists them; any other flow/loop flag is not an option of this model
    options_class = AEOptions

    def __init__(self, options: AEOptions | None = None, **changes: Any) -> None:
        """`ReconstructionAE()`, `ReconstructionAE(options)`, `ReconstructionAE(width=4, score="both")`:
        `changes` replace fields of `options` (default AEOptions()), checked like a flag (names, types,
        ranges, choices)."""
        super().__init__()
        base = dataclasses.asdict(options or AEOptions())
        self.opts = build_options(AEOptions, {**base, **changes}, "model 'ae'")
        self.tasks = nn.ModuleDict()
        # follows model.to(device), so networks created later in begin_task land on the run's device
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @classmethod
    def from_options(cls, options: AEOptions, context: ModelContext) -> ReconstructionAE:
        return cls(options)

    # --- helpers -----------------------------------------------------------------------------------
    def to_model_channels(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) -> (N,channels,H,W); grey = the mean of the channels."""
        if images.ndim != 4:
            raise MoleflowError(f"model 'ae' expects images (N,C,H,W), got shape {tuple(images.shape)}")
        if self.opts.channels == 1:
            return images.mean(1, keepdim=True)
        if images.shape[1] != self.opts.channels:
            raise MoleflowError(f"model 'ae' has channels={self.opts.channels} but got {images.shape[1]}-channel "
                                "images; use --channels 1 for grey input")
        return images

    def _task(self, task_id: int) -> TaskAE:
        key = str(task_id)
        if key not in self.tasks:
            raise MoleflowError(f"model 'ae' has no network for task {task_id} (known: {', '.join(self.tasks) or 'none'});"
                                " train that task first or load its checkpoint")
        return self.tasks[key]

    # --- the continual contract --------------------------------------------------------------------
    def begin_task(self, task_id: int, class_name: str = "") -> None:
        if str(task_id) not in self.tasks:
            o = self.opts
            net = build_network(o.arch, o.channels, o.width, o.depth, o.latent)
            self.tasks[str(task_id)] = TaskAE(net).to(self._anchor.device)

    def trainable_parameters(self, task_id: int) -> list:
        return list(self._task(task_id).net.parameters())

    def end_task(self, task_id: int) -> None:
        task = self._task(task_id)
        task.eval()
        for p in task.parameters():
            p.requires_grad_(False)

    def fit_task(self, task_id: int, inputs: torch.Tensor, params: list, context: FitContext) -> FitResult:
        """Adam at a constant --lr (no weight decay, no schedule, as in the reference AE training) on --loss
        over (reconstruction of the corrupted image, clean target); then the task's score means."""
        if not params:
            return FitResult()
        if inputs.shape[0] == 0:
            raise MoleflowError(f"{context.label}: no training images")
        settings = FitSettings.of(self.opts, context, weight_decay=0.0)
        loss_fn = self.opts.make_loss("ae").to(context.device)  # fresh per task: see moleflow.training.optimise
        task = self._task(task_id)
        images = self.to_model_channels(inputs).cpu()
        corruption = TrainingCorruption(self.opts, settings.seed)
        for p in params:
            p.requires_grad_(True)

        def step_loss(idx: torch.Tensor, _generator: torch.Generator) -> tuple[torch.Tensor, int]:
            corrupted, clean, masks = (t.to(settings.device) for t in corruption(images[idx]))
            outputs = {"reconstruction": task.net(corrupted), "target": clean}
            value, _ = loss_fn(outputs, {"input": corrupted, "target": clean, "anomaly_mask": masks})
            return value, len(idx)

        start = time.perf_counter()
        result = optimise(task, params, settings, step_loss=step_loss,
                          steps_per_epoch=math.ceil(len(images) / settings.batch_size), label=context.label,
                          epoch_batches=lambda g: torch.randperm(len(images), generator=g).split(settings.batch_size),
                          make_optimizer=lambda ps: torch.optim.Adam(ps, lr=settings.lr), cosine=False,
                          on_epoch=context.on_epoch, loss=loss_fn)
        task.score_means.copy_(training_means(task.net, images, settings.device, settings.batch_size))
        result.seconds = time.perf_counter() - start
        return result

    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor, task_id: int) -> torch.Tensor:
        task = self._task(task_id)
        device = task.score_means.device
        recon_map, latent_map = score_maps(task.net, self.to_model_channels(images).to(device))
        return combine(recon_map, latent_map, self.opts.score, task.score_means).to(images.device)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, task_id: int) -> torch.Tensor:
        """The task's reconstruction of (N,3,H,W) images, in the model's channel count (for inspection)."""
        task = self._task(task_id)
        return task.net(self.to_model_channels(images).to(task.score_means.device))

    # --- state -------------------------------------------------------------------------------------
    def task_state(self, task_id: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self._task(task_id).state_dict().items()}

    def shared_state(self) -> dict:
        return {}

    def load_task_state(self, task_id: int, state: dict) -> None:
        self.begin_task(task_id)
        self._task(task_id).load_state_dict(state)

    def load_shared_state(self, state: dict) -> None:
        pass

    def param_counts(self) -> dict:
        tasks = sorted(int(k) for k in self.tasks)
        return {"shared": 0, "per_task": [count_parameters(self.tasks[str(t)].net) for t in tasks]}
