"""The `discriminator` model: the home of the supervised and structural catalogue losses (bce, iou,
orthogonality, selector_entropy, selector_diversity, distinctness). Each of them must train something:
dropping one term changes the trained weights; the model detects the tiny benchmark's defects through the
same task loop with zero forgetting; its default loss applies only when --loss is not given."""

from __future__ import annotations

import pytest
import torch
from helpers import run_per_task_model, tiny_config

from moleflow import registry
from moleflow.baselines.discriminator import DiscriminatorOptions, PatchDiscriminator
from moleflow.contract import FitContext, ModelContext
from moleflow.errors import MoleflowError
from moleflow.rng import seeded_rng
from moleflow.testing import model_opt_error, train_config

CATALOGUE = ["bce=1.0", "iou=1.0", "orthogonality=0.01", "selector_entropy=0.1", "selector_diversity=0.1",
             "distinctness=0.1"]


#: the loop of a direct fit: the model's own options (epochs, batch, lr, ...), the seed from the FitContext
LOOP = dict(num_epochs=3, batch_size=4, lr=1e-2, weight_decay=0.0, grad_clip=1.0)


def _trained(feats: torch.Tensor, terms: list[str], **options) -> PatchDiscriminator:
    model = PatchDiscriminator(feats.shape[-1], DiscriminatorOptions(**{**LOOP, "loss": terms, **options}))
    with seeded_rng(0):
        model.begin_task(0)
    fit = model.fit_task(0, feats, model.trainable_parameters(0),
                         FitContext(seed=0, device=torch.device("cpu"), label="task 0", progress=False))
    assert len(fit.epoch_losses) == LOOP["num_epochs"] and fit.steps == LOOP["num_epochs"] * 2  # 8 images / 4
    model.end_task(0)
    return model


def test_registered_with_its_default_loss_used_only_when_loss_is_not_given():
    component = next(c for c in registry.components("models") if c.name == "discriminator")
    assert component.distribution == "moleflow"
    assert train_config("--data_path", "x", "--model", "discriminator").options.loss == ["bce=1.0", "iou=1.0"]
    assert train_config("--data_path", "x", "--model", "discriminator", "--loss", "bce=2").options.loss == ["bce=2"]
    assert train_config("--data_path", "x").options.loss == ["nll=1.0"]  # the flow keeps moleflow's default


@pytest.mark.parametrize("dropped", CATALOGUE)
def test_every_catalogue_loss_trains_something(dropped):
    """Every term is read from outputs the model computes from its trainable parameters: dropping any one
    of them changes what training ends with (a term the model ignored would leave it bitwise equal)."""
    feats = torch.randn(8, 6, 6, 12, generator=torch.Generator().manual_seed(1))
    full = _trained(feats, CATALOGUE).task_state(0)
    without = _trained(feats, [t for t in CATALOGUE if t != dropped]).task_state(0)
    assert any(not torch.equal(full[k], without[k]) for k in full), f"{dropped} changed nothing"
    again = _trained(feats, CATALOGUE).task_state(0)
    assert all(torch.equal(full[k], again[k]) for k in full)  # and the comparison is not noise


def test_synthetic_regions_are_seeded_rectangles_on_the_requested_share_of_images():
    model = PatchDiscriminator(4, DiscriminatorOptions(anomalous_fraction=0.5, regions=1))
    draw = lambda: model.synthetic_regions((400, 8, 8), torch.Generator().manual_seed(3))  # noqa: E731
    masks = draw()
    assert torch.equal(masks, draw())
    flagged = masks.flatten(1).amax(1)
    assert 0.4 < flagged.mean().item() < 0.6
    for m in masks[flagged.bool()][:20]:  # one region: its rows and columns form a full rectangle
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert m.sum() == len(rows) * len(cols) <= 16


