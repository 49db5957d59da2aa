"""Anomaly-aware train/val/test split for layouts that do not come pre-split (folder, csv).

Anomalous images never enter train: the train percentage applies to normal images only. With
percent = (train, val, test):
  - normal:    n_train = round(N * train / 100); the rest is divided val : test;
  - anomalous: all of them are divided val : test;
where "divided val : test" means n_val = round(n * val / (val + test)) and test takes what is left, so
no image is lost or duplicated. `round` is round-half-up, computed in integers (no float ties).
Examples for 100 normal + 60 anomalous:
  70-15-15 -> normal 70/15/15, anomalous 0/30/30      80-10-10 -> normal 80/10/10, anomalous 0/30/30
  70-20-10 -> normal 70/20/10, anomalous 0/40/20      60-30-10 -> normal 60/30/10, anomalous 0/45/15
The assignment is a numpy Generator permutation seeded by `seed`, applied to the samples sorted by
path, so it depends on the seed and the set of files, never on the order the file system lists them.
"""

from __future__ import annotations

from numbers import Integral
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from moleflow.data.samples import Sample, check_split, sorted_samples
from moleflow.errors import MoleflowError


def check_percent(percent: Sequence[int]) -> tuple[int, int, int]:
    """(train, val, test) as ints, or an error naming the values."""
    values = tuple(percent)
    shown = " ".join(str(v) for v in values)
    if len(values) != 3 or not all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for v in values):
        raise MoleflowError(f"--split_percent needs three non-negative integers train val test; got {shown}")
    train, val, test = (int(v) for v in values)
    if train + val + test != 100:
        raise MoleflowError(f"--split_percent {shown} sums to {train + val + test}, not 100; "
                            "pass e.g. --split_percent 70 15 15")
    if val + test == 0:
        raise MoleflowError(f"--split_percent {shown} leaves no share for val or test, where anomalous images go; "
                            "give test a non-zero share")
    return train, val, test


def round_share(n: int, numerator: int, denominator: int) -> int:
    """round-half-up(n * numerator / denominator) in exact integer arithmetic."""
    return (2 * n * numerator + denominator) // (2 * denominator)


def anomaly_aware_split(samples: Sequence[Sample], percent: Sequence[int] = (70, 15, 15),
                        seed: int = 0) -> dict[str, list[Sample]]:
    """{"train", "val", "test"} -> samples, each list sorted by path (see the module docstring)."""
    train_pct, val_pct, test_pct = check_percent(percent)
    ordered = sorted_samples(samples)
    normal = [s for s in ordered if s.label == 0]
    anomalous = [s for s in ordered if s.label != 0]
    rng = np.random.default_rng(seed)
    normal = [normal[i] for i in rng.permutation(len(normal))]
    anomalous = [anomalous[i] for i in rng.permutation(len(anomalous))]

    n_train = round_share(len(normal), train_pct, 100)
    rest = normal[n_train:]
    n_val_normal = round_share(len(rest), val_pct, val_pct + test_pct)
    n_val_anomalous = round_share(len(anomalous), val_pct, val_pct + test_pct)
    parts = {
        "train": normal[:n_train],
        "val": rest[:n_val_normal] + anomalous[:n_val_anomalous],
        "test": rest[n_val_normal:] + anomalous[n_val_anomalous:],
    }
    return {name: sorted_samples(part) for name, part in parts.items()}


def splitting_lister(list_all: Callable[[str | Path, str], list[Sample]], classes: Callable, fmt: str) -> Callable:
    """A data-set lister (the `moleflow.datasets` contract) for a layout that does not come pre-split: every
    sample of a class from `list_all(root, class_name)`, split by `anomaly_aware_split` (deterministic from
    `seed`). The lister says that it reads --split_percent/--split_seed (`uses_split_percent`)."""
    def lister(root: str | Path, class_name: str, split: str, *,
               split_percent: Sequence[int] = (70, 15, 15), seed: int = 0) -> list[Sample]:
        check_split(split)
        return anomaly_aware_split(list_all(root, class_name), split_percent, seed)[split]

    lister.__name__ = lister.__qualname__ = f"list_{fmt}"
    lister.__doc__ = f"One split of a {fmt}-format class (anomaly-aware, deterministic from `seed`)."
    lister.uses_split_percent = True  # type: ignore[attr-defined]
    lister.classes = classes  # type: ignore[attr-defined]
    return lister
