"""Task streams (1xN, N-M groups, published scenarios), N-M runs end to end, and the replay strategy."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from moleflow.data.streams import MVTEC15, VISA12, scenario_sizes, task_streams
from moleflow.errors import MoleflowError
from moleflow.testing import train_config


def test_named_streams_expand_to_one_class_per_task():
    assert task_streams(["mvtec15"]) == [[c] for c in MVTEC15]
    assert MVTEC15 == tuple(sorted(MVTEC15)) and len(MVTEC15) == 15  # the literature's alphabetical 1x15 order
    assert task_streams(["visa12"]) == [[c] for c in VISA12] and len(VISA12) == 12
    assert task_streams(["leather", "grid"]) == [["leather"], ["grid"]]


def test_plus_groups_classes_into_one_task():
    assert task_streams(["leather+grid", "transistor"]) == [["leather", "grid"], ["transistor"]]
    assert task_streams(["a+b+c"]) == [["a", "b", "c"]]


@pytest.mark.parametrize("scenario, sizes", [
    ("14-1", [14, 1]), ("10-5", [10, 5]), ("3x5", [3, 3, 3, 3, 3]), ("10-1x5", [10, 1, 1, 1, 1, 1]),
])
def test_published_scenarios_split_mvtec_in_alphabetical_order(scenario, sizes):
    tasks = task_streams(["mvtec15"], scenario)
    assert [len(t) for t in tasks] == sizes
    assert [c for t in tasks for c in t] == list(MVTEC15)
    assert scenario_sizes(scenario, 15) == sizes


@pytest.mark.parametrize("items, scenario, message", [
    (["mvtec15"], "10-4", "splits 14 classes, but the class list has 15"),
    (["mvtec15"], "five", r"expected \[BASE-\]SIZE\[xSTEPS\]"),
    (["mvtec15"], "15", r"expected \[BASE-\]SIZE\[xSTEPS\]"),
    (["mvtec15"], "15-0", "at least one class"),
    (["a+b", "c"], "2-1", "groups the classes itself"),
    (["a", "b", "a"], "", "lists a twice"),
    (["a+", "b"], "", "empty class name"),
    (["a+b", "b"], "", "lists b twice"),
])
def test_bad_streams_are_one_clear_error(items, scenario, message):
    with pytest.raises(MoleflowError, match=message):
        task_streams(items, scenario)


def test_scenario_defaults_to_mvtec15_and_bad_streams_fail_before_any_image_is_read(tmp_path):
    cfg = train_config("--data_path", str(tmp_path / "nowhere"), "--scenario", "10-5")
    assert cfg.data.task_classes == ["mvtec15"]
    assert [len(t) for t in cfg.data.tasks] == [10, 5]
    given = train_config("--task_classes", "a", "b", "c", "--scenario", "2-1")
    assert given.data.tasks == [["a", "b"], ["c"]]
    with pytest.raises(MoleflowError, match="lists grid twice"):
        train_config("--task_classes", "grid", "leather+grid")


def test_n_m_run_trains_a_task_on_two_classes_and_reports_per_class_metrics(tiny_bench, tmp_path):
    """task 0 = {leather, grid}, task 1 = {transistor}: one expert and one router prototype per task,
    metrics per class, routing scored against the task holding each class, nothing forgotten."""
    from moleflow.continual.task_data import prepare_tasks
    from moleflow.continual.trainer import run_training

    cfg = tiny_config(tiny_bench, tmp_path, task_classes=["leather+grid", "transistor"], num_epochs=2)
    tasks, _, _ = prepare_tasks(cfg, torch.device("cpu"), progress=False)
    assert [t.name for t in tasks] == ["leather+grid", "transistor"]
    assert [[c.class_name for c in t.tests] for t in tasks] == [["leather", "grid"], ["transistor"]]
    assert len(tasks[0].train) == 2 * len(tasks[1].train)  # both classes' training images in task 0
    assert tasks[0].train.paths[0].split("/")[-4] == "leather" and tasks[0].train.paths[-1].split("/")[-4] == "grid"

    run = run_training(cfg, progress=False, log=lambda *_: None)
    metrics = run.read_json("metrics.json")
    assert metrics["tasks"] == ["leather+grid", "transistor"]
    assert metrics["classes"] == ["leather", "grid", "transistor"]
    assert metrics["class_task"] == {"leather": 0, "grid": 0, "transistor": 1}
    assert set(metrics["final"]["per_class"]) == {"leather", "grid", "transistor"}
    assert len(metrics["routing"]["confusion"]) == 2  # per task, not per class
    assert metrics["routing"]["accuracy"] == 1.0
    matrix = metrics["continual"]["matrix"]["image_auroc"]
    assert len(matrix) == 2 and matrix[0][1] is None
    per_class = metrics["final"]["per_class"]
    assert matrix[1][0] == pytest.approx((per_class["leather"]["image_auroc"] + per_class["grid"]["image_auroc"]) / 2)
    assert metrics["continual"]["fm"]["image_auroc"] == 0.0  # task 0's expert is frozen: bitwise the same scores
    assert metrics["continual"]["forgetting_avalanche"]["image_auroc"] == 0.0
    rows = run.read_per_image()
    assert {r["task"] for r in rows if r["class"] == "grid"} == {0}


def test_replay_trains_on_the_new_task_plus_a_fixed_seeded_memory(tiny_bench, tiny_tasks, tmp_path):
    from moleflow.continual.strategies import ReplayStrategy
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, strategy="replay", replay_per_task=3, version="v9", num_epochs=1)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    strategy = state.strategy
    assert isinstance(strategy, ReplayStrategy) and strategy.single_model
    assert torch.equal(strategy.training_inputs(0, tasks), tasks[0].train_inputs)  # nothing to replay yet
    second = strategy.training_inputs(2, tasks)
    assert len(second) == len(tasks[2].train_inputs) + 3 + 3
    kept = strategy.memory_rows(0, len(tasks[0].train_inputs))
    assert len(kept) == 3 and torch.equal(second[len(tasks[2].train_inputs):][:3], tasks[0].train_inputs[kept])
    assert torch.equal(strategy.memory_rows(0, len(tasks[0].train_inputs)), kept)  # the same memory every round
    other_seed = ReplayStrategy(state.model, 3, per_task=3, seed=1)
    assert not torch.equal(other_seed.memory_rows(0, len(tasks[0].train_inputs)), kept)
    everything = ReplayStrategy(state.model, 3, per_task=1000, seed=0)
    assert len(everything.training_inputs(1, tasks)) == len(tasks[1].train_inputs) + len(tasks[0].train_inputs)

    state.train_task(0, None)
    before = state.model.patch_scores(tasks[0].tests[0].test.patch, 0)
    state.train_task(1, None)  # one shared flow, trained on: task 0's scores move (unlike MoLE-Flow's)
    assert not torch.equal(state.model.patch_scores(tasks[0].tests[0].test.patch, 0), before)


def test_replay_per_task_is_refused_unless_the_strategy_replays(tmp_path):
    with pytest.raises(MoleflowError, match="--replay_per_task changes nothing unless --strategy reads it"):
        train_config("--data_path", str(tmp_path), "--replay_per_task", "5")
    assert train_config("--strategy", "replay", "--replay_per_task", "5").train.replay_per_task == 5
    with pytest.raises(MoleflowError, match="must be >= 1"):
        train_config("--strategy", "replay", "--replay_per_task", "0")
