"""The `knn` reference model: scores equal a brute-force nearest-neighbour distance, it runs through the
same task loop with zero forgetting and checkpoints, and bad options fail before any image is read."""

from __future__ import annotations

import pytest
import torch
from helpers import run_per_task_model, tiny_config

from moleflow import registry
from moleflow.baselines.knn import KNNOptions, PatchKNN
from moleflow.contract import FitContext
from moleflow.errors import MoleflowError

CONTEXT = FitContext(seed=0, device=torch.device("cpu"), label="task 0", progress=False)


def _fitted(train: torch.Tensor, **options) -> PatchKNN:
    model = PatchKNN(train.shape[-1], KNNOptions(**options))
    model.begin_task(0)
    model.fit_task(0, train, [], CONTEXT)
    return model


def test_registered_through_the_installed_distribution():
    component = next(c for c in registry.components("models") if c.name == "knn")
    assert component.distribution == "moleflow" and registry.get("models", "knn") is PatchKNN


@pytest.mark.parametrize("k", [1, 3])
def test_scores_are_the_mean_distance_to_the_k_nearest_training_patches(k):
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(5, 4, 4, 6, generator=gen), torch.randn(2, 4, 4, 6, generator=gen)
    scores = _fitted(train, k=k, chunk=7).patch_scores(test, 0)  # chunk 7: blocks that do not divide 32
    memory = train.reshape(-1, 6)
    for b, r, c in [(0, 0, 0), (1, 3, 2), (0, 2, 3)]:
        distances = sorted(float((test[b, r, c] - m).norm()) for m in memory)
        assert scores[b, r, c].item() == pytest.approx(sum(distances[:k]) / k, rel=1e-5)
    # a training patch is its own nearest neighbour (cdist's matrix-product form leaves ~1e-6 in the
    # squared distance, i.e. ~1e-3 after the square root, against typical distances of ~3 here)
    assert _fitted(train).patch_scores(train[:1], 0).abs().max().item() < 5e-3


def test_memory_is_a_seeded_subsample():
    train = torch.randn(10, 4, 4, 3)
    a, b = _fitted(train, memory=50), _fitted(train, memory=50)
    assert a.task_state(0)["memory"].shape == (50, 3) and torch.equal(a.task_state(0)["memory"], b.task_state(0)["memory"])
    assert a.param_counts() == {"shared": 0, "per_task": [150]}


def test_through_the_trainer_zero_forgetting_checkpoints_and_detection(tiny_bench, tiny_tasks, tmp_path):
    mean = run_per_task_model(tiny_config(tiny_bench, tmp_path, model="knn"), tiny_tasks)
    # the tiny benchmark's defects are large and contrasted: nearest-neighbour distances find them
    assert mean["pixel_auroc"] > 0.6


def test_finetune_replaces_the_one_memory_and_resumes_from_the_whole_state(tiny_bench, tiny_tasks, tmp_path):
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, model="knn", strategy="finetune")
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    state.train_task(0, None)
    state.train_task(1, None)
    memory = state.model.task_state(0)["memory"]
    assert torch.equal(memory, tasks[1].train_inputs.reshape(-1, extractor.dim))  # task 1's patches only
    fresh = PatchKNN(extractor.dim)
    fresh.load_state_dict(state.model.state_dict())
    assert torch.equal(fresh.patch_scores(tasks[0].tests[0].test.patch, 0), state.model.patch_scores(tasks[0].tests[0].test.patch, 0))


@pytest.mark.parametrize("option, message", [
    ("k=0", "--k 0: must be >= 1"),
    ("memory=-5", "--memory -5: must be >= 0"),
    ("chunk=0", "--chunk 0: must be >= 1"),
    ("k=2.5", "--k: cannot use 2.5 (expected int"),
    ("radius=3", "--radius: not an option of model 'knn' (its options: k, memory, chunk)"),
])
def test_bad_options_fail_before_any_image_is_read(option, message, tmp_path):
    from moleflow.testing import model_opt_error

    assert message in model_opt_error("knn", option, tmp_path)


def test_more_neighbours_than_training_patches_is_a_clear_error():
    with pytest.raises(MoleflowError, match="--k 40 but task 0 has only 32 training patches"):
        _fitted(torch.randn(2, 4, 4, 3), k=40)
