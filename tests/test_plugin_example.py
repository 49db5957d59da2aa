"""The example plugin under plugins/ is a separately installed distribution (run.sh installs it);
moleflow must find its components through that distribution's entry points, not by path."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import torch

from moleflow import registry
from moleflow.config import resolve_config
from moleflow.losses.compose import CompositeLoss

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "moleflow-example"


@pytest.fixture(scope="module")
def dist():
    try:
        return distribution("moleflow-example")
    except PackageNotFoundError:
        pytest.fail("moleflow-example is not installed: run ./run.sh test (it installs everything under plugins/)")


def test_components_come_from_the_installed_distribution(dist):
    declared = {(ep.group, ep.name) for ep in dist.entry_points}
    assert declared == {("moleflow.losses", "latent_l1"), ("moleflow.versions", "v3-small"),
                        ("moleflow.models", "pixel_gauss")}
    found = {(c.group, c.name): c for g in ("losses", "versions") for c in registry.components(g)}
    assert found[("losses", "latent_l1")].distribution == "moleflow-example"
    assert found[("versions", "v3-small")].version == dist.version
    # nothing put the plugin folder on sys.path: the import goes through the installed metadata
    assert str(PLUGIN_DIR) not in [str(Path(p).resolve()) for p in sys.path if p]


def test_plugin_loss_combines_with_builtins():
    loss = CompositeLoss(["nll=1", "latent_l1=0.5"])
    z = torch.randn(2, 3, 3, 4)
    out = {"z": z, "patch_score": torch.ones(2, 3, 3), "log_jac_det": torch.zeros(2, 3, 3)}
    total, parts = loss(out)
    assert parts["latent_l1"] == pytest.approx(z.abs().mean().item())
    assert total.item() == pytest.approx(1.0 / 4 + 0.5 * z.abs().mean().item(), rel=1e-6)


def test_plugin_version_preset_chains_onto_builtins():
    preset = registry.get("versions", "v3-small")
    assert preset.model == "moleflow" and not preset.default  # a preset of the flow, never picked by itself
    cfg = resolve_config({"version": "v3-small"})
    assert cfg.model == "moleflow" and cfg.run.version == "v3-small"
    assert cfg.options.lora_rank == 4 and cfg.options.num_coupling_layers == 4
    assert cfg.options.adapter == "film"  # inherited from v3 -> v2 -> v1
    assert resolve_config({"version": "v3-small", "lora_rank": 2}).options.lora_rank == 2  # flags win


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from moleflow.testing import tiny_benchmark

    return tiny_benchmark(tmp_path_factory.mktemp("bench") / "synth", n_train=12, n_test_good=6, n_test_defect=9)


def _cfg(bench, runs, *extra):
    from moleflow.testing import train_config

    # real (offline efficientnet_lite0) features: the router is measured on them
    return train_config("--data_path", str(bench), "--img_size", "64", "--embed_dim", "32",
                        "--model", "pixel_gauss", "--runs_dir", str(runs), "--heatmaps", "1", "--device", "cpu",
                        *extra)


def test_plugin_image_model_runs_through_the_same_trainer(bench, tmp_path):
    from moleflow.continual.trainer import run_training
    from moleflow.inference import evaluate_run

    run = run_training(_cfg(bench, tmp_path), progress=False, log=lambda *_: None)
    m = run.read_json("metrics.json")
    assert m["routing"]["accuracy"] == 1.0
    assert m["continual"]["bwt"]["image_auroc"] == 0.0  # per-task statistics: nothing is shared
    # a per-pixel Gaussian sees large, high-contrast defects on these aligned classes
    assert m["final"]["mean"]["pixel_auroc"] > 0.7
    assert m["params"]["per_task"] == [2 * 3 * 64 * 64] * 3
    before = m["final"]["per_class"]
    assert evaluate_run(run.path, progress=False).read_json("metrics.json")["final"]["per_class"] == before


def test_an_image_model_run_decodes_each_image_once(bench, tmp_path, monkeypatch):
    """The images decoded for the backbone are the model's inputs and the overlays' pixels: no file is
    decoded a second time (the run writes every overlay: --heatmaps -1)."""
    import collections

    import moleflow.data.dataset as dataset
    from moleflow.continual.trainer import run_training

    decoded = collections.Counter()
    real = dataset.load_pair

    def counting(path, mask_path, size):
        decoded[str(path)] += 1
        return real(path, mask_path, size)

    monkeypatch.setattr(dataset, "load_pair", counting)
    run = run_training(_cfg(bench, tmp_path, "--heatmaps", "-1"), progress=False, log=lambda *_: None)
    assert len(decoded) == 3 * (12 + 15) and set(decoded.values()) == {1}, decoded.most_common(2)
    assert len(list((run.path / "heatmaps").rglob("*.png"))) == 3 * 15


def test_plugin_model_options_are_flags_checked_before_any_image_is_read(tmp_path):
    from moleflow_example import PixelGaussian, PixelGaussianOptions

    from moleflow.errors import MoleflowError
    from moleflow.testing import model_opt_error, train_config

    assert registry.get("models", "pixel_gauss").options_class is PixelGaussianOptions
    by_flag = train_config("--data_path", str(tmp_path), "--model", "pixel_gauss", "--eps", "0.5")
    assert by_flag.options == PixelGaussianOptions(eps=0.5)
    assert train_config("--data_path", str(tmp_path), "--model", "pixel_gauss", "--model_opt",
                        "eps=0.5").options == by_flag.options
    assert train_config("--data_path", str(tmp_path), "--model", "pixel_gauss").options == PixelGaussianOptions()
    assert "--eps 0.0: must be > 0" in model_opt_error("pixel_gauss", "eps=0", tmp_path)
    assert "--lr: not an option of model 'pixel_gauss'" in model_opt_error("pixel_gauss", "lr=0.1", tmp_path)
    # a closed-form fit reads no loop option: they are not its flags
    with pytest.raises(MoleflowError, match="--num_epochs: not a setting, nor an option of model 'pixel_gauss'"):
        train_config("--data_path", str(tmp_path), "--model", "pixel_gauss", "--num_epochs", "3")
    assert PixelGaussian.from_options(by_flag.options, by_flag.model_context()).opts.eps == 0.5


def test_model_opt_reaches_the_plugin_model(bench, tmp_path):
    from moleflow.continual.task_data import prepare_tasks
    from moleflow.continual.trainer import ContinualRun

    scores = []
    for extra in ([], ["--model_opt", "eps=0.5"]):
        cfg = _cfg(bench, tmp_path, *extra)
        tasks, ex, _ = prepare_tasks(cfg, torch.device("cpu"), progress=False)
        assert tasks[0].train_inputs.shape[1:] == (3, 64, 64)  # images, not features
        state = ContinualRun(cfg, tasks, ex.dim, ex.grid, torch.device("cpu"), progress=False)
        state.train_task(0, None)
        scores.append(state.model.patch_scores(tasks[0].tests[0].inputs, 0))
    assert state.model.opts.eps == 0.5
    assert not torch.equal(scores[0], scores[1])
