"""The `--model_opt KEY=VALUE` options of the `firm` model, validated once, with one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moleflow.data.training_defects import METHODS
from moleflow.config import check_option_names
from moleflow.errors import MoleflowError

from moleflow_firm.loss import MODES

SCORES = ("knn", "mahalanobis")


@dataclass(frozen=True)
class FIRMOptions:
    proj_dim: int = 64  # d_proj, width of the L2-normalised embedding
    hidden: int = 0  # hidden width of the head MLP (0 = the feature width D)
    tau: float = 0.1  # FIRM temperature
    mode: str = "concat"  # FIRM anchors: concat | pairwise (see moleflow_firm.loss)
    score: str = "knn"  # knn | mahalanobis
    knn: int = 1  # k of the kNN score (mean distance to the k nearest memory embeddings)
    memory: int = 2000  # at most this many normal patch embeddings per task (fixed-seed subsample)
    batch_patches: int = 128  # normal patches per step (as many outlier patches are drawn next to them)
    synth_per_image: int = 2  # synthetic-defect copies of each training image (drawn once per task)
    outlier_frac: float = 0.25  # a patch is an outlier when this fraction of its cell is defect
    anomalies: tuple = ("masking", "noise", "cutpaste", "perlin")  # moleflow.data.training_defects methods
    view_noise: float = 0.1  # std of the Gaussian noise of a view, in units of the task's feature std
    view_dropout: float = 0.1  # probability of zeroing a (standardised) feature channel in a view

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> FIRMOptions:
        check_option_names(raw, cls, "firm")
        values = dict(raw)
        if isinstance(values.get("anomalies"), str):  # anomalies=cutpaste,noise as well as a JSON list
            values["anomalies"] = tuple(m.strip() for m in values["anomalies"].split(",") if m.strip())
        elif "anomalies" in values:
            values["anomalies"] = tuple(values["anomalies"])
        opts = cls(**values)
        opts._validate()
        return opts

    def _validate(self) -> None:
        def bad(key: str, rule: str) -> MoleflowError:
            return MoleflowError(f"--model_opt {key}={getattr(self, key)!r}: {rule}")

        for key in ("proj_dim", "knn", "memory", "batch_patches", "synth_per_image"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(key, "must be an integer >= 1")
        if not isinstance(self.hidden, int) or self.hidden < 0:
            raise bad("hidden", "must be an integer >= 0 (0 = the feature width)")
        if not isinstance(self.tau, (int, float)) or self.tau <= 0:
            raise bad("tau", "must be a number > 0, e.g. 0.1")
        if self.mode not in MODES:
            raise bad("mode", f"use one of {', '.join(MODES)}")
        if self.score not in SCORES:
            raise bad("score", f"use one of {', '.join(SCORES)}")
        if self.knn > self.memory:
            raise bad("knn", f"must be <= memory={self.memory}")
        if not isinstance(self.outlier_frac, (int, float)) or not 0 < self.outlier_frac <= 1:
            raise bad("outlier_frac", "must be in (0, 1]")
        unknown = [m for m in self.anomalies if m not in METHODS]
        if not self.anomalies or unknown:
            raise bad("anomalies", f"choose from {', '.join(METHODS)} (JSON list or comma-separated)")
        if not isinstance(self.view_noise, (int, float)) or self.view_noise < 0:
            raise bad("view_noise", "must be a number >= 0")
        if not isinstance(self.view_dropout, (int, float)) or not 0 <= self.view_dropout < 1:
            raise bad("view_dropout", "must be in [0, 1)")
