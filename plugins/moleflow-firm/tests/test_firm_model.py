"""The `firm` model through moleflow's own machinery: discovery via the installed distribution, a tiny
end-to-end run, zero forgetting, its options as flags, and its loss (--loss with the firm term of --tau/--mode)."""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from moleflow import registry  # noqa: E402
from moleflow.errors import MoleflowError  # noqa: E402

PLUGIN_DIR = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dist():
    try:
        return distribution("moleflow-firm")
    except PackageNotFoundError:
        pytest.fail("moleflow-firm is not installed: run ./run.sh test (it installs everything under plugins/)")


def test_components_come_from_the_installed_distribution(dist):
    assert {(ep.group, ep.name) for ep in dist.entry_points} == {("moleflow.models", "firm"),
                                                                 ("moleflow.losses", "firm")}
    for group in ("models", "losses"):
        found = {c.name: c for c in registry.components(group)}
        assert found["firm"].distribution == "moleflow-firm" and found["firm"].version == dist.version
    assert registry.get("models", "firm").input_kind == "images"
    assert registry.get("losses", "firm").reads == ("z1", "z2", "labels")
    assert str(PLUGIN_DIR) not in [str(Path(p).resolve()) for p in sys.path if p]


def test_loss_is_a_composite_component():
    from moleflow.losses.compose import CompositeLoss

    loss = CompositeLoss(["firm=2"], model_name="firm")
    z = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    total, parts = loss({"z1": z, "z2": z, "labels": torch.tensor([0, 0, -1, -1])})
    assert total.item() == pytest.approx(2 * parts["firm"])
    with pytest.raises(MoleflowError, match="needs model output 'labels'"):
        loss({"z1": z, "z2": z})


def test_outlier_cells_follow_the_mask():
    from moleflow_firm.patches import outlier_cells

    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, :4, :4] = 1  # exactly cell (0,0) of a 2x2 grid
    masks[1, 0, 7, 7] = 1  # one pixel: 1/16 of cell (1,1), below 0.25, kept as the most-covered cell
    cells = outlier_cells(masks, (2, 2), 0.25)
    assert cells[0].tolist() == [[True, False], [False, False]]
    assert cells[1].tolist() == [[False, False], [False, True]]


def test_nan_loss_names_task_epoch_and_step():
    from moleflow.training import FitSettings
    from moleflow_firm.model import TaskHead
    from moleflow_firm.options import FIRMOptions
    from moleflow_firm.patches import PatchPools
    from moleflow_firm.train import train_head

    head = TaskHead(4, 4, 3)
    pools = PatchPools(normal=torch.randn(10, 4), outlier=torch.randn(3, 4))
    settings = FitSettings(2, 4, 1e-3, 0.0, 1.0, 0, CPU, progress=False)
    nan_objective = lambda out: out["z1"].sum() * float("nan")  # noqa: E731
    with pytest.raises(MoleflowError, match=r"task 7 \(x\).*epoch 1, step 1.*--tau"):
        train_head(head, pools, list(head.parameters()), nan_objective, settings, FIRMOptions(), label="task 7 (x)")


@pytest.mark.parametrize("mode", ["concat", "pairwise"])
def test_default_loss_trains_exactly_what_the_plain_firm_objective_does(mode):
    """--loss firm=1.0 (the default) with --tau/--mode is the model's own FIRM objective: same head, bit for bit."""
    from moleflow.training import FitSettings
    from moleflow_firm.loss import FIRMLoss
    from moleflow_firm.model import TaskHead
    from moleflow_firm.options import FIRMOptions
    from moleflow_firm.patches import PatchPools
    from moleflow_firm.train import train_head

    opts = FIRMOptions(tau=0.3, mode=mode, batch_patches=4)
    composite = opts.make_loss("firm")
    assert [(t.name, t.weight, t.fn.tau, t.fn.mode, t.fn.outlier_label) for t in composite.terms] == \
        [("firm", 1.0, 0.3, mode, -1)]
    g = torch.Generator().manual_seed(0)
    pools = PatchPools(normal=torch.randn(12, 6, generator=g), outlier=torch.randn(5, 6, generator=g))
    settings = FitSettings(2, 4, 1e-2, 0.0, 1.0, 0, CPU, progress=False)
    trained = []
    for objective in (FIRMLoss(0.3, -1, mode), lambda out: composite(out)[0]):
        torch.manual_seed(1)
        head = TaskHead(6, 5, 3)
        fit = train_head(head, pools, list(head.parameters()), objective, settings, opts, label="t")
        trained.append((fit.epoch_losses, head.state_dict()))
    (losses_a, state_a), (losses_b, state_b) = trained
    assert losses_a == losses_b and fit.steps == 2 * 3  # 12 normal patches in steps of 4, two epochs
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["mlp.0.weight"], TaskHead(6, 5, 3).mlp[0].weight)  # it did train


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from moleflow.testing import tiny_benchmark

    return tiny_benchmark(tmp_path_factory.mktemp("bench") / "synth")


