"""`discriminator`: a patch classifier trained on synthetic anomalies made in feature space (SimpleNet's idea:
Liu et al., CVPR 2023), with a gated mixture of discriminator experts. It is the model whose outputs the
supervised and structural losses of the catalogue read, so each of them trains something real:

    a = A x + b                               adaptor on the standardised features x (D -> D, starts at I)
    a' = a + m * eps,  eps ~ N(0, noise^2)    synthetic anomaly: noise on random rectangles m of the patch grid
    p_b = softmax(cos(mean_hw a'_b, keys) / temperature)        the image's gate over K experts
    logit_bij = sum_k p_bk * mlp_k(a'_bij)                      per-patch anomaly logit

| loss (`--loss NAME=W`) | reads                 | what it trains here                                         |
|------------------------|-----------------------|-------------------------------------------------------------|
| `bce`                  | `logits`, targets = m | each patch: noised (1) or not (0)                           |
| `iou`                  | `anomaly_map`, m      | the noised region as a whole (soft IoU of sigmoid(logits))  |
| `orthogonality`        | `weight` = A          | keeps A near-orthogonal (see below)                         |
| `selector_entropy`     | `selector_probs` = p  | keeps the gate from committing to one expert too early      |
| `selector_diversity`   | `selector_probs`      | different images of the task use different experts          |
| `distinctness`         | `prototypes` = keys   | the experts' gate keys point in different directions        |

Why orthogonality: an adaptor that shrinks the features makes the fixed noise trivially separable while the
normal test features collapse onto each other (SimpleNet's failure mode); a near-orthogonal A keeps distances.

Default loss (its option `loss`, when `--loss` is not given): bce=1 + iou=1. Scoring: the patch logit on
clean features, no noise. Continual contract: each task owns its adaptor, keys and experts (nothing shared),
frozen at end_task, so forgetting is zero by construction; the router picks the task at test time.

Options (DiscriminatorOptions: `moleflow train --model discriminator --help`): the shared loop's (--num_epochs,
--lr, ...), --loss, and --experts K, --hidden, --noise, --regions, --anomalous_fraction, --temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.contract import FitContext, FitResult, ModelContext
from moleflow.errors import MoleflowError
from moleflow.losses.compose import LossOptions, parse_loss_terms
from moleflow.options import Rule, option
from moleflow.training import FitSettings, LoopOptions, optimise

#: losses whose value is constant when the gate has a single expert (K = 1): refused there, not ignored
GATE_LOSSES = ("selector_entropy", "selector_diversity", "distinctness")


@dataclass(frozen=True)
class DiscriminatorOptions(LoopOptions, LossOptions):
    # the loop it was measured with (README: discriminator-seeds, then run under v9's loop settings)
    num_epochs: int = option(30, "training epochs per task", minimum=1)
    batch_size: int = option(2, "images per optimisation step (all their patches)", minimum=1)
    lr: float = option(2e-3, "AdamW learning rate (cosine schedule per task)", above=0)
    loss: list = option(["bce=1.0", "iou=1.0"], "loss terms NAME=WEIGHT (registered in moleflow.losses) over the "
                        "discriminator's outputs (logits, anomaly_map, selector_probs, prototypes, weight)",
                        nargs="+", action="extend")
    experts: int = option(4, "K, gated discriminator experts per task", minimum=1)
    hidden: int = option(128, "width of each expert's MLP", minimum=1)
    noise: float = option(1.0, "std of the synthetic feature noise, in units of the training features' "
                               "per-channel std", above=0)
    regions: int = option(2, "most noised rectangles per training image", minimum=1)
    anomalous_fraction: float = option(0.5, "share of training images that get a noised region", above=0, maximum=1)
    temperature: float = option(0.1, "softmax temperature of the gate over the experts", above=0)

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("temperature",), lambda o, c: o.experts > 1,
             "--experts >= 2 (with one expert the gate is constant and its temperature changes nothing)"),
    )

    def validate(self, context: Any) -> None:
        super().validate(context)
        gate_terms = [n for n, _ in parse_loss_terms(list(self.loss)) if n in GATE_LOSSES]
        if self.experts == 1 and gate_terms:
            raise MoleflowError(f"--loss {gate_terms[0]}: with one expert (--experts 1) the gate is "
                                "constant and this loss changes nothing; use --experts >= 2 or drop it")


class TaskDiscriminator(nn.Module):
    """What one task owns: input statistics, the adaptor, the gate keys and K expert MLPs (batched)."""

    def __init__(self, dim: int, opts: DiscriminatorOptions) -> None:
        super().__init__()
        k, h = opts.experts, opts.hidden
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.adaptor = nn.Linear(dim, dim)
        with torch.no_grad():
            self.adaptor.weight.copy_(torch.eye(dim))
            self.adaptor.bias.zero_()
        self.keys = nn.Parameter(torch.randn(k, dim))
        self.w1 = nn.Parameter(torch.randn(k, dim, h) / math.sqrt(dim))
        self.b1 = nn.Parameter(torch.zeros(k, h))
        self.w2 = nn.Parameter(torch.randn(k, h) / math.sqrt(h))
        self.b2 = nn.Parameter(torch.zeros(k))


class PatchDiscriminator(nn.Module):
    input_kind = "features"
    #: the shared loop (AdamW, cosine schedule, clip) on whole patch grids, its loss over its own outputs
    options_class = DiscriminatorOptions

    def __init__(self, dim: int, options: DiscriminatorOptions | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.opts = options or DiscriminatorOptions()
        self.tasks = nn.ModuleDict()
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device)

    @classmethod
    def from_options(cls, options: DiscriminatorOptions, context: ModelContext) -> PatchDiscriminator:
        return cls(context.dim, options)

    def describe(self) -> str:
        o = self.opts
        return (f"patch discriminator on synthetic feature noise (noise {o.noise} std, {o.experts} gated experts "
                f"of width {o.hidden}); one per task, nothing shared")

    def _task(self, task_id: int) -> TaskDiscriminator:
        if str(task_id) not in self.tasks:
            raise MoleflowError(f"model 'discriminator' has no network for task {task_id}; train that task first "
                                "or load its checkpoint")
        return self.tasks[str(task_id)]

    # --- the network -------------------------------------------------------------------------------
    def adapt(self, feats: Tensor, task_id: int) -> Tensor:
        task = self._task(task_id)
        return task.adaptor((feats.to(task.mean.device) - task.mean) / task.std)

    def head(self, adapted: Tensor, task_id: int) -> tuple[Tensor, Tensor]:
        """(B,h,w,D) adapted features -> per-patch logits (B,h,w) and the gate (B,K)."""
        task = self._task(task_id)
        pooled = F.normalize(adapted.mean((1, 2)), dim=-1)
        gate = torch.softmax(pooled @ F.normalize(task.keys, dim=-1).T / self.opts.temperature, dim=-1)
        hidden = torch.relu(torch.einsum("bhwd,kde->bhwke", adapted, task.w1) + task.b1)
        per_expert = torch.einsum("bhwke,ke->bhwk", hidden, task.w2) + task.b2
        return (per_expert * gate[:, None, None, :]).sum(-1), gate

    def synthetic_regions(self, shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
        """(B,h,w) masks: up to `regions` random rectangles (1 .. half the grid per side) on a random
        `anomalous_fraction` of the images; the rest stay all-normal."""
        b, h, w = shape
        masks = torch.zeros(b, h, w)
        for i in range(b):
            if torch.rand((), generator=generator) >= self.opts.anomalous_fraction:
                continue
            for _ in range(int(torch.randint(1, self.opts.regions + 1, (), generator=generator))):
                rh = int(torch.randint(1, max(1, h // 2) + 1, (), generator=generator))
                rw = int(torch.randint(1, max(1, w // 2) + 1, (), generator=generator))
                y = int(torch.randint(0, h - rh + 1, (), generator=generator))
                x = int(torch.randint(0, w - rw + 1, (), generator=generator))
                masks[i, y:y + rh, x:x + rw] = 1.0
        return masks

    def training_outputs(self, feats: Tensor, task_id: int, generator: torch.Generator) -> dict[str, Any]:
        """One training batch's outputs: the noised features' logits and everything the catalogue reads."""
        task = self._task(task_id)
        adapted = self.adapt(feats, task_id)
        masks = self.synthetic_regions(tuple(adapted.shape[:3]), generator).to(adapted.device)
        noise = torch.randn(adapted.shape, generator=generator).to(adapted.device) * self.opts.noise
        logits, gate = self.head(adapted + masks[..., None] * noise, task_id)
        return {"logits": logits, "anomaly_map": logits, "targets": masks, "masks": masks,
                "selector_probs": gate, "prototypes": task.keys, "weight": task.adaptor.weight}

    # --- the continual contract --------------------------------------------------------------------
    def begin_task(self, task_id: int, class_name: str = "") -> None:
        if str(task_id) not in self.tasks:  # inside the trainer's per-task seeded_rng: a seeded init
            self.tasks[str(task_id)] = TaskDiscriminator(self.dim, self.opts).to(self._anchor.device)

    def trainable_parameters(self, task_id: int) -> list:
        # all of them, also after end_task froze them: under finetune/joint every round retrains task 0
        return list(self._task(task_id).parameters())

    def fit_task(self, task_id: int, inputs: Tensor, params: list, context: FitContext) -> FitResult:
        if not params:
            return FitResult()
        n = inputs.shape[0]
        if n == 0:
            raise MoleflowError(f"{context.label}: no training images")
        settings = FitSettings.of(self.opts, context)
        loss_fn = self.opts.make_loss("discriminator").to(context.device)  # fresh per task: see optimise
        task = self._task(task_id)
        for p in params:
            p.requires_grad_(True)
        rows = inputs.reshape(-1, self.dim).float()
        task.mean.copy_(rows.mean(0))
        task.std.copy_(rows.std(0).clamp_min(1e-6))  # noise is in units of each channel's spread

        def step_loss(idx: Tensor, generator: torch.Generator) -> tuple[Tensor, int]:
            outputs = self.training_outputs(inputs[idx].to(settings.device), task_id, generator)
            return loss_fn(outputs)[0], len(idx)

        return optimise(task, params, settings, step_loss=step_loss, steps_per_epoch=math.ceil(n / settings.batch_size),
                        epoch_batches=lambda g: torch.randperm(n, generator=g).split(settings.batch_size),
                        label=context.label, on_epoch=context.on_epoch, loss=loss_fn)

    def end_task(self, task_id: int) -> None:
        task = self._task(task_id)
        task.eval()
        for p in task.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def patch_scores(self, feats: Tensor, task_id: int) -> Tensor:
        """(B,h,w,D) -> (B,h,w): the anomaly logit of each clean patch."""
        if feats.shape[-1] != self.dim:
            raise MoleflowError(f"model 'discriminator' was built for {self.dim}-dim features, got {feats.shape[-1]}")
        return self.head(self.adapt(feats, task_id), task_id)[0].to(feats.device)

    # --- checkpoints -------------------------------------------------------------------------------
    def task_state(self, task_id: int) -> dict[str, Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self._task(task_id).state_dict().items()}

    def shared_state(self) -> dict[str, Tensor]:
        return {}

    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None:
        self.begin_task(task_id)
        self._task(task_id).load_state_dict(state)

    def load_shared_state(self, state: dict[str, Tensor]) -> None:
        pass

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """finetune/joint checkpoints hold the whole state_dict: create the tasks it names first."""
        for key in state_dict:
            if key.startswith("tasks."):
                self.begin_task(int(key.split(".")[1]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def param_counts(self) -> dict:
        tasks = sorted(int(k) for k in self.tasks)
        return {"shared": 0,
                "per_task": [sum(p.numel() for p in self.tasks[str(t)].parameters()) for t in tasks]}

