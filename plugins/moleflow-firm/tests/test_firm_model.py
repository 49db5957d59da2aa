"""The `firm` model through moleflow's own machinery: discovery via the installed distribution, a tiny
end-to-end run, zero forgetting, options, and the loss/option contract."""

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
    from moleflow.continual.fit import FitSettings
    from moleflow_firm.model import TaskHead
    from moleflow_firm.options import FIRMOptions
    from moleflow_firm.patches import PatchPools
    from moleflow_firm.train import train_head

    head = TaskHead(4, 4, 3)
    pools = PatchPools(normal=torch.randn(10, 4), outlier=torch.randn(3, 4))
    settings = FitSettings(2, 4, 1e-3, 0.0, 1.0, 0, CPU, progress=False)
    nan_objective = lambda out: out["z1"].sum() * float("nan")  # noqa: E731
    with pytest.raises(MoleflowError, match=r"task 7 \(x\).*epoch 1, step 1"):
        train_head(head, pools, list(head.parameters()), nan_objective, settings, FIRMOptions(), label="task 7 (x)")


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

    cfg = _cfg(bench, tmp_path, "--model_opt", "memory=300", "synth_per_image=1")
    run = run_training(cfg, progress=False, log=lambda *_: None)
    m = run.read_json("metrics.json")
    assert m["routing"]["accuracy"] == 1.0
    assert m["continual"]["bwt"]["image_auroc"] == 0.0 and m["continual"]["fm"]["image_auroc"] == 0.0
    d, proj = 32, 64  # head D->D->64, feature mean/std (D each), memory (300 x 64), Mahalanobis mean + precision
    per_task = (d * d + d) + (d * proj + proj) + 2 * d + 300 * proj + proj + proj * proj
    assert m["params"] == {"shared": 0, "per_task": [per_task] * 3}
    # a random backbone at 64 px is weak, but the contrastive head must still find the defects better than chance
    assert m["final"]["mean"]["pixel_auroc"] > 0.55
    before = m["final"]["per_class"]
    assert evaluate_run(run.path, progress=False).read_json("metrics.json")["final"]["per_class"] == before


@pytest.mark.parametrize("strategy, forgets", [("moleflow", False), ("finetune", True)])
def test_task0_scores_survive_task1_bitwise(bench, tmp_path, prepared, strategy, forgets):
    state = _state(_cfg(bench, tmp_path, "--strategy", strategy, "--model_opt", "synth_per_image=1"), prepared)
    test0 = prepared[0][0].tests[0].inputs
    state.train_task(0, None)
    model_task = state.strategy.model_task(0)
    before = state.model.patch_scores(test0, model_task)
    state.train_task(1, None)
    after = state.model.patch_scores(test0, model_task)
    assert before.shape == (len(test0), *prepared[1].grid)
    # finetune retrains the single head on task 1: the same check fails there, so it can detect forgetting
    assert torch.equal(before, after) is not forgets


def test_model_opt_reaches_the_model(bench, tmp_path, prepared):
    import dataclasses

    opts = ["score=mahalanobis", "knn=5", "proj_dim=8", "memory=50", "anomalies=cutpaste,noise", "synth_per_image=1"]
    state = _state(_cfg(bench, tmp_path, "--model_opt", *opts), prepared)
    state.train_task(0, None)
    model, test0 = state.model, prepared[0][0].tests[0].inputs
    assert (model.opts.score, model.opts.knn, model.opts.anomalies) == ("mahalanobis", 5, ("cutpaste", "noise"))
    assert model.heads["0"].memory.shape == (50, 8)  # 512 training patches, subsampled to memory=50
    scores = {}
    for score, k in (("mahalanobis", 5), ("knn", 5), ("knn", 1)):
        model.opts = dataclasses.replace(model.opts, score=score, knn=k)
        scores[score, k] = model.patch_scores(test0, 0)
    assert not torch.equal(scores["mahalanobis", 5], scores["knn", 5])
    assert (scores["knn", 5] >= scores["knn", 1]).all() and not torch.equal(scores["knn", 5], scores["knn", 1])


def test_run_loss_is_used_when_it_names_firm(bench, tmp_path, prepared):
    state = _state(_cfg(bench, tmp_path, "--loss", "firm=1", "--model_opt", "synth_per_image=1"), prepared)
    assert state.model.use_run_loss
    calls = []
    new_loss = state.new_loss

    def spying_loss():
        loss = new_loss()
        original = loss.__call__  # bound before the class swap below (__call__ is looked up on the type)
        spy = type("Spy", (type(loss),), {"__call__": lambda self, out, batch=None: calls.append(sorted(out))
                                          or original(out, batch)})
        loss.__class__ = spy
        return loss

    state.new_loss = spying_loss
    state.train_task(0, None)
    assert calls and calls[0] == ["labels", "z1", "z2"]
    # the run's firm term takes its options from --loss_opt
    tuned = _state(_cfg(bench, tmp_path, "--loss", "firm=1", "--loss_opt", "firm.tau=0.3", "firm.mode=pairwise"),
                   prepared).new_loss().terms[0].fn
    assert (tuned.tau, tuned.mode) == (0.3, "pairwise")


@pytest.mark.parametrize("extra, match", [
    (["--model_opt", "knn=0"], "knn=0"),
    (["--model_opt", "colour=red"], "unknown option"),
    (["--model_opt", "anomalies=blur"], "anomalies"),
    (["--loss", "firm=1", "--model_opt", "tau=0.2"], "use --loss_opt firm.tau=0.2 instead"),
    (["--loss", "latent_l1=1"], "use --loss firm=1"),
])
def test_bad_options_fail_before_training(bench, tmp_path, extra, match):
    from moleflow.continual.trainer import build_model

    with pytest.raises(MoleflowError, match=match):
        build_model(_cfg(bench, tmp_path, *extra), 32, (8, 8), {})



def test_bad_model_opt_fails_before_any_image_is_read(tmp_path):
    from moleflow.testing import model_opt_error

    assert "colour" in model_opt_error("firm", "colour=red", tmp_path)
