"""`firm`: a contrastive patch model. Per task, a projection head (MLP D -> hidden -> d_proj, L2-normalised)
is trained with the FIRM loss on frozen backbone patch features, with patches of synthetic defects
(moleflow.data.training_defects) as outliers; patches are then scored by kNN or Mahalanobis distance to a
memory of the task's normal embeddings.

Why input_kind "images": the outliers are defects painted on training *images*, so the model needs
the images and computes their features itself with the run's frozen extractor (same backbone, weights
and seed as the run's: `ModelContext.build_extractor()`). Test images go through the same extractor, so
normal and defect patches live in one feature space.

Options (FIRMOptions, moleflow_firm/options.py: `moleflow train --model firm --help`): the loop's --num_epochs,
--lr, --weight_decay, --grad_clip (not --batch_size: --batch_patches), --loss (default firm=1.0, its firm term
configured by --tau/--mode), and the head's, the patches' and the score's own.

Continual contract: every task owns a head, its feature statistics and its memory; nothing is shared
but the frozen extractor, so a task's scores can never change once it has ended (zero forgetting by
construction).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from moleflow.contract import FitContext, FitResult, ModelContext
from moleflow.errors import MoleflowError
from moleflow.flow.standardize import robust_std
from moleflow.training import FitSettings

from moleflow_firm.options import FIRMOptions
from moleflow_firm.patches import build_pools, extract_all
from moleflow_firm.scoring import knn_distance, mahalanobis_distance, mahalanobis_stats, subsample
from moleflow_firm.train import train_head

BUFFERS = ("feat_mean", "feat_std", "memory", "maha_mean", "maha_precision")


class TaskHead(nn.Module):
    """One task's projection head plus what its scores need: feature standardisation and the memory."""

    def __init__(self, dim: int, hidden: int, proj_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, proj_dim))
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        self.register_buffer("memory", torch.zeros(0, proj_dim))  # filled by fit_task
        self.register_buffer("maha_mean", torch.zeros(proj_dim))
        self.register_buffer("maha_precision", torch.eye(proj_dim))

    def standardize(self, feats: torch.Tensor) -> torch.Tensor:
        # backbone channels differ in scale by orders of magnitude (random init even more); the view
        # noise is then in units of each channel's spread
        return (feats - self.feat_mean) / self.feat_std

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        return self.project(self.standardize(feats))

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        device = self.feat_mean.device
        for name in BUFFERS:  # shapes vary (the memory's row count), so re-register rather than copy
            self.register_buffer(name, state[name].to(device))
        self.mlp.load_state_dict({k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")})


class FIRMPatchModel(nn.Module):
    """Registered as model `firm`: one TaskHead per task over the frozen extractor's patch features."""

    input_kind = "images"
    #: the head trains through moleflow's loop (AdamW) on --batch_patches patches per step, on its --loss
    options_class = FIRMOptions

    def __init__(self, extractor: nn.Module, options: FIRMOptions | None = None, *,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        # kept out of the module tree: frozen and rebuilt from the config, so it must neither be
        # checkpointed (finetune/joint save model.state_dict()) nor counted as a parameter
        self.__dict__["extractor"] = extractor
        self.opts = options or FIRMOptions()
        self.dim = int(extractor.dim)
        self.device = torch.device(device)
        self.heads = nn.ModuleDict()

    @classmethod
    def from_options(cls, options: FIRMOptions, context: ModelContext) -> FIRMPatchModel:
        if context.build_extractor is None:
            raise MoleflowError("model 'firm' scores backbone features itself and needs the run's feature extractor "
                                "(ModelContext.build_extractor)")
        return cls(context.build_extractor(), options, device=context.device)

    def _head(self, task_id: int) -> TaskHead:
        key = str(task_id)
        if key not in self.heads:
            raise MoleflowError(f"model 'firm' has no head for task {task_id}; begin (and fit) that task first")
        return self.heads[key]

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[0]

    # --- the continual contract ---
    def begin_task(self, task_id: int, class_name: str = "") -> None:
        if str(task_id) not in self.heads:
            self.heads[str(task_id)] = TaskHead(self.dim, self.opts.hidden or self.dim, self.opts.proj_dim).to(self.device)

    def trainable_parameters(self, task_id: int) -> list:
        return list(self._head(task_id).parameters())

    def fit_task(self, task_id: int, inputs: torch.Tensor, params: list, context: FitContext) -> FitResult:
        """Features of the task's images and of their synthetic-defect copies, the head trained on --loss
        over them, then the memory of normal embeddings."""
        start = time.perf_counter()
        head = self._head(task_id)
        settings = FitSettings.of(self.opts, context, batch_size=self.opts.batch_patches)
        clean = extract_all(self._features, inputs, settings.device)
        pools = build_pools(self._features, inputs, clean, copies=self.opts.synth_per_image,
                            methods=self.opts.anomalies, min_frac=self.opts.outlier_frac, seed=settings.seed,
                            device=settings.device)
        head.feat_mean.copy_(pools.normal.mean(0))
        head.feat_std.copy_(robust_std(pools.normal))
        loss_fn = self.opts.make_loss("firm").to(settings.device)  # fresh per task: see moleflow.training.optimise
        result = train_head(head, pools, params, lambda out: loss_fn(out)[0], settings, self.opts,
                            label=context.label, on_epoch=context.on_epoch, loss=loss_fn)
        self._fill_memory(head, pools.normal, settings.seed)
        result.seconds = time.perf_counter() - start  # includes the backbone passes the model makes itself
        return result

    @torch.no_grad()
    def _fill_memory(self, head: TaskHead, normal: torch.Tensor, seed: int) -> None:
        head.eval()
        memory = head.embed(subsample(normal, self.opts.memory, seed))
        if memory.shape[0] < self.opts.knn:
            raise MoleflowError(f"--knn {self.opts.knn} but the task has only {memory.shape[0]} normal patches; "
                                "lower --knn")
        head.register_buffer("memory", memory.contiguous())
        mean, precision = mahalanobis_stats(memory)
        head.maha_mean.copy_(mean)
        head.maha_precision.copy_(precision)

    def end_task(self, task_id: int) -> None:
        self._head(task_id).requires_grad_(False)

    @torch.no_grad()
    def patch_scores(self, images: torch.Tensor, task_id: int) -> torch.Tensor:
        head = self._head(task_id)
        if head.memory.shape[0] == 0:
            raise MoleflowError(f"model 'firm': task {task_id} has an empty memory; fit the task before scoring it")
        feats = self._features(images.to(self.device))
        emb = head.embed(feats.flatten(0, 2))
        if self.opts.score == "knn":
            scores = knn_distance(emb, head.memory, self.opts.knn)
        else:
            scores = mahalanobis_distance(emb, head.maha_mean, head.maha_precision)
        return scores.reshape(feats.shape[:3])

    def task_state(self, task_id: int) -> dict:
        return {k: v.detach().clone().contiguous() for k, v in self._head(task_id).state_dict().items()}

    def shared_state(self) -> dict:
        return {}  # the extractor is frozen and rebuilt from the config

    def load_task_state(self, task_id: int, state: dict) -> None:
        self.begin_task(task_id)
        self._head(task_id).load_state(state)

    def load_shared_state(self, state: dict) -> None:
        pass

    def param_counts(self) -> dict:
        """Everything a task stores (head weights + standardisation + memory + Mahalanobis statistics)."""
        tasks = sorted(int(k) for k in self.heads)
        return {"shared": 0, "per_task": [sum(v.numel() for v in self.task_state(t).values()) for t in tasks]}

