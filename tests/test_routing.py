"""Prototype routers: accuracy, conditioning with few samples, immutability of old tasks, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moleflow import registry
from moleflow.errors import MoleflowError
from moleflow.routing import EuclideanRouter, MahalanobisRouter, OracleRouter, PooledMahalanobisRouter


def gaussian_tasks(n_tasks: int, n: int, dim: int, spread: float, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_tasks, dim, generator=g) * spread
    return [centres[t] + torch.randn(n, dim, generator=g) for t in range(n_tasks)]


def accuracy(router, tasks: list[torch.Tensor]) -> float:
    pred = torch.cat([router.predict(x) for x in tasks])
    true = torch.cat([torch.full((len(x),), t) for t, x in enumerate(tasks)])
    return float((pred == true).float().mean())


def test_registered_under_their_names():
    assert registry.get("routers", "mahalanobis") is MahalanobisRouter
    assert registry.get("routers", "euclidean") is EuclideanRouter
    assert registry.get("routers", "oracle") is OracleRouter


@pytest.mark.parametrize("cls", [MahalanobisRouter, EuclideanRouter, PooledMahalanobisRouter])
def test_separated_clusters_with_few_samples_route_perfectly(cls):
    train = gaussian_tasks(3, n=20, dim=256, spread=1.0, seed=0)  # 20 images, 256 dims: N << D
    test = [x + torch.randn_like(x) for x in gaussian_tasks(3, n=20, dim=256, spread=1.0, seed=0)]
    router = cls()
    for t, x in enumerate(train):
        router.add_task(t, x)
    assert router.num_tasks == 3
    assert accuracy(router, test) == 1.0
    d = router.distances(test[0])
    assert d.shape == (20, 3) and torch.isfinite(d).all()


def test_ledoit_wolf_precision_is_well_conditioned_where_sample_covariance_is_singular():
    x = gaussian_tasks(1, n=20, dim=256, spread=1.0)[0]
    router = MahalanobisRouter()
    router.add_task(0, x)
    precision = router.task_state(0)["precision"].numpy()
    sample_cov = np.cov(x.numpy(), rowvar=False)
    assert np.linalg.matrix_rank(sample_cov) <= 19  # singular: a plain inverse does not exist
    assert np.linalg.cond(precision) < 1e3
    # the ridge-regularised pseudo-inverse of the sample covariance is orders of magnitude worse
    ridge_pinv = np.linalg.pinv(sample_cov + 1e-6 * np.eye(256))
    assert np.linalg.cond(ridge_pinv) > 1e4 * np.linalg.cond(precision)


def test_mahalanobis_beats_euclidean_under_anisotropic_covariance():
    # the tasks differ a little along a quiet axis and a lot along a very noisy one: the Euclidean
    # decision is dominated by the noisy axis, the Mahalanobis one weighs axes by their precision
    g = torch.Generator().manual_seed(1)
    dim, n = 32, 300
    scale = torch.ones(dim)
    scale[0], scale[1] = 0.2, 20.0
    offset = torch.zeros(dim)
    offset[0], offset[1] = 2.0, 10.0

    def sample(task: int) -> torch.Tensor:
        return torch.randn(n, dim, generator=g) * scale + task * offset

    maha, eucl = MahalanobisRouter(), EuclideanRouter()
    for t in (0, 1):
        x = sample(t)
        maha.add_task(t, x)
        eucl.add_task(t, x)
    test = [sample(0), sample(1)]
    assert accuracy(maha, test) > 0.97
    assert accuracy(eucl, test) < 0.8


@pytest.mark.parametrize("cls", [MahalanobisRouter, EuclideanRouter])
def test_adding_a_task_leaves_earlier_prototypes_bitwise_unchanged(cls):
    tasks = gaussian_tasks(3, n=20, dim=64, spread=2.0)
    router = cls()
    router.add_task(0, tasks[0])
    before = router.task_state(0)
    router.add_task(1, tasks[1])
    router.add_task(2, tasks[2])
    after = router.task_state(0)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(MoleflowError, match="already has task 0"):
        router.add_task(0, tasks[2])


@pytest.mark.parametrize("cls", [MahalanobisRouter, EuclideanRouter])
def test_state_round_trip_through_safetensors(cls, tmp_path):
    tasks = gaussian_tasks(3, n=20, dim=64, spread=0.2, seed=4)  # overlapping: some images misroute
    router = cls()
    for t, x in enumerate(tasks):
        router.add_task(t, x)
    for t in range(3):
        save_file(router.task_state(t), str(tmp_path / f"task_{t}.safetensors"))

    restored = cls()
    for t in range(3):
        restored.load_task_state(t, load_file(str(tmp_path / f"task_{t}.safetensors")))
    g = torch.Generator().manual_seed(5)
    queries = [x + torch.randn(x.shape, generator=g) for x in tasks]
    query = torch.cat(queries)
    assert torch.equal(restored.distances(query), router.distances(query))
    assert torch.equal(restored.predict(query), router.predict(query))
    assert 0.4 < accuracy(restored, queries) < 1  # near-ties too: identical predictions are not trivial

    with pytest.raises(MoleflowError, match="precision" if cls is MahalanobisRouter else "mean"):
        cls().load_task_state(0, {})


def test_task_ids_need_not_be_contiguous():
    tasks = gaussian_tasks(2, n=10, dim=8, spread=5.0)
    router = EuclideanRouter()
    router.add_task(4, tasks[0])
    router.add_task(9, tasks[1])
    assert router.predict(tasks[1]).tolist() == [9] * 10


def test_oracle_echoes_true_tasks_and_refuses_without_them():
    router = OracleRouter()
    router.add_task(0, torch.zeros(3, 4))
    router.add_task(1, torch.zeros(3, 4))
    assert router.task_state(0) == {}
    true = torch.tensor([1, 0, 1])
    assert router.predict(torch.randn(3, 4), true_tasks=true).tolist() == [1, 0, 1]
    with pytest.raises(MoleflowError, match="true task"):
        router.predict(torch.randn(3, 4))
    with pytest.raises(MoleflowError, match="never added"):
        router.predict(torch.randn(1, 4), true_tasks=torch.tensor([5]))
    restored = OracleRouter()
    restored.load_task_state(0, {})
    assert restored.num_tasks == 1


def test_input_errors_are_clear():
    router = MahalanobisRouter()
    with pytest.raises(MoleflowError, match="at least 2"):
        router.add_task(0, torch.randn(1, 8))
    with pytest.raises(MoleflowError, match="no tasks"):
        router.predict(torch.randn(2, 8))
    router.add_task(0, torch.randn(5, 8))
    with pytest.raises(MoleflowError, match="feature dim 6"):
        router.predict(torch.randn(2, 6))
    # identical samples (zero covariance) still give finite distances
    router.add_task(1, torch.ones(4, 8))
    assert torch.isfinite(router.distances(torch.randn(3, 8))).all()
