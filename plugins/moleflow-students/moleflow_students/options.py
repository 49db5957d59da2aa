"""The model's own options (`--model_opt KEY=VALUE`), validated once with one actionable error each.

The defaults are the real-run (GPU) values; README.md lists the CPU-friendly set used by the demo/tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moleflow.config import check_option_names
from moleflow.errors import MoleflowError


@dataclass(frozen=True)
class StudentsOptions:
    patch_sizes: tuple[int, ...] = (33,)  # receptive fields (odd); several = multi-scale
    students: int = 3  # M, students per scale and task
    width: int = 128  # channels of every hidden conv of the teacher and the students
    descriptor_dim: int = 128  # d, the teacher's output per pixel
    descriptor_backbone: str = "auto"  # timm CNN whose pooled features the teacher imitates (auto: see descriptor.py)
    descriptor_size: int = 64  # patches are resized to this before the descriptor backbone
    descriptor_weights: str = ""  # local weights file for the descriptor backbone ("" = the backbone rules)
    teacher_patches: int = 10000  # random patches of task 0 whose descriptors are computed once
    teacher_steps: int = 5000  # optimisation steps of the distillation
    teacher_batch: int = 64
    teacher_lr: float = 2e-4
    teacher_wd: float = 1e-5
    # lambda_c of the compactness loss (distillation has weight 1). Small because the loss is a SUM over
    # d(d-1) correlations whose batch-noise floor alone is ~d^2/sqrt(batch) (~600 at d=64, batch 64): at
    # 1e-3 it already stops the distillation (README, "choosing compactness_weight")
    compactness_weight: float = 1e-4
    student_lr: float = 1e-4
    student_wd: float = 1e-5
    crop: int = 0  # students train on random crop x crop windows of each image per epoch (0 = whole image)

    @classmethod
    def parse(cls, raw: dict[str, Any], img_size: tuple[int, int]) -> StudentsOptions:
        known = check_option_names(raw, cls, "students")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            default = known[name].default
            if name == "patch_sizes":
                value = _patch_sizes(value)
            elif isinstance(default, str):
                value = str(value)
            elif isinstance(default, (int, float)) and not isinstance(value, bool) and isinstance(value, (int, float)):
                if isinstance(default, int) and value != int(value):
                    raise MoleflowError(f"--model_opt {name}={value}: expected a whole number")
                value = type(default)(value)
            else:
                raise MoleflowError(f"--model_opt {name}={value!r}: expected a number like {default}")
            values[name] = value
        options = cls(**values)
        options._check(img_size)
        return options

    def _check(self, img_size: tuple[int, int]) -> None:
        positive = ("students", "width", "descriptor_dim", "descriptor_size", "teacher_patches", "teacher_steps",
                    "teacher_batch", "teacher_lr", "student_lr")
        for name in positive:
            if getattr(self, name) <= 0:
                raise MoleflowError(f"--model_opt {name}={getattr(self, name)}: must be > 0")
        for name in ("teacher_wd", "student_wd", "compactness_weight", "crop"):
            if getattr(self, name) < 0:
                raise MoleflowError(f"--model_opt {name}={getattr(self, name)}: must be >= 0")
        if self.students < 2:
            # the predictive uncertainty (variance over students) needs at least two of them
            raise MoleflowError(f"--model_opt students={self.students}: needs at least 2 students")
        if self.teacher_batch < 2:
            raise MoleflowError("--model_opt teacher_batch: needs >= 2 (the compactness loss correlates a batch)")
        if self.crop > min(img_size):
            raise MoleflowError(f"--model_opt crop={self.crop}: larger than the images "
                                f"({img_size[0]}x{img_size[1]}); use 0 (whole images) or <= {min(img_size)}")
        for p in self.patch_sizes:
            if p // 2 >= min(img_size):  # reflect padding cannot pad more than the image is wide
                raise MoleflowError(f"--model_opt patch_sizes: patch {p} needs images larger than {p // 2} px, "
                                    f"got --img_size {img_size[0]} {img_size[1]}; use smaller patches or images")


def _patch_sizes(value: Any) -> tuple[int, ...]:
    sizes = value if isinstance(value, list) else [value]
    if not sizes or not all(isinstance(p, int) and not isinstance(p, bool) for p in sizes):
        raise MoleflowError(f"--model_opt patch_sizes={value!r}: expected an odd integer or a list like [17,33]")
    for p in sizes:
        if p < 5 or p % 2 == 0:
            raise MoleflowError(f"--model_opt patch_sizes: {p} must be odd (centred on its pixel) and >= 5")
    if len(set(sizes)) != len(sizes):
        raise MoleflowError(f"--model_opt patch_sizes={value!r}: lists a size twice")
    return tuple(sizes)
