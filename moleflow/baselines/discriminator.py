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

Default loss (`default_loss`, used when `--loss` is not given): bce=1 + iou=1. Scoring: the patch logit on
clean features, no noise. Continual contract: each task owns its adaptor, keys and experts (nothing shared),
frozen at end_task, so forgetting is zero by construction; the router picks the task at test time.

Options (`--model_opt KEY=VALUE`): experts K (default 4), hidden (each expert's MLP width, 128), noise (std
of the synthetic noise in units of the training features' per-channel std, 1.0), regions (most rectangles
per image, 2), anomalous_fraction (share of training images that get a region, 0.5), temperature (0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moleflow.config import check_option_names
from moleflow.errors import MoleflowError

#: losses whose value is constant when the gate has a single expert (K = 1): refused there, not ignored
GATE_LOSSES = ("selector_entropy", "selector_diversity", "distinctness")


@dataclass(frozen=True)
class DiscriminatorOptions:
    experts: int = 4
    hidden: int = 128
    noise: float = 1.0
    regions: int = 2
    anomalous_fraction: float = 0.5
    temperature: float = 0.1

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> DiscriminatorOptions:
        known = check_option_names(raw, cls, "discriminator")
        for key, value in raw.items():
            wants_int = known[key].type in (int, "int")
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or (wants_int and not isinstance(value, int)):
                kind = "a whole number" if wants_int else "a number"
                raise MoleflowError(f"--model_opt {key}={value!r}: expected {kind}")
        opts = cls(**raw)
        if opts.experts < 1 or opts.hidden < 1 or opts.regions < 1:
            raise MoleflowError(f"--model_opt experts={opts.experts} hidden={opts.hidden} regions={opts.regions}: "
                                "each must be >= 1")
        if not (math.isfinite(opts.noise) and opts.noise > 0) or not (0 < opts.anomalous_fraction <= 1) \
                or not (math.isfinite(opts.temperature) and opts.temperature > 0):
            raise MoleflowError(f"--model_opt noise={opts.noise} anomalous_fraction={opts.anomalous_fraction} "
                                f"temperature={opts.temperature}: noise and temperature must be > 0, "
                                "anomalous_fraction in (0, 1]")
        return opts


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
    #: its fit_task reads these (AdamW, cosine schedule, clip; whole patch grids, so no --token_stride)
    reads_settings = ("num_epochs", "batch_size", "lr", "weight_decay", "grad_clip", "loss")
    #: what `--loss` means when it is not given (moleflow's own default, nll, reads flow outputs)
    default_loss = ("bce=1.0", "iou=1.0")

    def __init__(self, dim: int, options: DiscriminatorOptions | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.opts = options or DiscriminatorOptions()
        self.tasks = nn.ModuleDict()
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device)

    @classmethod
    def validate_config(cls, cfg: Any, *, img_size: tuple[int, int]) -> None:
        from moleflow.config import parse_options
        from moleflow.losses.compose import parse_loss_terms

        raw = parse_options(cfg.flow.model_opt)
        opts = DiscriminatorOptions.parse(raw)
        if opts.experts == 1 and "temperature" in raw:
            raise MoleflowError("--model_opt temperature: with one expert (experts=1) the gate is constant and its "
                                "temperature changes nothing; use experts >= 2 or drop temperature")
        gate_terms = [n for n, _ in parse_loss_terms(list(cfg.train.loss)) if n in GATE_LOSSES]
        if opts.experts == 1 and gate_terms:
            raise MoleflowError(f"--loss {gate_terms[0]}: with one expert (--model_opt experts=1) the gate is "
                                "constant and this loss changes nothing; use experts >= 2 or drop it")

    @classmethod
    def from_config(cls, cfg: Any, *, dim: int, grid: tuple[int, int], img_size: tuple[int, int],
                    overrides: dict) -> PatchDiscriminator:
        from moleflow.config import parse_options

        return cls(dim, DiscriminatorOptions.parse(parse_options(cfg.flow.model_opt)))

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

    def fit_task(self, task_id: int, inputs: Tensor, params: list, loss_fn: Any, settings: Any, *, label: str,
                 on_epoch: Any = None) -> Any:
        from moleflow.continual.fit import FitResult, optimise

        if not params:
            return FitResult()
        n = inputs.shape[0]
        if n == 0:
            raise MoleflowError(f"{label}: no training images")
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
                        label=label, on_epoch=on_epoch)

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

