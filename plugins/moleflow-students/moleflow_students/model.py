"""Uninformed Students (Bergmann et al., CVPR 2020) behind moleflow's continual contract.

Shared state: one teacher per patch size, distilled ONCE from a frozen pretrained-style descriptor on random
patches of task 0's training images (the first `fit_task` call), then frozen for good. Per task: for each
patch size, M independently initialised students that regress the teacher's output normalised with this
task's mean/std, plus the calibration statistics of the scores. A task's students and statistics are never
touched again after its end_task, and the teacher never changes after task 0: zero forgetting.

Score of a pixel at one scale = ||mean student - teacher||^2 (regression error) + mean over students of
||student - mean student||^2 (predictive uncertainty); the multi-scale score is the mean of the per-scale
scores, each standardised by its mean/std over the task's training pixels. The evaluator turns the
(B,H,W) map into an image score by its max.

Options (StudentsOptions, moleflow_students/options.py: `moleflow train --model students --help`): of the loop
--num_epochs, --batch_size, --grad_clip; its own learning rates and networks; no --loss (fixed objectives).
"""

from __future__ import annotations

import time
import torch
from torch import Tensor, nn

from moleflow.contract import FitContext, FitResult, ModelContext
from moleflow.errors import MoleflowError
from moleflow.features.weights import WeightsSource
from moleflow.training import FitSettings
from moleflow_students.descriptor import PatchDescriptor, descriptor_weights
from moleflow_students.options import StudentsOptions, run_backbone
from moleflow_students.patchnet import PatchNet
from moleflow_students.training import channel_stats, distill_teacher, raw_maps, score_stats, train_students

SCORE_CHUNK = 8  # images per dense pass at scoring time: (M, chunk, d, H, W) student maps stay small


class ScaleStudents(nn.Module):
    """One task's students for one patch size, with the statistics that belong to that task."""

    def __init__(self, patch_size: int, count: int, width: int, dim: int) -> None:
        super().__init__()
        self.students = nn.ModuleList(PatchNet(patch_size, width, dim) for _ in range(count))
        self.register_buffer("teacher_mean", torch.zeros(dim))
        self.register_buffer("teacher_std", torch.ones(dim))
        # [score mean, score std, uncertainty mean, uncertainty std] over the task's training pixels
        self.register_buffer("calibration", torch.tensor([0.0, 1.0, 0.0, 1.0]))