def test_gate_losses_refused_with_one_expert_and_bad_options_before_any_image(tmp_path, capsys):
    from moleflow.cli import main

    # the options' own check (validate) and its rules run when the command line is resolved
    with pytest.raises(MoleflowError, match=r"--loss distinctness: with one expert \(--experts 1\)"):
        train_config("--data_path", "x", "--model", "discriminator", "--model_opt", "experts=1",
                     "--loss", "bce=1", "distinctness=0.1")
    with pytest.raises(MoleflowError, match=r"--loss distinctness: with one expert"):
        DiscriminatorOptions(experts=1, loss=["bce=1", "distinctness=0.1"]).validate(ModelContext())
    DiscriminatorOptions(experts=2, loss=["bce=1", "distinctness=0.1"]).validate(ModelContext())
    with pytest.raises(MoleflowError, match=r"--temperature changes nothing unless --experts >= 2"):
        train_config("--data_path", "x", "--model", "discriminator", "--model_opt", "experts=1", "temperature=0.5")
    with pytest.raises(MoleflowError, match=r"--temperature changes nothing unless --experts >= 2"):
        train_config("--data_path", "x", "--model", "discriminator", "--experts", "1", "--temperature", "0.5")
    cfg = train_config("--data_path", "x", "--model", "discriminator", "--model_opt", "experts=2", "temperature=0.5")
    assert (cfg.options.experts, cfg.options.temperature) == (2, 0.5)
    assert model_opt_error("discriminator", "noise=-1", tmp_path).startswith("error: --noise -1.0: must be > 0")
    assert "--experts 0: must be >= 1" in model_opt_error("discriminator", "experts=0", tmp_path / "a")
    assert "--width: not an option of model 'discriminator' (its options: " in model_opt_error(
        "discriminator", "width=3", tmp_path / "b")
    # the same unknown option as a flag: one error line, before any image is read
    missing = tmp_path / "c" / "no-data"
    code = main(["train", "--data_path", str(missing), "--runs_dir", str(tmp_path / "c" / "runs"), "--model",
                 "discriminator", "--no_pretrained", "--quiet", "--width", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "--width: not a setting, nor an option of model 'discriminator'" in err, err
    assert "no-data" not in err and not (tmp_path / "c" / "runs").exists()


def test_through_the_trainer_detects_with_zero_forgetting_and_checkpoints(tiny_bench, tiny_tasks, tmp_path):
    cfg = tiny_config(tiny_bench, tmp_path, model="discriminator", loss=CATALOGUE, model_opt=["noise=1.0"],
                      num_epochs=10, batch_size=4, lr=2e-3)
    mean = run_per_task_model(cfg, tiny_tasks)
    # the tiny benchmark's defects are large: a patch classifier trained on feature noise finds them (an
    # untrained head scores at chance, 0.5; knn reaches ~0.73 here, the discriminator ~0.68 at 64 px)
    assert mean["pixel_auroc"] > 0.6, mean


def test_finetune_retrains_the_one_network_and_resumes_from_the_whole_state(tiny_bench, tiny_tasks, tmp_path):
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, model="discriminator", strategy="finetune", loss=["bce=1.0"],
                      num_epochs=2, batch_size=4)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    state.train_task(0, None)
    after_first = state.model.task_state(0)
    state.train_task(1, None)
    assert any(not torch.equal(after_first[k], v) for k, v in state.model.task_state(0).items())
    fresh = PatchDiscriminator(extractor.dim)
    fresh.load_state_dict(state.model.state_dict())
    assert torch.equal(fresh.patch_scores(tasks[0].tests[0].test.patch, 0), state.model.patch_scores(tasks[0].tests[0].test.patch, 0))


def test_param_counts_are_per_task_and_nothing_is_shared():
    model = PatchDiscriminator(10, DiscriminatorOptions(experts=2, hidden=3))
    model.begin_task(0)
    model.begin_task(1)
    per_task = 10 * 10 + 10 + 2 * 10 + 2 * (10 * 3 + 3 + 3 + 1)
    assert model.param_counts() == {"shared": 0, "per_task": [per_task, per_task]}
    with pytest.raises(MoleflowError, match="task 5"):
        model.patch_scores(torch.zeros(1, 2, 2, 10), 5)
