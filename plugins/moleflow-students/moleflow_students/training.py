"""The two optimisation procedures of Uninformed Students and the statistics they need.

1. `distill_teacher`: the teacher (+ a linear decoder to the descriptor's width) learns, on random p x p
   patches, to reproduce the frozen descriptor of each patch (distillation MSE) while keeping its own d
   dimensions decorrelated (compactness loss). Patch descriptors are computed ONCE for a fixed pool of
   `teacher_patches` patches: the descriptor backbone is the expensive part, the pool is reused by all
   `teacher_steps` steps. Targets are standardised per dimension over the pool, so the distillation error
   has the same scale whether the descriptor is pretrained or randomly initialised (the compactness
   weight keeps one meaning).
2. `train_students`: M students regress the teacher's output, normalised with this task's mean/std, densely
   over whole training images (normal images only), or over one random crop of each image per epoch
   (`crop`): a crop of the padded image gives exactly the dense outputs of those pixels, so this trains on
   a random subset of the same per-pixel objective at a fraction of the cost.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from moleflow.errors import MoleflowError
from moleflow.losses.compose import CompositeLoss
from moleflow_students.descriptor import PatchDescriptor
from moleflow_students.losses import regression_and_uncertainty
from moleflow_students.options import StudentsOptions
from moleflow_students.patchnet import PatchNet, pad_for_patches, sample_patches


def _check_finite(loss: Tensor, label: str, epoch: int, step: int, what: str) -> None:
    if not torch.isfinite(loss):
        raise MoleflowError(f"{label}: {what} loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                            "training stopped (try a lower --teacher_lr/--student_lr or --grad_clip 1)")


@torch.no_grad()
def _descriptors(descriptor: PatchDescriptor, patches: Tensor, device: torch.device) -> Tensor:
    return torch.cat([descriptor(chunk.to(device)).cpu() for chunk in patches.split(256)])


def distill_teacher(teacher: PatchNet, descriptor: PatchDescriptor, images: Tensor, opts: StudentsOptions,
                    settings: Any, *, label: str) -> list[dict[str, float]]:
    """Train `teacher` in place on patches of `images`; returns the loss parts of every step."""
    device = settings.device
    generator = torch.Generator().manual_seed(settings.seed)
    patches = sample_patches(images.cpu(), teacher.patch_size, opts.teacher_patches, generator)
    targets = _descriptors(descriptor.to(device), patches, device)
    targets = (targets - targets.mean(0)) / (targets.std(0) + 1e-6)
    decoder = nn.Linear(teacher.out_dim, targets.shape[1]).to(device)
    params = [*teacher.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=opts.teacher_lr, weight_decay=opts.teacher_wd)
    loss_fn = CompositeLoss(["students_distill=1", f"students_compactness={opts.compactness_weight!r}"],
                            model_name="students")
    teacher.train()
    losses: list[dict[str, float]] = []
    bar = tqdm(range(opts.teacher_steps), desc=f"distil teacher p={teacher.patch_size} ({label})",
               disable=not settings.progress, leave=False)
    for step in bar:
        idx = torch.randint(len(patches), (opts.teacher_batch,), generator=generator)
        descriptor_out = teacher(patches[idx].to(device)).flatten(1)
        loss, parts = loss_fn({"descriptor": descriptor_out, "decoded": decoder(descriptor_out),
                               "target": targets[idx].to(device)})
        _check_finite(loss, label, 0, step, f"teacher (p={teacher.patch_size})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        losses.append({"total": loss.item(), **parts})
        bar.set_postfix(distill=f"{parts['students_distill']:.3f}", compact=f"{parts['students_compactness']:.2f}")
    teacher.eval()
    return losses


@torch.no_grad()
def channel_stats(net: PatchNet, images: Tensor, device: torch.device, batch_size: int) -> tuple[Tensor, Tensor]:
    """Mean and std per output channel over every pixel of `images` (float64 sums: many pixels)."""
    total = total_sq = None
    count = 0
    for chunk in images.split(batch_size):
        out = net.dense(chunk.to(device)).double()
        s, sq = out.sum((0, 2, 3)), out.pow(2).sum((0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += out.shape[0] * out.shape[2] * out.shape[3]
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
    return mean.float().cpu(), (std.float() + 1e-6).cpu()


def normalised_teacher(teacher: PatchNet, images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    view = (1, -1, 1, 1)
    return (teacher.dense(images) - mean.view(view)) / std.view(view)


def student_maps(students: nn.ModuleList, padded: Tensor) -> Tensor:
    """(B,3,H+p-1,W+p-1) padded images -> (M,B,d,H,W)."""
    return torch.stack([student(padded) for student in students])


def random_crops(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """One random size x size window per image."""
    h, w = images.shape[-2:]
    ys = torch.randint(h - size + 1, (len(images),), generator=generator).tolist()
    xs = torch.randint(w - size + 1, (len(images),), generator=generator).tolist()
    return torch.stack([img[:, y:y + size, x:x + size] for img, y, x in zip(images, ys, xs)])


def train_students(students: nn.ModuleList, teacher: PatchNet, mean: Tensor, std: Tensor, images: Tensor,
                   opts: StudentsOptions, settings: Any, *, label: str,
                   on_epoch: Callable[[int, float], Any] | None = None) -> list[float]:
    """Train the students of one task and scale in place; returns the mean loss per epoch."""
    device, p = settings.device, teacher.patch_size
    mean, std = mean.to(device), std.to(device)
    generator = torch.Generator().manual_seed(settings.seed + p)
    optimizer = torch.optim.Adam(students.parameters(), lr=opts.student_lr, weight_decay=opts.student_wd)
    loss_fn = CompositeLoss(["students_regression=1"], model_name="students")
    students.train()
    epoch_losses: list[float] = []
    bar = tqdm(range(settings.num_epochs), desc=f"students p={p} ({label})", disable=not settings.progress,
               leave=False)
    for epoch in bar:
        total, count = 0.0, 0
        for step, idx in enumerate(torch.randperm(len(images), generator=generator).split(settings.batch_size)):
            padded = pad_for_patches(images[idx].to(device), p)
            if opts.crop:
                padded = random_crops(padded, opts.crop + p - 1, generator)
            with torch.no_grad():
                target = (teacher(padded) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
            loss, _ = loss_fn({"students": student_maps(students, padded), "target": target})
            _check_finite(loss, label, epoch, step, f"students (p={p})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip > 0:  # per student: they are independent models
                for student in students:
                    torch.nn.utils.clip_grad_norm_(student.parameters(), settings.grad_clip)
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        epoch_losses.append(total / count)
        bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, epoch_losses[-1])
    students.eval()
    return epoch_losses


@torch.no_grad()
def raw_maps(students: nn.ModuleList, teacher: PatchNet, mean: Tensor, std: Tensor,
             images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel regression error and predictive uncertainty of one scale, (B,H,W) each."""
    mean, std = mean.to(images.device), std.to(images.device)
    target = normalised_teacher(teacher, images, mean, std)
    return regression_and_uncertainty(student_maps(students, pad_for_patches(images, teacher.patch_size)), target)


@torch.no_grad()
def score_stats(students: nn.ModuleList, teacher: PatchNet, mean: Tensor, std: Tensor, images: Tensor,
                device: torch.device, batch_size: int) -> Tensor:
    """[score mean, score std, uncertainty mean, uncertainty std] over every training pixel of one scale:
    the calibration that makes scales comparable before they are averaged."""
    sums = torch.zeros(4, dtype=torch.float64)
    count = 0
    for chunk in images.split(batch_size):
        error, uncertainty = raw_maps(students, teacher, mean, std, chunk.to(device))
        score = (error + uncertainty).double().cpu()
        uncertainty = uncertainty.double().cpu()
        sums += torch.stack([score.sum(), score.pow(2).sum(), uncertainty.sum(), uncertainty.pow(2).sum()])
        count += score.numel()
    m = sums / count
    score_std = (m[1] - m[0] ** 2).clamp_min(0).sqrt()
    unc_std = (m[3] - m[2] ** 2).clamp_min(0).sqrt()
    return torch.stack([m[0], score_std + 1e-6, m[2], unc_std + 1e-6]).float()
