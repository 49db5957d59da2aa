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
    assert declared == {("moleflow.losses", "latent_l1"), ("moleflow.versions", "v3-small")}
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
    cfg, _ = resolve_config({"version": "v3-small"})
    assert cfg.flow.lora_rank == 4 and cfg.flow.num_coupling_layers == 4
    assert cfg.flow.adapter == "film"  # inherited from v3 -> v2 -> v1
