"""The `lda` router (the default): each task's mean under the tasks' pooled within-task covariance. A defect
that moves an image's pooled feature far off the direction separating two look-alike tasks cannot decide its
route, which it did under a covariance per task (`mahalanobis`); each task's stored state stays its own."""

from __future__ import annotations

import pytest
import torch

from moleflow import registry
from moleflow.routing import MahalanobisRouter, PooledMahalanobisRouter


def _lots(n: int, seed: int) -> list[torch.Tensor]:
    """Two look-alike tasks in 6 dims: their means differ by 2 along axis 0 (each task's spread there 0.2);
    axes 1-5 vary with the same spread in both, except axis 1, which varies 3x more in task 0."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.2, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    a = torch.randn(n, 6, generator=g, dtype=torch.float64) * scale * torch.tensor([1, 3, 1, 1, 1, 1.0])
    b = torch.randn(n, 6, generator=g, dtype=torch.float64) * scale
    b[:, 0] += 2.0
    return [a, b]


def test_registered_and_the_default():
    from moleflow.testing import train_config

    assert registry.get("routers", "lda") is PooledMahalanobisRouter
    assert train_config().train.router == "lda"


def test_a_large_off_axis_defect_fools_a_covariance_per_task_but_not_the_pooled_one():
    train, test = _lots(400, seed=0), _lots(200, seed=1)
    # task 1's images with a "defect": a large move along axis 1, which says nothing about the lot
    defective = test[1].clone()
    defective[:, 1] += 15.0
    routers = {cls.name: cls() for cls in (MahalanobisRouter, PooledMahalanobisRouter)}
    for router in routers.values():
        for t, x in enumerate(train):
            router.add_task(t, x)
    for router in routers.values():  # normal images: both route every one right
        assert (router.predict(test[0]) == 0).all() and (router.predict(test[1]) == 1).all()
    # task 0 varies 3x more along axis 1, so under per-task covariances the defect looks like task 0
    assert (routers["mahalanobis"].predict(defective) == 1).float().mean() < 0.2
    assert (routers["lda"].predict(defective) == 1).all()


def test_each_task_keeps_its_own_state_and_a_checkpoint_restores_the_decisions():
    train = _lots(50, seed=0) + [torch.randn(50, 6, dtype=torch.float64) + 5]
    router = PooledMahalanobisRouter()
    router.add_task(0, train[0])
    before = router.task_state(0)
    router.add_task(1, train[1])
    router.add_task(2, train[2])
    assert all(torch.equal(before[k], router.task_state(0)[k]) for k in before)  # bitwise: adding tasks
    assert set(before) == {"mean", "covariance", "count"} and float(before["count"]) == 50
    query = torch.cat(_lots(20, seed=3))
    restored = PooledMahalanobisRouter()
    for t in range(3):
        restored.load_task_state(t, router.task_state(t))
    assert torch.equal(restored.distances(query), router.distances(query))
    # the pooled metric follows the tasks it is asked about: a reloaded task's new state is used at once
    changed = router.task_state(2)
    changed["covariance"] = changed["covariance"] * 4
    restored.load_task_state(2, changed)
    assert not torch.equal(restored.distances(query), router.distances(query))
    with pytest.raises(Exception, match="lacks covariance"):
        PooledMahalanobisRouter().load_task_state(0, {"mean": before["mean"], "count": before["count"]})


@pytest.fixture(scope="module")
def pill_lots(tmp_path_factory):
    """The stress stream's pill lots as `moleflow synth --classes lookalike` writes them, and their features."""
    from moleflow.continual.task_data import prepare_tasks
    from moleflow.synth.benchmark import generate_benchmark
    from moleflow.testing import train_config

    root = tmp_path_factory.mktemp("lookalike")
    generate_benchmark(root / "synth", classes=["pill_lot1", "pill_lot2"], progress=False, workers=1)
    cfg = train_config("--data_path", str(root / "synth"), "--task_classes", "pill_lot1", "pill_lot2",
                       "--runs_dir", str(root / "runs"), "--model", "knn")
    tasks, _, _ = prepare_tasks(cfg, torch.device("cpu"), progress=False)
    return tasks


def test_on_the_look_alike_lots_the_old_router_misroutes_defects_and_lda_routes_every_image(pill_lots):
    from moleflow.evaluation.metrics import routing_accuracy_by_split

    split = {}
    for name in ("mahalanobis", "lda"):
        router = registry.create("routers", name)
        for task in pill_lots:
            router.add_task(task.task_id, task.train.pooled)
        test = pill_lots[1].tests[0].test  # the second lot: its defects pull towards the first
        pred = router.predict(test.pooled)
        split[name] = routing_accuracy_by_split([1] * len(pred), pred, test.labels)
    assert split["mahalanobis"]["normal"] == 1.0 and split["mahalanobis"]["anomalous"] < 0.9  # measured 0.833
    assert split["lda"] == {"normal": 1.0, "anomalous": 1.0}
