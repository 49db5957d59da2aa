"""`--strategy separate`: a fresh model per task, nothing shared (the no-sharing ceiling)."""

from __future__ import annotations

import pytest
import torch

from helpers import run_per_task_model, tiny_config, trained_state
from helpers import task_scores as _scores
from moleflow.continual.separate import SeparateModels
from moleflow.continual.trainer import ContinualRun, run_training
from moleflow.errors import MoleflowError


def test_each_task_is_task_zero_of_its_own_flow(tiny_bench, tiny_tasks, tmp_path):
    tasks, _ = tiny_tasks
    separate, shared = (trained_state(tiny_config(tiny_bench, tmp_path, strategy=strategy, num_epochs=2), tiny_tasks, 2)
                        for strategy in ("separate", "moleflow"))
    assert isinstance(separate.model, SeparateModels)
    # task 0 is the run's own first model: bitwise the moleflow strategy's task 0
    assert torch.equal(_scores(separate, tasks[0]), _scores(shared, tasks[0]))
    # task 1 trained a whole flow of its own: its base differs from task 0's, and shares no tensor with it
    first, second = separate.model.models
    base0, base1 = first.base_parameters(), second.base_parameters()
    assert len(base0) == len(base1) and not any(torch.equal(a, b) for a, b in zip(base0, base1))
    assert not {p.data_ptr() for p in first.parameters()} & {p.data_ptr() for p in second.parameters()}
    assert not torch.equal(_scores(separate, tasks[1]), _scores(shared, tasks[1]))
    # what a task adds is its whole model; nothing is shared
    counts = separate.model.param_counts()
    whole = first.param_counts()
    assert counts == {"shared": 0, "per_task": [whole["shared"] + whole["per_task"][0]] * 2}
    assert separate.model.shared_state() == {}
    # each task's checkpoint holds its whole model: base, expert and statistics
    state1 = separate.model.task_state(1)
    assert any(k.startswith("shared.flow.") for k in state1) and any(k.startswith("task.input_stats.0") for k in state1)


def test_separate_run_routes_forgets_nothing_and_reevaluates(tiny_bench, tiny_tasks, tmp_path):
    """Through the trainer: zero forgetting, perfect routing, `moleflow eval` from the per-task checkpoints
    (each holds its task's whole model) reproduces the metrics, and no shared checkpoint is written."""
    cfg = tiny_config(tiny_bench, tmp_path, strategy="separate", num_epochs=2, heatmaps=0)
    mean = run_per_task_model(cfg, tiny_tasks)
    assert mean["image_auroc"] > 0.5
    (run_dir,) = [p.parent for p in (tmp_path / "test").rglob("metrics.json")]
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert not [n for n in names if n.startswith("shared_")], names


def test_separate_wraps_any_model(tiny_bench, tiny_tasks, tmp_path):
    """Model-agnostic: a knn memory per task (already per task) gives the same scores under both strategies."""
    tasks, _ = tiny_tasks
    scores = {}
    for strategy in ("moleflow", "separate"):
        state = trained_state(tiny_config(tiny_bench, tmp_path, model="knn", strategy=strategy), tiny_tasks, 2)
        scores[strategy] = [_scores(state, t) for t in tasks[:2]]
    assert all(torch.equal(a, b) for a, b in zip(scores["moleflow"], scores["separate"]))


def test_separate_resumes_like_an_uninterrupted_run(tiny_bench, tmp_path, monkeypatch):
    from moleflow.flow.model import MoLEFlow
    from moleflow.run_folder import RunFolder

    full = run_training(tiny_config(tiny_bench, tmp_path / "a", strategy="separate", num_epochs=1, heatmaps=0),
                        progress=False, log=lambda *_: None).read_json("metrics.json")
    real_fit = MoLEFlow.fit_task

    def crash_on_task_2(self, task_id, inputs, params, context):
        if context.label.startswith("task 2"):
            raise KeyboardInterrupt
        return real_fit(self, task_id, inputs, params, context)

    cfg_b = tiny_config(tiny_bench, tmp_path / "b", strategy="separate", num_epochs=1, heatmaps=0)
    monkeypatch.setattr(MoLEFlow, "fit_task", crash_on_task_2)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg_b, progress=False, log=lambda *_: None)
    monkeypatch.setattr(MoLEFlow, "fit_task", real_fit)
    (partial,) = [p.parent for p in (tmp_path / "b").rglob("config.json")]
    assert RunFolder.open(partial).read_json("progress.json")["completed_tasks"] == 2
    resumed = run_training(cfg_b, progress=False, resume=str(partial), log=lambda *_: None).read_json("metrics.json")
    assert resumed["final"]["per_class"] == full["final"]["per_class"]


def test_a_shared_checkpoint_is_refused(tiny_bench, tiny_tasks, tmp_path):
    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, strategy="separate")
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    with pytest.raises(MoleflowError, match="shares nothing"):
        state.model.load_shared_state({"x": torch.zeros(1)})
