"""Continual-learning summaries of a per-task metric (e.g. image AUROC), defined once.

* Accuracy matrix: R[i][j] = metric on task j after training task i (tasks 0..T). Entries with
  j > i (tasks not yet seen) and missing results are NaN.
* BWT (backward transfer) = mean over j < T of R[T][j] - R[j][j]: how much the final model changed
  on earlier tasks compared with just after learning them (negative = forgetting).
* FM (forgetting measure) = mean over j < T of max_{j <= i < T} R[i][j] - R[T][j]: the drop from
  the best value ever reached on task j before the last task to the final value (positive =
  forgetting; negative only if the last task improved task j beyond every earlier value).
* Avalanche forgetting = mean over j < T of R[j][j] - R[T][j]: the value just after learning task j
  minus the final one (Avalanche's `ExperienceForgetting`, "first minus last"). Where FM takes the best
  value ever reached, this takes the one right after training; it is -BWT whenever both are defined, and
  reported under its own name because papers compare forgetting numbers across the two definitions.
* final_mean = mean of the last row R[T][:]: the average metric over all tasks at the end.

BWT and FM are undefined with a single task: NaN with a ``MetricUndefinedWarning``. When an entry
needed for some task j is NaN (e.g. a pixel metric on a class without masks), that task is left out
of the mean with a warning naming it; if every task is left out the result is NaN.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np

from moleflow.errors import MoleflowError
from moleflow.evaluation.metrics import MetricUndefinedWarning


def _task_index(key: Any, num_tasks: int, what: str) -> int:
    try:
        index = int(key)  # JSON round-trips turn integer keys into strings
    except (TypeError, ValueError):
        raise MoleflowError(f"accuracy_matrix: {what} key {key!r} is not a task index") from None
    if not 0 <= index < num_tasks:
        raise MoleflowError(f"accuracy_matrix: {what} task {index} is outside 0..{num_tasks - 1}; "
                            f"pass the total number of tasks as num_tasks")
    return index


def accuracy_matrix(results: Mapping[Any, Mapping[Any, Any]], num_tasks: int) -> np.ndarray:
    """(num_tasks, num_tasks) float64 matrix from results[i][j]; NaN where j > i or missing."""
    if num_tasks < 1:
        raise MoleflowError(f"accuracy_matrix: num_tasks={num_tasks} must be >= 1")
    matrix = np.full((num_tasks, num_tasks), np.nan)
    for trained_key, row in results.items():
        i = _task_index(trained_key, num_tasks, "trained-task")
        for evaluated_key, value in row.items():
            j = _task_index(evaluated_key, num_tasks, "evaluated-task")
            if j <= i and value is not None:
                matrix[i, j] = float(value)
    return matrix


def _as_matrix(R: Any, metric: str) -> np.ndarray:
    matrix = np.array(R, dtype=np.float64)  # None -> NaN, so continual_summary's output round-trips
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise MoleflowError(f"{metric}: accuracy matrix has shape {matrix.shape}; expected a non-empty "
                            f"square (T+1, T+1) matrix from accuracy_matrix()")
    return matrix


def _undefined(metric: str, why: str) -> float:
    warnings.warn(f"{metric}: {why}; returning NaN", MetricUndefinedWarning, stacklevel=3)
    return float("nan")


def _mean_over_tasks(metric: str, per_task: np.ndarray) -> float:
    defined = ~np.isnan(per_task)
    if not defined.any():
        return _undefined(metric, "every task has a NaN entry")
    if not defined.all():
        skipped = np.flatnonzero(~defined).tolist()
        warnings.warn(f"{metric}: tasks {skipped} left out of the mean because their entries are NaN",
                      MetricUndefinedWarning, stacklevel=3)
    return float(np.mean(per_task[defined]))


def bwt(R: Any) -> float:
    """Backward transfer: mean over j < T of R[T][j] - R[j][j] (T = last task)."""
    matrix = _as_matrix(R, "bwt")
    last = matrix.shape[0] - 1
    if last == 0:
        return _undefined("bwt", "only one task, so there is no earlier task to look back on")
    return _mean_over_tasks("bwt", matrix[last, :last] - np.diag(matrix)[:last])


def forgetting_measure(R: Any) -> float:
    """Forgetting: mean over j < T of max_{j <= i < T} R[i][j] - R[T][j]."""
    matrix = _as_matrix(R, "forgetting_measure")
    last = matrix.shape[0] - 1
    if last == 0:
        return _undefined("forgetting_measure", "only one task, so there is no earlier task to forget")
    per_task = np.full(last, np.nan)
    for j in range(last):
        before_last = matrix[j:last, j]
        before_last = before_last[~np.isnan(before_last)]
        if before_last.size:
            per_task[j] = before_last.max() - matrix[last, j]
    return _mean_over_tasks("forgetting_measure", per_task)


def avalanche_forgetting(R: Any) -> float:
    """Avalanche's forgetting: mean over j < T of R[j][j] - R[T][j] (just after learning j, minus final)."""
    matrix = _as_matrix(R, "avalanche_forgetting")
    last = matrix.shape[0] - 1
    if last == 0:
        return _undefined("avalanche_forgetting", "only one task, so there is no earlier task to forget")
    return _mean_over_tasks("avalanche_forgetting", np.diag(matrix)[:last] - matrix[last, :last])


def continual_summary(R: Any) -> dict[str, Any]:
    """{"bwt", "fm", "forgetting_avalanche", "final_mean", "matrix"}; the matrix is a nested list with None
    for NaN."""
    matrix = _as_matrix(R, "continual_summary")
    return {
        "bwt": bwt(matrix),
        "fm": forgetting_measure(matrix),
        "forgetting_avalanche": avalanche_forgetting(matrix),
        "final_mean": _mean_over_tasks("final_mean", matrix[-1]),
        "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in matrix],
    }