def _cfg(bench, runs, *extra):
    from moleflow.testing import train_config

    return train_config("--data_path", str(bench), "--img_size", "64", "--no_pretrained", "--embed_dim", "32",
                        "--model", "firm", "--runs_dir", str(runs), "--heatmaps", "0", "--device", "cpu",
                        "--num_epochs", "1", "--lr", "1e-3", *extra)


@pytest.fixture(scope="module")
def prepared(bench, tmp_path_factory):
    from moleflow.continual.task_data import prepare_tasks

    tasks, extractor, _ = prepare_tasks(_cfg(bench, tmp_path_factory.mktemp("runs")), CPU, progress=False)
    return tasks, extractor


def _state(cfg, prepared):
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = prepared
    return ContinualRun(cfg, tasks, extractor.dim, extractor.grid, CPU, progress=False)


def test_end_to_end_run_and_checkpoint_round_trip(bench, tmp_path):
    from moleflow.continual.trainer import run_training
    from moleflow.inference import evaluate_run

    cfg = _cfg(bench, tmp_path, "--memory", "300", "--model_opt", "synth_per_image=1")
    run = run_training(cfg, progress=False, log=lambda *_: None)
    m = run.read_json("metrics.json")
    assert m["routing"]["accuracy"] == 1.0
    assert m["continual"]["bwt"]["image_auroc"] == 0.0 and m["continual"]["fm"]["image_auroc"] == 0.0
    d, proj = 32, 64  # head D->D->64, feature mean/std (D each), memory (300 x 64), Mahalanobis mean + precision
    per_task = (d * d + d) + (d * proj + proj) + 2 * d + 300 * proj + proj + proj * proj
    assert m["params"] == {"shared": 0, "per_task": [per_task] * 3}
    # a random backbone at 64 px is weak, but the contrastive head must still find the defects better than chance
    assert m["final"]["mean"]["pixel_auroc"] > 0.55
    # the options are saved typed, by flag name, and the run is rebuilt from them
    saved = run.read_json("config.json")["model"]
    assert saved["name"] == "firm"
    assert (saved["options"]["memory"], saved["options"]["synth_per_image"], saved["options"]["lr"]) == (300, 1, 1e-3)
    assert saved["options"]["loss"] == ["firm=1.0"] and "batch_size" not in saved["options"]
    before = m["final"]["per_class"]
    assert evaluate_run(run.path, progress=False).read_json("metrics.json")["final"]["per_class"] == before


@pytest.mark.parametrize("strategy, forgets", [("moleflow", False), ("finetune", True)])
def test_task0_scores_survive_task1_bitwise(bench, tmp_path, prepared, strategy, forgets):
    state = _state(_cfg(bench, tmp_path, "--strategy", strategy, "--synth_per_image", "1"), prepared)
    test0 = prepared[0][0].tests[0].inputs
    state.train_task(0, None)
    model_task = state.strategy.model_task(0)
    before = state.model.patch_scores(test0, model_task)
    state.train_task(1, None)
    after = state.model.patch_scores(test0, model_task)
    assert before.shape == (len(test0), *prepared[1].grid)
    # finetune retrains the single head on task 1: the same check fails there, so it can detect forgetting
    assert torch.equal(before, after) is not forgets


