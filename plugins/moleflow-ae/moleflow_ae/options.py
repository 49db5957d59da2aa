"""The `--model_opt KEY=VALUE` options of the `ae` model, validated once so a typo fails before training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moleflow.config import check_option_names
from moleflow.errors import MoleflowError

ARCHS = ("ae", "unet")
SCORES = ("recon", "latent", "both")


@dataclass(frozen=True)
class AEOptions:
    arch: str = "ae"  # "ae": bottleneck, no skips; "unet": same layers plus skips, width matched to the AE's size
    channels: int = 3  # 1 = grey (the (N,3,H,W) input is averaged over channels), 3 = RGB
    width: int = 16  # channels of the full-resolution level; doubles per level up to 8x
    depth: int = 4  # stride-2 levels: the bottleneck grid is the (padded) image size / 2**depth
    latent: int = 32  # bottleneck channels (1x1 squeeze)
    synthetic: bool = True  # train on synthetic defects (masking, noise): input corrupted, target clean
    anomaly_prob: float = 0.5  # share of training images that get a synthetic defect (others: plain AE)
    foreground: bool = True  # keep synthetic defects on the object (Otsu foreground estimate)
    rotate: float = 0.0  # augmentation: rotation drawn from +-rotate degrees (0 = off)
    scale: float = 0.0  # augmentation: zoom drawn from [1-scale, 1+scale] (0 = off)
    score: str = "recon"  # recon | latent | both (see README)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> AEOptions:
        check_option_names(options, cls, "ae")
        values = {}
        for name, value in options.items():
            want = type(cls.__dataclass_fields__[name].default)
            # JSON gives ints for "rotate=5"; bool is an int subclass, so refuse it where a number is meant
            ok = isinstance(value, want) or (want is float and isinstance(value, int))
            if not ok or (want is not bool and isinstance(value, bool)):
                raise MoleflowError(f"--model_opt {name}={value!r}: expected a {want.__name__}, e.g. "
                                    f"{name}={str(getattr(cls, name)).lower()}")
            values[name] = float(value) if want is float else value
        opts = cls(**values)
        opts.check()
        return opts

    def check(self) -> None:
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"arch={self.arch}: use one of {', '.join(ARCHS)}")
        if self.score not in SCORES:
            problems.append(f"score={self.score}: use one of {', '.join(SCORES)}")
        if self.channels not in (1, 3):
            problems.append(f"channels={self.channels}: use 1 (grey, averaged) or 3 (RGB)")
        for name, low in (("width", 1), ("depth", 1), ("latent", 1)):
            if getattr(self, name) < low:
                problems.append(f"{name}={getattr(self, name)}: must be >= {low}")
        if not 0.0 <= self.anomaly_prob <= 1.0:
            problems.append(f"anomaly_prob={self.anomaly_prob}: must be in [0, 1]")
        if not 0.0 <= self.rotate <= 180.0:
            problems.append(f"rotate={self.rotate}: degrees in [0, 180]")
        if not 0.0 <= self.scale < 1.0:
            problems.append(f"scale={self.scale}: a fraction in [0, 1), e.g. 0.05")
        if problems:
            raise MoleflowError("--model_opt " + "; ".join(problems))
