"""End-to-end behaviour of the continual trainer on a tiny generated benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import task_scores as _scores, tiny_config
from moleflow.continual.trainer import ContinualRun, run_training
from moleflow.run_folder import RunFolder


@pytest.fixture(scope="session")
def v3_run(tiny_bench, tmp_path_factory):
    cfg = tiny_config(tiny_bench, tmp_path_factory.mktemp("runs"), save_maps=True)
    return run_training(cfg, progress=False, log=lambda *_: None)


def test_run_folder_has_every_artifact(v3_run):
    p = v3_run.path
    for name in ("config.json", "env.json", "metrics.json", "results.csv", "per_image.jsonl", "progress.json"):
        assert (p / name).is_file(), name
    assert (p / "checkpoints" / "task_0.safetensors").is_file() and (p / "checkpoints" / "task_2.safetensors").is_file()
    assert list((p / "heatmaps").rglob("*.png")) and list((p / "tb").rglob("events.out.tfevents*"))
    npz = np.load(p / "maps" / "leather.npz")
    assert npz["maps"].shape[1:] == (64, 64) and npz["maps"].shape[0] == npz["labels"].shape[0]
    m = json.loads((p / "metrics.json").read_text())
    for cls in ("leather", "grid", "transistor"):
        for key in ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "routing_accuracy"):
            assert key in m["final"]["per_class"][cls], key
    assert len(m["continual"]["matrix"]["image_auroc"]) == 3
    assert m["params"]["shared"] > 0 and len(m["params"]["per_task"]) == 3
    assert "bwt" in m["continual"] and "fm" in m["continual"]


def test_metrics_json_auroc_equals_sklearn_on_per_image_scores(v3_run):
    m = v3_run.read_json("metrics.json")
    rows = [json.loads(l) for l in (v3_run.path / "per_image.jsonl").read_text().splitlines()]
    for cls, values in m["final"]["per_class"].items():
        mine = [r for r in rows if r["class"] == cls]
        expected = roc_auc_score([r["ground_truth"] for r in mine], [r["score"] for r in mine])
        assert values["image_auroc"] == pytest.approx(expected, abs=1e-12)


def test_router_finds_every_task_and_detection_beats_chance(v3_run):
    m = v3_run.read_json("metrics.json")
    assert m["routing"]["accuracy"] == 1.0
    assert np.trace(np.array(m["routing"]["confusion"])) == sum(map(sum, m["routing"]["confusion"]))
    # random-init backbone: features are weak, so "above chance" is the honest bar here; the flow's own
    # detection power on informative features is tested in test_detection.py
    assert m["final"]["mean"]["image_auroc"] > 0.6
    assert max(v["image_auroc"] for v in m["final"]["per_class"].values()) > 0.7


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_zero_forgetting_is_bitwise(version, tiny_bench, tiny_tasks, tmp_path):
    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, version=version, num_epochs=3, weight_decay=0.1)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    state.train_task(0, None)
    after0 = _scores(state, tasks[0])
    state.train_task(1, None)
    after1 = [_scores(state, t) for t in tasks[:2]]
    state.train_task(2, None)
    after2 = [_scores(state, t) for t in tasks[:2]]
    assert torch.equal(after0, after1[0]) and torch.equal(after0, after2[0])
    assert torch.equal(after1[1], after2[1])


def test_training_leaves_the_process_rng_alone_and_ignores_its_state(tiny_bench, tiny_tasks, tmp_path):
    """Model init and each task's draws follow the run's seed through a forked generator: the caller's
    torch RNG state is the same after building and training, and disturbing it changes no score."""
    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, num_epochs=1)
    scores = []
    for disturb in (False, True):
        torch.manual_seed(1234)
        if disturb:
            torch.rand(7)
        before = torch.get_rng_state()
        state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
        state.train_task(0, None)
        state.train_task(1, None)
        assert torch.equal(torch.get_rng_state(), before)
        scores.append(_scores(state, tasks[1]))
    assert torch.equal(scores[0], scores[1])


def test_finetune_forgets_where_moleflow_does_not(tiny_bench, tiny_tasks, tmp_path):
    tasks, extractor = tiny_tasks
    changes = {}
    for strategy in ("moleflow", "finetune"):
        cfg = tiny_config(tiny_bench, tmp_path, strategy=strategy, num_epochs=4)
        state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
        state.train_task(0, None)
        before = _scores(state, tasks[0])
        state.train_task(1, None)
        state.train_task(2, None)
        changes[strategy] = (_scores(state, tasks[0]) - before).abs().mean().item()
    assert changes["moleflow"] == 0.0
    assert changes["finetune"] > 0.05 * abs(before).mean().item() + 1e-3


def test_evaluate_from_checkpoints_gives_identical_scores(v3_run, tmp_path):
    from moleflow.inference import evaluate_run

    before = v3_run.read_json("metrics.json")["final"]["per_class"]
    rows_before = (v3_run.path / "per_image.jsonl").read_text()
    evaluate_run(v3_run.path, progress=False)
    assert v3_run.read_json("metrics.json")["final"]["per_class"] == before
    assert (v3_run.path / "per_image.jsonl").read_text() == rows_before


def test_resume_after_interruption_matches_uninterrupted_run(tiny_bench, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_bench, tmp_path / "a", num_epochs=3, heatmaps=0)
    full = run_training(cfg, progress=False, log=lambda *_: None).read_json("metrics.json")

    from moleflow.flow.model import MoLEFlow

    real_fit = MoLEFlow.fit_task

    def crash_on_task_2(self, task_id, inputs, params, context):
        if context.label.startswith("task 2"):
            raise KeyboardInterrupt
        return real_fit(self, task_id, inputs, params, context)

    cfg_b = tiny_config(tiny_bench, tmp_path / "b", num_epochs=3, heatmaps=0)
    monkeypatch.setattr(MoLEFlow, "fit_task", crash_on_task_2)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg_b, progress=False, log=lambda *_: None)
    monkeypatch.setattr(MoLEFlow, "fit_task", real_fit)
    (partial,) = [p for p in (tmp_path / "b").rglob("config.json")]
    assert RunFolder.open(partial.parent).read_json("progress.json")["completed_tasks"] == 2
    assert not (partial.parent / "metrics.json").exists()
    resumed = run_training(cfg_b, progress=False, resume=str(partial.parent), log=lambda *_: None)
    got = resumed.read_json("metrics.json")
    assert got["final"]["per_class"] == full["final"]["per_class"]
    assert got["continual"] == full["continual"]


def test_versions_differ_where_they_should(tiny_bench, tiny_tasks, tmp_path):
    from moleflow.flow.adapters import FiLMAdapter, InstanceNormAdapter
    from moleflow.flow.lora import LoRALinear

    tasks, extractor = tiny_tasks
    built = {}
    for version in ("v1", "v2", "v3"):
        cfg = tiny_config(tiny_bench, tmp_path, version=version)
        state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
        state.strategy.begin_task(0, "leather")
        state.strategy.end_task(0)
        state.strategy.begin_task(1, "grid")
        built[version] = state.model
    lora = {v: next(m for m in built[v].modules() if isinstance(m, LoRALinear)) for v in built}
    # scaling: alpha/(2 rank) in v1, alpha/rank from v2
    assert lora["v1"].scale * 2 == pytest.approx(lora["v2"].scale) == pytest.approx(lora["v3"].scale)
    # task-0 expert: none in v1, present from v2
    assert not lora["v1"].has_expert(0) and lora["v2"].has_expert(0)
    assert lora["v1"].has_expert(1)
    # adapter type: InstanceNorm (tasks >= 1 only) in v1/v2, FiLM on every task in v3
    kinds = {v: {type(m) for m in built[v].modules()} for v in built}
    assert InstanceNormAdapter in kinds["v1"] and FiLMAdapter not in kinds["v1"]
    assert FiLMAdapter in kinds["v3"] and InstanceNormAdapter not in kinds["v3"]
    counts = {v: built[v].param_counts()["per_task"] for v in built}
    assert counts["v1"][0] == 0 and counts["v2"][0] > 0


def test_nan_loss_stops_with_a_clear_error(tiny_bench, tiny_tasks, tmp_path):
    import dataclasses

    from moleflow.errors import MoleflowError

    tasks, extractor = tiny_tasks
    poisoned = dataclasses.replace(tasks[0].train, patch=tasks[0].train.patch.clone())
    poisoned.patch[3, 0, 0, 0] = float("nan")  # one bad feature must stop the task, not train on garbage
    bad_tasks = [dataclasses.replace(tasks[0], train=poisoned, train_inputs=poisoned.patch), *tasks[1:]]
    cfg = tiny_config(tiny_bench, tmp_path)
    state = ContinualRun(cfg, bad_tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    with pytest.raises(MoleflowError, match=r"task 0 \(leather\): loss became nan at epoch 1, step \d+"):
        state.train_task(0, None)


def test_later_tasks_train_to_losses_like_task_zero(tiny_bench, tiny_tasks, tmp_path):
    """Each task standardises with its own statistics. With task 0's statistics for every task, channels
    dead on leather but active on grid blew the later tasks' inputs up (training losses of ~50 here,
    1e12 on the 128 px benchmark), and their experts learnt nothing."""
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, num_epochs=3)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    for t in range(3):
        state.train_task(t, None)
    losses = [entry["final_loss"] for entry in state.fit_log]
    assert all(abs(loss) < 3.0 for loss in losses), losses  # NLL per dimension of standardised inputs
    for t in (1, 2):  # every task's inputs reach its flow on the standardised scale
        x = state.model.input_stats[str(t)](tasks[t].train_inputs).reshape(-1, extractor.dim)
        assert x.std(0).max() < 1.01 and x.mean(0).abs().max() < 1e-3