def test_options_reach_the_model(bench, tmp_path, prepared):
    import dataclasses

    flags = ["--score", "mahalanobis", "--proj_dim", "8", "--memory", "50", "--anomalies", "cutpaste", "noise",
             "--synth_per_image", "1"]
    state = _state(_cfg(bench, tmp_path, *flags), prepared)
    state.train_task(0, None)
    model, test0 = state.model, prepared[0][0].tests[0].inputs
    assert (model.opts.score, model.opts.anomalies) == ("mahalanobis", ("cutpaste", "noise"))
    assert model.heads["0"].memory.shape == (50, 8)  # 512 training patches, subsampled to memory=50
    # --model_opt spells the same options (a list as comma-separated text or JSON)
    same = _cfg(bench, tmp_path, "--model_opt", "score=mahalanobis", "proj_dim=8", "memory=50",
                "anomalies=cutpaste,noise", 'synth_per_image=1').options
    assert same == model.opts == _cfg(bench, tmp_path, *flags[:-5], "--model_opt", 'anomalies=["cutpaste","noise"]',
                                      "--synth_per_image", "1").options
    scores = {}
    for score, k in (("mahalanobis", 1), ("knn", 5), ("knn", 1)):
        model.opts = dataclasses.replace(model.opts, score=score, knn=k)
        scores[score, k] = model.patch_scores(test0, 0)
    assert not torch.equal(scores["mahalanobis", 1], scores["knn", 1])
    assert (scores["knn", 5] >= scores["knn", 1]).all() and not torch.equal(scores["knn", 5], scores["knn", 1])


def test_loss_terms_tau_and_mode_reach_training(bench, tmp_path, prepared, monkeypatch):
    from moleflow.losses.compose import CompositeLoss

    state = _state(_cfg(bench, tmp_path, "--loss", "firm=2", "--tau", "0.3", "--model_opt", "mode=pairwise",
                        "--synth_per_image", "1"), prepared)
    calls = []
    original = CompositeLoss.__call__

    def spy(self, outputs, batch=None):
        calls.append((sorted(outputs), [(t.name, t.weight, t.fn.tau, t.fn.mode) for t in self.terms]))
        return original(self, outputs, batch)

    monkeypatch.setattr(CompositeLoss, "__call__", spy)
    state.train_task(0, None)
    # every step of the head's training goes through the run's --loss, its firm term built from --tau/--mode
    assert calls and all(call == (["labels", "z1", "z2"], [("firm", 2.0, 0.3, "pairwise")]) for call in calls)
    assert len(calls) == state.fit_log[0]["steps"]


def test_mode_flag_is_the_model_option(bench, tmp_path):
    # `--mode` is a prefix of the engine's `--model`: it must reach firm's option, not select a model 'pairwise'
    assert _cfg(bench, tmp_path, "--mode", "pairwise").options.mode == "pairwise"


@pytest.mark.parametrize("extra, match", [
    (["--knn", "0"], r"--knn 0: must be >= 1"),
    (["--model_opt", "colour=red"], "--colour: not an option of model 'firm'"),
    (["--model_opt", "anomalies=blur"], "--anomalies blur: use one of masking"),
    (["--model_opt", "anomalies=[]"], "--anomalies: name at least one of"),
    (["--view_dropout", "1"], r"--view_dropout 1.0: must be in \[0, 1\)"),
    (["--model_opt", "mode=both"], "--mode both: use one of concat, pairwise"),
    (["--score", "mahalanobis", "--knn", "3"], "--knn changes nothing unless --score is knn"),
    (["--knn", "5", "--memory", "2"], "--knn 5: must be <= --memory 2"),
    (["--loss_opt", "firm.tau=0.2"], "use --tau 0.2"),
    (["--loss", "latent_l1=1"], "include firm=W"),
    (["--loss", "firm=1", "center=1"], "--loss center: it reads 'z'"),
    (["--batch_size", "8"], "--batch_size: not a setting, nor an option of model 'firm'"),
])
def test_bad_options_fail_before_any_image_is_read(bench, tmp_path, extra, match):
    with pytest.raises(MoleflowError, match=match):
        _cfg(bench, tmp_path, *extra)


def test_bad_model_opt_fails_through_the_cli_before_any_image_is_read(tmp_path):
    from moleflow.testing import model_opt_error

    assert "colour" in model_opt_error("firm", "colour=red", tmp_path)
    assert "--knn 0: must be >= 1" in model_opt_error("firm", "knn=0", tmp_path / "again")
