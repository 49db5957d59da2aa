"""The no-learned-task check (moleflow.task_range): an image of a product the run never learned is said so,
while every test image of a learned class, normal or anomalous, is not; each task's state is its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moleflow.task_range import QUANTILE, TaskRange
from moleflow.testing import tiny_benchmark
from test_cli import cli


def _task(centre: float, n: int, seed: int, grid: int = 4, dim: int = 8) -> torch.Tensor:
    """n images of grid x grid patches whose features scatter (std 1) around one centre."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, grid, grid, dim, generator=g) + centre


def test_range_is_measured_leaving_each_training_image_out():
    train = _task(0.0, 10, seed=0)
    check = TaskRange(memory_size=10 * 16, margin=1.35)  # every training patch is in the memory
    check.add_task(0, train, seed=0)
    # measured with its own patches in the memory, each training image would sit at distance 0 ...
    assert float(TaskRange._statistic(train, check.task_state(0)["memory"]).max()) == 0.0
    # ... the range is what an image unseen by the memory reaches, so new normal images of the task fit in it
    assert float(check.task_state(0)["range"]) > 0
    fresh = check.check(_task(0.0, 40, seed=1), torch.zeros(40, dtype=torch.long))
    assert not fresh.no_learned_task.any()
    assert float((fresh.distance / (fresh.threshold / 1.35)).max()) < 1.35


def test_unseen_images_are_flagged_and_anomalous_ones_of_a_learned_task_are_not():
    check = TaskRange(memory_size=200, margin=1.35)
    check.add_task(0, _task(0.0, 20, seed=0), seed=0)
    check.add_task(1, _task(6.0, 20, seed=1), seed=1)
    unseen = _task(-6.0, 10, seed=2)
    defective = _task(6.0, 10, seed=3)
    defective[:, :2] += 20.0  # a defect on half of each image's rows: far from everything learned
    normal = _task(0.0, 10, seed=4)
    images = torch.cat([unseen, defective, normal])
    routed = torch.tensor([0] * 10 + [1] * 10 + [0] * 10)
    result = check.check(images, routed)
    assert result.no_learned_task.tolist() == [True] * 10 + [False] * 20
    # the defect covers half the patches; the quarter that fits the task best decides
    assert QUANTILE < 0.5
    # routed to the wrong learned task, an image of the other one is still of a learned task
    wrong = check.check(normal, torch.ones(10, dtype=torch.long))
    assert not wrong.no_learned_task.any() and (wrong.distance > wrong.threshold).all()


def test_each_task_keeps_its_own_state_and_a_restored_check_decides_the_same():
    check = TaskRange(memory_size=50, margin=1.35)
    check.add_task(0, _task(0.0, 12, seed=0), seed=7)
    before = check.task_state(0)
    check.add_task(1, _task(4.0, 12, seed=1), seed=8)
    after = check.task_state(0)
    assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise
    assert before["memory"].shape == (50, 8) and before["memory"].dtype == torch.float16
    assert check.task_bytes(0) == 50 * 8 * 2 + 8
    restored = TaskRange(memory_size=50, margin=1.35)
    for t in (0, 1):
        restored.load_task_state(t, check.task_state(t))
    query, routed = torch.cat([_task(0.0, 5, seed=3), _task(-5.0, 5, seed=4)]), torch.zeros(10, dtype=torch.long)
    a, b = check.check(query, routed), restored.check(query, routed)
    assert torch.equal(a.distance, b.distance) and torch.equal(a.no_learned_task, b.no_learned_task)
    # the same seed draws the same memory; another seed another one
    again = TaskRange(memory_size=50, margin=1.35)
    again.add_task(0, _task(0.0, 12, seed=0), seed=7)
    assert torch.equal(again.task_state(0)["memory"], before["memory"])
    other = TaskRange(memory_size=50, margin=1.35)
    other.add_task(0, _task(0.0, 12, seed=0), seed=9)
    assert not torch.equal(other.task_state(0)["memory"], before["memory"])


def test_a_checkpoint_without_ranges_says_nothing():
    check = TaskRange(memory_size=10, margin=1.35)
    check.load_task_state(0, {"mean": torch.zeros(3)})  # a router's state only: from before the check
    assert not check.complete(1)


# ------------------------------------------------------------------------------------------ end to end

LEARNED = ["leather", "grid", "transistor"]
UNSEEN = ["bottle", "screw"]


@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory):
    """The nearest-neighbour reference (the check does not depend on the model) on 3 classes of a 5-class
    tiny benchmark, with the real offline ImageNet weights: the check measures features."""
    data = tiny_benchmark(tmp_path_factory.mktemp("unseen") / "synth", classes=LEARNED + UNSEEN)
    runs = data.parent / "runs"
    result = cli("train", "--data_path", data, "--runs_dir", runs, "--task_classes", *LEARNED, "--model", "knn",
                 "--img_size", "64", "--embed_dim", "32", "--device", "cpu", "--heatmaps", "0", "--quiet")
    assert result.code == 0, result.err
    return data, Path(result.last_line.removeprefix("run: "))


def test_no_test_image_of_a_learned_class_is_said_to_be_of_no_learned_task(unseen_run):
    _, run = unseen_run
    records = [json.loads(line) for line in (run / "per_image.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 10 and {r["ground_truth"] for r in records} == {0, 1}
    assert not any(r["no_learned_task"] for r in records)
    assert all(r["task_range_distance"] <= r["task_range_threshold"] for r in records)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["routing"]["no_learned_task"]["images"] == 0
    assert metrics["routing"]["no_learned_task"]["of"] == 30
    assert all(m["no_learned_task_rate"] == 0.0 for m in metrics["final"]["per_class"].values())
    page = (run / "report" / "index.html").read_text()
    assert "Said to be of no learned task: 0 of 30 test images" in page


def test_predict_says_an_image_of_an_unseen_class_or_a_photo_is_of_no_learned_task(unseen_run, tmp_path):
    import matplotlib.cbook

    data, run = unseen_run
    unseen = [p for c in UNSEEN for p in sorted((data / c / "test").glob("*/*.png"))]
    photo = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # a real photo, offline
    learned = [p for c in LEARNED for p in sorted((data / c / "test").glob("*/*.png"))[::3]]
    out = tmp_path / "pred"
    result = cli("predict", "--run", run, *unseen, photo, *learned, "--out", out, "--quiet")
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    flagged = [r["no_learned_task"] for r in rows]
    assert flagged == [True] * (len(unseen) + 1) + [False] * len(learned)
    for row in rows[: len(unseen) + 1]:
        assert row["anomalous"] is None and row["task_range_distance"] > row["task_range_threshold"]
    assert result.out.count("no-learned-task") == len(unseen) + 1
    page = (out / "predictions.html").read_text()
    assert page.count('data-decision="no-learned-task"') == len(unseen) + 1
