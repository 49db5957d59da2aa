"""Anomaly-aware split: exact counts for the documented rounding rule, invariants, determinism."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from moleflow.data.samples import Sample
from moleflow.data.splits import anomaly_aware_split, round_share
from moleflow.errors import MoleflowError


def make_samples(n_normal: int, n_anomalous: int) -> list[Sample]:
    normal = [Sample(Path(f"good/{i:03d}.png"), 0, None, "good", "c") for i in range(n_normal)]
    anomalous = [Sample(Path(f"defect/{i:03d}.png"), 1, Path(f"masks/{i:03d}.png"), "defect", "c")
                 for i in range(n_anomalous)]
    return normal + anomalous


def counts(parts: dict[str, list[Sample]]) -> dict[str, tuple[int, int]]:
    """split -> (normal count, anomalous count)"""
    return {k: (sum(s.label == 0 for s in v), sum(s.label == 1 for s in v)) for k, v in parts.items()}


# 100 normal + 60 anomalous; the anomalous images are divided val:test = val/(val+test)
@pytest.mark.parametrize("percent, expected", [
    ((70, 15, 15), {"train": (70, 0), "val": (15, 30), "test": (15, 30)}),   # anomalous 50/50
    ((70, 20, 10), {"train": (70, 0), "val": (20, 40), "test": (10, 20)}),   # anomalous 67/33
    ((80, 10, 10), {"train": (80, 0), "val": (10, 30), "test": (10, 30)}),   # anomalous 50/50
    ((60, 30, 10), {"train": (60, 0), "val": (30, 45), "test": (10, 15)}),   # anomalous 75/25
])
def test_split_counts_for_the_four_reference_rows(percent, expected):
    samples = make_samples(100, 60)
    parts = anomaly_aware_split(samples, percent, seed=3)
    assert counts(parts) == expected
    # a partition: nothing lost, nothing duplicated, no anomaly in train
    all_paths = [s.path for part in parts.values() for s in part]
    assert sorted(all_paths) == sorted(s.path for s in samples)
    assert not any(s.label for s in parts["train"])


@pytest.mark.parametrize("n_normal, n_anomalous, percent, expected", [
    # normal: round(7*0.7)=round(4.9)=5 train, rest 2 -> val round(2*2/3)=1, test 1; anomalous: round(2)=2 / 1
    (7, 3, (70, 20, 10), {"train": (5, 0), "val": (1, 2), "test": (1, 1)}),
    # ties round half up: 5 anomalous at 50/50 -> val round(2.5)=3, test 2; normal round(3.5)=4 train
    (5, 5, (70, 15, 15), {"train": (4, 0), "val": (1, 3), "test": (0, 2)}),
    # val share 0: everything not in train goes to test
    (10, 4, (80, 0, 20), {"train": (8, 0), "val": (0, 0), "test": (2, 4)}),
])
def test_rounding_rule_on_uneven_counts(n_normal, n_anomalous, percent, expected):
    assert counts(anomaly_aware_split(make_samples(n_normal, n_anomalous), percent, seed=0)) == expected


def test_round_share_is_half_up_and_exact():
    assert round_share(5, 1, 2) == 3        # 2.5 -> 3
    assert round_share(7, 70, 100) == 5     # 4.9 -> 5
    assert round_share(3, 1, 3) == 1        # 1.0 stays 1 despite 1/3 not being exact in floats
    assert round_share(29, 70, 100) == 20   # 20.3 -> 20


def test_same_seed_same_split_whatever_the_listing_order():
    samples = make_samples(40, 20)
    reference = anomaly_aware_split(samples, (70, 15, 15), seed=7)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert anomaly_aware_split(shuffled, (70, 15, 15), seed=7) == reference
    assert anomaly_aware_split(list(reversed(samples)), (70, 15, 15), seed=7) == reference


def test_different_seeds_give_different_assignments():
    samples = make_samples(40, 20)
    trains = {tuple(s.path for s in anomaly_aware_split(samples, (70, 15, 15), seed=seed)["train"])
              for seed in range(4)}
    assert len(trains) > 1
    # and the split is not simply the first 70 % in path order
    first = sorted(s.path for s in samples if s.label == 0)[:28]
    assert tuple(first) not in trains


def test_each_part_is_sorted_by_path():
    parts = anomaly_aware_split(make_samples(30, 10), (60, 30, 10), seed=2)
    for part in parts.values():
        assert [str(s.path) for s in part] == sorted(str(s.path) for s in part)


@pytest.mark.parametrize("percent, fragment", [
    ((70, 20, 20), "70 20 20 sums to 110"),
    ((50, 20, 20), "50 20 20 sums to 90"),
    ((70, 15), "got 70 15"),
    ((110, -5, -5), "got 110 -5 -5"),
    ((70.0, 15, 15), "got 70.0 15 15"),
    ((100, 0, 0), "100 0 0 leaves no share"),
])
def test_bad_percentages_are_named(percent, fragment):
    with pytest.raises(MoleflowError, match=fragment):
        anomaly_aware_split(make_samples(10, 4), percent, seed=0)
