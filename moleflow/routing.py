"""Task routers: one prototype per task, built from that task's pooled training features, and a
nearest-prototype decision at test time (no second backbone pass: the pooled feature comes with the patches).

Each task's prototype is computed from its own data only and is never touched again, so adding task t
cannot change how earlier tasks are described (the zero-forgetting invariant extends to routing).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import Tensor

from moleflow.errors import MoleflowError


class PrototypeRouter:
    """Base: per-task state dicts of float64 tensors, distances (N, num_tasks), argmin -> task id."""

    name = "prototype"
    state_keys: tuple[str, ...] = ()
    min_samples = 1

    def __init__(self) -> None:
        self._tasks: dict[int, dict[str, Tensor]] = {}

    @property
    def num_tasks(self) -> int:
        return len(self._tasks)

    @property
    def task_ids(self) -> list[int]:
        return sorted(self._tasks)

    # --- per-task prototypes -------------------------------------------------------------------
    def _fit(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def _distance(self, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def _feature_dim(self) -> int | None:
        for state in self._tasks.values():
            if "mean" in state:
                return int(state["mean"].shape[0])
        return None

    def _as_features(self, pooled: Tensor, what: str) -> Tensor:
        x = torch.as_tensor(pooled).detach().to("cpu", torch.float64)
        if x.ndim != 2:
            raise MoleflowError(f"{self.name} router: {what} must be (N, D) pooled features, "
                                f"got shape {tuple(x.shape)}")
        dim = self._feature_dim()
        if dim is not None and x.shape[1] != dim:
            raise MoleflowError(f"{self.name} router: {what} has feature dim {x.shape[1]}, the stored prototypes "
                                f"have {dim}; use the same backbone/embed_dim as the tasks already added")
        return x

    def add_task(self, task_id: int, pooled: Tensor) -> None:
        task_id = int(task_id)
        if task_id in self._tasks:
            raise MoleflowError(f"{self.name} router already has task {task_id}; "
                                "a task's prototype is fixed once added")
        x = self._as_features(pooled, f"task {task_id} training features")
        if x.shape[0] < self.min_samples:
            raise MoleflowError(f"{self.name} router needs at least {self.min_samples} training images for task "
                                f"{task_id}, got {x.shape[0]}")
        self._tasks[task_id] = {k: v.detach().clone().contiguous() for k, v in self._fit(x).items()}

    def task_state(self, task_id: int) -> dict[str, Tensor]:
        if int(task_id) not in self._tasks:
            raise MoleflowError(f"{self.name} router has no task {task_id}; known: {self.task_ids}")
        return {k: v.clone() for k, v in self._tasks[int(task_id)].items()}

    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None:
        missing = [k for k in self.state_keys if k not in state]
        if missing:
            raise MoleflowError(f"{self.name} router state for task {task_id} lacks {', '.join(missing)}; "
                                "the checkpoint was written by a different router (check --router)")
        self._tasks[int(task_id)] = {k: torch.as_tensor(state[k]).to("cpu", torch.float64).clone()
                                     for k in self.state_keys}

    # --- decisions ------------------------------------------------------------------------------
    def distances(self, pooled: Tensor) -> Tensor:
        """(N, num_tasks) float64, columns in `task_ids` order; smaller is closer."""
        if not self._tasks:
            raise MoleflowError(f"{self.name} router has no tasks yet; add_task before predicting")
        x = self._as_features(pooled, "query features")
        return torch.stack([self._distance(x, self._tasks[t]) for t in self.task_ids], dim=1)

    def predict(self, pooled: Tensor, true_tasks: Tensor | None = None) -> Tensor:
        """(N,) long task ids of the nearest prototype; `true_tasks` is only used by the oracle."""
        ids = torch.tensor(self.task_ids, dtype=torch.long)
        return ids[self.distances(pooled).argmin(dim=1)]


class EuclideanRouter(PrototypeRouter):
    """Task mean; squared Euclidean distance."""

    name = "euclidean"
    state_keys = ("mean",)

    def _fit(self, x: Tensor) -> dict[str, Tensor]:
        return {"mean": x.mean(dim=0)}

    def _distance(self, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        return (x - state["mean"]).pow(2).sum(dim=1)


def floored_precision(cov: np.ndarray) -> np.ndarray:
    """The symmetric inverse of a (D, D) covariance with a floor of 1e-6 x its mean variance on the diagonal.

    Not a pseudo-inverse: when every sample is identical the covariance is 0 and its pseudo-inverse is 0 too,
    so that task would sit at distance 0 from every image and take them all. The floor only bites then, and
    keeps the precision large and finite."""
    floor = max(1e-6 * float(np.trace(cov)) / cov.shape[0], 1e-12)
    precision = np.linalg.inv(cov + floor * np.eye(cov.shape[0]))
    return 0.5 * (precision + precision.T)


class MahalanobisRouter(PrototypeRouter):
    """Task mean + Ledoit-Wolf shrinkage covariance; squared Mahalanobis distance.

    A few dozen training images against hundreds of feature dims make the sample covariance singular;
    Ledoit-Wolf shrinks it toward a scaled identity by the analytically optimal amount, which keeps the
    precision well-conditioned without a tuned ridge.
    """

    name = "mahalanobis"
    state_keys = ("mean", "precision")
    min_samples = 2

    def _fit(self, x: Tensor) -> dict[str, Tensor]:
        lw = LedoitWolf(assume_centered=False).fit(x.numpy())
        # not lw.precision_ (a pseudo-inverse): see floored_precision
        return {"mean": torch.from_numpy(lw.location_.copy()),
                "precision": torch.from_numpy(floored_precision(lw.covariance_))}

    def _distance(self, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        diff = x - state["mean"]
        return ((diff @ state["precision"]) * diff).sum(dim=1)


class PooledMahalanobisRouter(PrototypeRouter):
    """Fisher's linear discriminant: each task's mean, squared Mahalanobis distance under the tasks' pooled
    within-task covariance (each task's Ledoit-Wolf covariance, weighted by its images - 1).

    Why one metric for all tasks: with a covariance per task (`mahalanobis`) the distance to task a minus the
    distance to task b is quadratic in the image's feature, so a defect that moves the pooled feature far in
    a direction neither task's normal images vary in is weighed differently by the two covariances, and that
    difference, not the image's resemblance to either task, decides the route. With one metric the
    difference is linear: 2 (m_b - m_a)^T P x + const, so only the defect's projection on the direction that
    separates the two prototypes counts. Measured on the look-alike lots of the embedded benchmark (`moleflow
    synth --classes lookalike`: two lots per product that differ by a colour cast of a few percent, large
    defects): `mahalanobis` routes every normal image right and 63-100 % of each lot's anomalous ones (85.8 %
    of all); this router 100 % of both, and 100 % on the 1x15, demo and 10-5 streams as well (UPDATE_NOTES.md).

    Each task stores only its own mean, covariance and image count (adding a task changes no earlier task's
    state); the pooled precision is computed from the stored tasks when they change, so the decision for an
    image can change as tasks arrive, as with any router whose set of prototypes grows.
    """

    name = "lda"
    state_keys = ("mean", "covariance", "count")
    min_samples = 2

    def __init__(self) -> None:
        super().__init__()
        self._precision: tuple[tuple[int, ...], Tensor] | None = None  # (task ids pooled, precision); reset on change

    def add_task(self, task_id: int, pooled: Tensor) -> None:
        super().add_task(task_id, pooled)
        self._precision = None

    def load_task_state(self, task_id: int, state: dict[str, Tensor]) -> None:
        super().load_task_state(task_id, state)
        self._precision = None

    def _fit(self, x: Tensor) -> dict[str, Tensor]:
        lw = LedoitWolf(assume_centered=False).fit(x.numpy())
        return {"mean": torch.from_numpy(lw.location_.copy()), "covariance": torch.from_numpy(lw.covariance_.copy()),
                "count": torch.tensor(float(x.shape[0]), dtype=torch.float64)}

    def pooled_precision(self) -> Tensor:
        """Inverse of the pooled within-task covariance of the stored tasks (cached until they change)."""
        key = tuple(self.task_ids)
        if self._precision is None or self._precision[0] != key:
            weights = [float(self._tasks[t]["count"]) - 1.0 for t in key]
            cov = sum(w * self._tasks[t]["covariance"] for w, t in zip(weights, key)) / sum(weights)
            self._precision = (key, torch.from_numpy(floored_precision(cov.numpy())))
        return self._precision[1]

    def distances(self, pooled: Tensor) -> Tensor:
        if not self._tasks:
            raise MoleflowError(f"{self.name} router has no tasks yet; add_task before predicting")
        x = self._as_features(pooled, "query features")
        precision = self.pooled_precision()
        means = torch.stack([self._tasks[t]["mean"] for t in self.task_ids])  # (T, D)
        diff = (x[:, None, :] - means[None]).reshape(-1, x.shape[1])  # every task at once, one 2-D matmul
        return ((diff @ precision) * diff).sum(-1).reshape(x.shape[0], len(means))


class OracleRouter(PrototypeRouter):
    """Upper bound for experiments: routes every image to its true task."""

    name = "oracle"

    def _fit(self, x: Tensor) -> dict[str, Tensor]:
        return {}

    def distances(self, pooled: Tensor) -> Tensor:
        raise MoleflowError("the oracle router has no distances; it only echoes the true task ids")

    def predict(self, pooled: Tensor, true_tasks: Tensor | None = None) -> Tensor:
        if true_tasks is None:
            raise MoleflowError("the oracle router needs the true task ids; use --router mahalanobis or euclidean "
                                "when the task is unknown")
        tasks = torch.as_tensor(true_tasks).long().flatten().cpu().clone()
        unknown = sorted(set(tasks.tolist()) - set(self.task_ids))
        if unknown:
            raise MoleflowError(f"oracle router: true tasks {unknown} were never added; known: {self.task_ids}")
        return tasks