class UninformedStudents(nn.Module):
    input_kind = "images"
    #: its optimisers take their own rates (--teacher_lr, --student_lr) and fixed objectives (no --loss)
    options_class = StudentsOptions

    def __init__(self, options: StudentsOptions, *, descriptor_source: WeightsSource | None = None,
                 descriptor_backbone: str | None = None, init_seed: int = 0) -> None:
        super().__init__()
        self.opts = options
        self.descriptor_source = descriptor_source or WeightsSource("random", f"random:{init_seed}",
                                                                         description=f"random init (seed {init_seed})")
        # the resolved name ("auto" picks one in descriptor_weights); a random default stands for the seed's
        self.descriptor_backbone = descriptor_backbone or (
            "resnet18" if options.descriptor_backbone == "auto" else options.descriptor_backbone)
        self.init_seed = init_seed
        self.teachers = nn.ModuleDict({_key(p): PatchNet(p, options.width, options.descriptor_dim)
                                       for p in options.patch_sizes})
        self.teachers.requires_grad_(False)  # trained by distillation only, inside fit_task of task 0
        self.tasks = nn.ModuleDict()  # str(task id) -> ModuleDict(scale key -> ScaleStudents)
        # a buffer, not a Python flag: the strategies that checkpoint the whole state_dict (finetune, joint)
        # must restore "already distilled" too
        self.register_buffer("distilled", torch.zeros((), dtype=torch.uint8))
        self.teacher_log: dict[str, float] = {}

    @classmethod
    def from_options(cls, options: StudentsOptions, context: ModelContext) -> UninformedStudents:
        """The descriptor's weights follow the run's backbone settings and seed (resolved already when the options
        were checked, so missing weights failed before any image was read)."""
        name, source = descriptor_weights(run_backbone(context), context.seed, options.descriptor_backbone,
                                          options.descriptor_weights)
        return cls(options, descriptor_source=source, descriptor_backbone=name, init_seed=context.seed)

    def describe(self) -> str:
        """Printed by every run and kept in metrics.json: which network the teacher imitates."""
        return f"teacher distilled from {self.descriptor_backbone} ({self.descriptor_source.description})"

    @property
    def teacher_ready(self) -> bool:
        return bool(self.distilled)

    @property
    def _device(self) -> torch.device:
        return next(self.teachers.parameters()).device

    def _task(self, task_id: int) -> nn.ModuleDict:
        key = str(task_id)
        if key not in self.tasks:
            raise MoleflowError(f"students: task {task_id} was never begun (known tasks: {', '.join(self.tasks)})")
        return self.tasks[key]

    # --- the continual contract ---------------------------------------------------------------------
    def begin_task(self, task_id: int, class_name: str = "") -> None:
        if str(task_id) in self.tasks:  # a strategy that reuses model task 0 keeps training the same students
            return
        o = self.opts
        self.tasks[str(task_id)] = nn.ModuleDict({
            _key(p): ScaleStudents(p, o.students, o.width, o.descriptor_dim) for p in o.patch_sizes
        }).to(self._device)

    def trainable_parameters(self, task_id: int) -> list:
        return list(self._task(task_id).parameters())

    def fit_task(self, task_id: int, inputs: Tensor, params: list, context: FitContext) -> FitResult:
        """Distil the teacher if this is the first task, then train this task's students on `inputs`
        (N,3,H,W). The objectives are the model's own (see losses.py); `params` are this task's students, which
        it trains all of (its own optimisers, --student_lr)."""
        if inputs.shape[0] == 0:
            raise MoleflowError(f"{context.label}: no training images")
        start = time.perf_counter()
        o = self.opts
        # the students' loop: --num_epochs, --batch_size, --grad_clip of its options; Adam at --student_lr
        settings = FitSettings.of(o, context, lr=o.student_lr, weight_decay=o.student_wd)
        if not self.teacher_ready:
            self._distill(inputs, settings, context.label)
        task = self._task(task_id)
        task.requires_grad_(True)
        per_scale: list[list[float]] = []
        for p in o.patch_sizes:
            scale, teacher = task[_key(p)], self.teachers[_key(p)]
            mean, std = channel_stats(teacher, inputs, settings.device, settings.batch_size)
            scale.teacher_mean.copy_(mean)
            scale.teacher_std.copy_(std)
            per_scale.append(train_students(scale.students, teacher, mean, std, inputs, o, settings,
                                            label=context.label))
            scale.calibration.copy_(score_stats(scale.students, teacher, mean, std, inputs, settings.device,
                                                settings.batch_size))
        epoch_losses = [sum(values) / len(values) for values in zip(*per_scale)]
        if context.on_epoch is not None:
            for epoch, value in enumerate(epoch_losses):
                context.on_epoch(epoch, value)
        steps = len(o.patch_sizes) * settings.num_epochs * -(-inputs.shape[0] // settings.batch_size)
        return FitResult(epoch_losses, steps, time.perf_counter() - start)

    def _distill(self, images: Tensor, settings: FitSettings, label: str) -> None:
        o = self.opts
        descriptor = PatchDescriptor(self.descriptor_backbone, self.descriptor_source, self.init_seed,
                                     o.descriptor_size).to(settings.device)
        for p in o.patch_sizes:
            teacher = self.teachers[_key(p)]
            teacher.requires_grad_(True)
            losses = distill_teacher(teacher, descriptor, images, o, settings, label=label)
            teacher.requires_grad_(False)
            for when, parts in (("first", losses[0]), ("last", losses[-1])):
                self.teacher_log.update({f"p{p}_{when}_{name}": value for name, value in parts.items()})
        self.distilled.fill_(1)  # frozen from here on: later tasks only add students

    def end_task(self, task_id: int) -> None:
        self._task(task_id).requires_grad_(False)
        self.teachers.requires_grad_(False)

    # --- scoring ------------------------------------------------------------------------------------
    def _maps(self, images: Tensor, task_id: int) -> dict[str, Tensor]:
        """Both calibrated maps of one pass: score (error + uncertainty) and uncertainty alone."""
        task = self._task(task_id)
        score, uncert = [], []
        for chunk in images.split(SCORE_CHUNK):
            chunk = chunk.to(self._device).float()
            per_score, per_uncert = [], []
            for p in self.opts.patch_sizes:
                scale = task[_key(p)]
                error, uncertainty = raw_maps(scale.students, self.teachers[_key(p)], scale.teacher_mean,
                                              scale.teacher_std, chunk)
                c = scale.calibration
                per_score.append((error + uncertainty - c[0]) / c[1])
                per_uncert.append((uncertainty - c[2]) / c[3])
            score.append(torch.stack(per_score).mean(0))
            uncert.append(torch.stack(per_uncert).mean(0))
        return {"score": torch.cat(score), "uncertainty": torch.cat(uncert)}

    @torch.no_grad()
    def patch_scores(self, images: Tensor, task_id: int) -> Tensor:
        """(B,3,H,W) -> (B,H,W): calibrated regression error + predictive uncertainty, mean over scales."""
        return self._maps(images, task_id)["score"]

    @torch.no_grad()
    def uncertainty_maps(self, images: Tensor, task_id: int) -> Tensor:
        """(B,3,H,W) -> (B,H,W): the predictive-uncertainty part alone, calibrated the same way."""
        return self._maps(images, task_id)["uncertainty"]

    @torch.no_grad()
    def score_maps(self, images: Tensor, task_id: int) -> dict[str, Tensor]:
        """Contract hook: the score and the uncertainty map from one pass; the core routes both and writes
        the uncertainty to maps/<class>.npz (--save_maps) and heatmaps/<class>/uncertainty/."""
        return self._maps(images, task_id)

    # --- checkpoints --------------------------------------------------------------------------------
    def task_state(self, task_id: int) -> dict[str, Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self._task(task_id).state_dict().items()}

    def shared_state(self) -> dict[str, Tensor]:
        state = {k: v.detach().clone().contiguous() for k, v in self.teachers.state_dict().items()}
        return {**state, "distilled": self.distilled.clone()}

    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None:
        self.begin_task(task_id)
        self._task(task_id).load_state_dict(state)

    def load_shared_state(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.distilled.copy_(state.pop("distilled", torch.ones((), dtype=torch.uint8)))
        self.teachers.load_state_dict(state)

    def param_counts(self) -> dict:
        def count(module: nn.Module) -> int:  # what a checkpoint stores: parameters + persistent statistics
            return sum(t.numel() for t in module.state_dict().values())

        per_task = [count(self.tasks[k]) for k in sorted(self.tasks, key=int)]
        return {"shared": count(self.teachers), "per_task": per_task}  # the flag is not a parameter


def _key(patch_size: int) -> str:
    return f"p{patch_size}"
