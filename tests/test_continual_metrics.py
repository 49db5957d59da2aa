"""Accuracy matrix, BWT, FM and the summary on hand-computed matrices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from moleflow.errors import MoleflowError
from moleflow.evaluation.continual_metrics import (accuracy_matrix, avalanche_forgetting, bwt, continual_summary,
                                                   forgetting_measure)
from moleflow.evaluation.metrics import MetricUndefinedWarning

NAN = float("nan")
# R[i][j] = metric on task j after training task i (T = 2):
R = [[0.90, NAN, NAN],
     [0.93, 0.95, NAN],
     [0.97, 0.70, 0.99]]
# BWT = mean(R[2][0] - R[0][0], R[2][1] - R[1][1]) = mean(0.07, -0.25) = -0.09
# FM  = mean(max(R[0][0], R[1][0]) - R[2][0], R[1][1] - R[2][1])
#     = mean(0.93 - 0.97, 0.95 - 0.70) = mean(-0.04, 0.25) = 0.105
#     (letting i reach T would clamp task 0's term to 0 and give 0.125)
# final_mean = mean(0.97, 0.70, 0.99) = 0.886666...


def test_bwt_and_fm_by_hand():
    assert bwt(R) == pytest.approx(-0.09, abs=1e-12)
    assert forgetting_measure(R) == pytest.approx(0.105, abs=1e-12)


def test_entries_above_the_diagonal_are_ignored():
    # A forward evaluation R[0][1] = 0.99 (task 1 before training it) must not enter FM's max for
    # task 1, which runs over i >= j only: FM stays 0.105.
    with_forward = np.array(R)
    with_forward[0, 1] = 0.99
    assert forgetting_measure(with_forward) == pytest.approx(0.105, abs=1e-12)
    assert bwt(with_forward) == pytest.approx(-0.09, abs=1e-12)


def test_accuracy_matrix_from_results_with_json_keys():
    results = {0: {0: 0.90, 1: 0.5}, 1: {0: 0.93, 1: 0.95}, 2: {0: 0.97, 1: 0.70, 2: 0.99}}
    matrix = accuracy_matrix(results, num_tasks=3)
    np.testing.assert_array_equal(np.isnan(matrix), np.isnan(np.array(R)))  # (0, 1) dropped: j > i
    np.testing.assert_allclose(np.nan_to_num(matrix), np.nan_to_num(np.array(R)))
    round_tripped = json.loads(json.dumps(results))  # keys become strings
    np.testing.assert_array_equal(accuracy_matrix(round_tripped, 3), matrix)
    partial = accuracy_matrix({1: {1: 0.8}, 0: {0: None}}, num_tasks=3)
    assert partial[1, 1] == 0.8 and np.isnan(partial).sum() == 8
    with pytest.raises(MoleflowError, match="task 3 is outside 0..2"):
        accuracy_matrix({3: {0: 0.5}}, num_tasks=3)


def test_summary_is_json_ready_and_round_trips():
    summary = continual_summary(R)
    assert summary["final_mean"] == pytest.approx((0.97 + 0.70 + 0.99) / 3)
    assert summary["bwt"] == pytest.approx(-0.09) and summary["fm"] == pytest.approx(0.105)
    assert summary["matrix"][0] == [0.90, None, None]
    reloaded = json.loads(json.dumps(summary["matrix"]))
    assert bwt(reloaded) == pytest.approx(summary["bwt"])


def test_single_task_is_undefined_with_warning():
    with pytest.warns(MetricUndefinedWarning, match="^bwt: only one task"):
        assert math.isnan(bwt([[0.9]]))
    with pytest.warns(MetricUndefinedWarning, match="^forgetting_measure: only one task"):
        assert math.isnan(forgetting_measure([[0.9]]))


def test_tasks_with_nan_entries_are_left_out_with_warning():
    # Task 0's metric is undefined everywhere (e.g. no masks): BWT and FM come from task 1 alone.
    with_gap = np.array(R)
    with_gap[:, 0] = NAN
    with pytest.warns(MetricUndefinedWarning, match=r"^bwt: tasks \[0\] left out"):
        assert bwt(with_gap) == pytest.approx(0.70 - 0.95)
    with pytest.warns(MetricUndefinedWarning, match=r"^forgetting_measure: tasks \[0\] left out"):
        assert forgetting_measure(with_gap) == pytest.approx(0.95 - 0.70)
    all_nan = np.full((3, 3), NAN)
    with pytest.warns(MetricUndefinedWarning, match="every task"):
        assert math.isnan(bwt(all_nan))


def test_malformed_matrix_raises():
    with pytest.raises(MoleflowError, match="square"):
        bwt([[0.9, 0.8]])


def test_avalanche_forgetting_is_first_minus_last_not_best_minus_last():
    # task 0: 0.90 right after training, 0.93 at its best, 0.97 at the end; task 1: 0.95, then 0.70
    # Avalanche = mean(0.90 - 0.97, 0.95 - 0.70) = mean(-0.07, 0.25) = 0.09 (= -BWT), while FM = 0.105
    assert avalanche_forgetting(R) == pytest.approx(0.09, abs=1e-12)
    assert avalanche_forgetting(R) == pytest.approx(-bwt(R), abs=1e-12)
    assert avalanche_forgetting(R) != pytest.approx(forgetting_measure(R))
    summary = continual_summary(R)
    assert summary["forgetting_avalanche"] == pytest.approx(0.09)
    with pytest.warns(MetricUndefinedWarning, match="^avalanche_forgetting: only one task"):
        assert math.isnan(avalanche_forgetting([[0.9]]))
