"""The options of the `students` model, declared once: each field is a `moleflow train --model students` flag of the
same name (`--students 3`, also `--model_opt students=3`), a key of a config file's model options, and what
`UninformedStudents` is built from. Ranges are checked by moleflow before any image is read; `validate` makes
the checks that need the run (image size, the descriptor's weights) before any image is read too.

Of the shared training loop it reads `--num_epochs`, `--batch_size` (students) and `--grad_clip` (teacher, and
each student separately), with the help and defaults of moleflow.training.LoopOptions; its optimisers take
their own rates (`--teacher_lr`, `--student_lr`) and its objectives are fixed (no `--loss`).

The defaults are the real-run (GPU) values; README.md lists the CPU-friendly set used by the demo/tests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from moleflow.errors import MoleflowError
from moleflow.options import option
from moleflow.training import LoopOptions

MIN_PATCH = 5


def _loop(name: str, help: str = "") -> Any:
    """A field of the shared loop's options (moleflow.training.LoopOptions): same default, range and help."""
    f = next(f for f in fields(LoopOptions) if f.name == name)
    meta = dict(f.metadata)
    if help:
        meta["help"] = f"{meta['help']}; {help}"
    return option(f.default, **meta)


@dataclass(frozen=True)
class StudentsOptions:
    # the loop settings it reads (its own Adam optimisers, not moleflow.training.optimise)
    num_epochs: int = _loop("num_epochs", "the students' (the teacher's distillation takes --teacher_steps)")
    batch_size: int = _loop("batch_size", "the students', also the chunk of the statistics passes")
    grad_clip: float = _loop("grad_clip", "the teacher's, and each student's separately")
    # the networks
    patch_sizes: tuple = option((33,), f"receptive fields, odd and >= {MIN_PATCH}; several = multi-scale "
                                       "(e.g. 17 33 65)", type=int)
    students: int = option(3, "M, students per scale and task (>= 2: the uncertainty is their variance)", minimum=2)
    width: int = option(128, "channels of every hidden conv of the teacher and the students", minimum=1)
    descriptor_dim: int = option(128, "d, the teacher's output per pixel", minimum=1)
    # the descriptor the teacher imitates
    descriptor_backbone: str = option("auto", "timm CNN whose pooled features the teacher imitates (auto: resnet18 "
                                              "where its weights are at hand, else the offline efficientnet_lite0)")
    descriptor_size: int = option(64, "patches are resized to this many px before the descriptor backbone",
                                  minimum=1)
    descriptor_weights: str = option("", "local weights file for the descriptor backbone (empty = the run's "
                                         "backbone rules: --backbone_weights when --backbone_name is the "
                                         "descriptor's, --pretrained, --no_pretrained)")
    # the teacher's distillation (once, on task 0)
    teacher_patches: int = option(10000, "random patches of task 0 whose descriptors are computed once", minimum=1)
    teacher_steps: int = option(5000, "optimisation steps of the teacher's distillation", minimum=1)
    teacher_batch: int = option(64, "patches per distillation step (>= 2: the compactness loss correlates a "
                                    "batch)", minimum=2)
    teacher_lr: float = option(2e-4, "Adam learning rate of the teacher", above=0)
    teacher_wd: float = option(1e-5, "Adam weight decay of the teacher", minimum=0)
    # lambda_c: small because the loss is a SUM over d(d-1) correlations whose batch-noise floor alone is
    # ~d^2/sqrt(batch) (~600 at d=64, batch 64): at 1e-3 it already stops the distillation (README)
    compactness_weight: float = option(1e-4, "lambda_c, weight of the compactness loss (distillation: 1)", minimum=0)
    # the students
    student_lr: float = option(1e-4, "Adam learning rate of the students", above=0)
    student_wd: float = option(1e-5, "Adam weight decay of the students", minimum=0)
    crop: int = option(0, "students train on one random crop x crop window of each image per epoch (0 = the "
                          "whole image)", minimum=0)

    def validate(self, context: Any) -> None:
        """Checks across options and against the run (its image size; the descriptor's weights are resolved, so
        missing weights fail now, before any image is read or any network trained)."""
        from moleflow_students.descriptor import descriptor_weights

        self.check_patch_sizes()
        h, w = context.img_size
        if self.crop > min(h, w):
            raise MoleflowError(f"--crop {self.crop}: larger than the images ({h}x{w}); use 0 (whole images) or "
                                f"<= {min(h, w)}")
        for p in self.patch_sizes:
            if p // 2 >= min(h, w):  # reflect padding cannot pad more than the image is wide
                raise MoleflowError(f"--patch_sizes {p}: needs images larger than {p // 2} px, got --img_size {h} {w}; "
                                    "use smaller patches or images")
        descriptor_weights(run_backbone(context), context.seed, self.descriptor_backbone, self.descriptor_weights)

    def check_patch_sizes(self) -> None:
        spelled = " ".join(map(str, self.patch_sizes))
        if not self.patch_sizes:
            raise MoleflowError("--patch_sizes: name at least one patch size, e.g. --patch_sizes 33")
        for p in self.patch_sizes:
            if p < MIN_PATCH or p % 2 == 0:
                raise MoleflowError(f"--patch_sizes {spelled}: {p} must be odd (centred on its pixel) and >= "
                                    f"{MIN_PATCH}")
        if len(set(self.patch_sizes)) != len(self.patch_sizes):
            raise MoleflowError(f"--patch_sizes {spelled}: lists a size twice")


def run_backbone(context: Any) -> Any:
    """The run's backbone settings (ModelContext.backbone), or the engine's defaults where a context has none."""
    if context.backbone is not None:
        return context.backbone
    from moleflow.config import BackboneConfig

    return BackboneConfig()
