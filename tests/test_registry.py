from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from moleflow import registry
from moleflow.errors import MoleflowError


def test_builtins_are_registered_through_entry_points():
    # moleflow's own distribution provides these, exactly like a plugin would
    comps = {(c.group, c.name): c for g in registry.GROUPS for c in registry.components(g)}
    for key in [("models", "moleflow"), ("losses", "nll"), ("routers", "mahalanobis"), ("datasets", "mvtec"),
                ("metrics", "aupro"), ("versions", "v3"), ("extractors", "timm")]:
        assert key in comps, key
        assert comps[key].distribution == "moleflow"


def test_unknown_name_lists_known_names():
    with pytest.raises(MoleflowError) as info:
        registry.get("losses", "no_such_loss")
    assert "no_such_loss" in str(info.value) and "nll" in str(info.value)


def test_unknown_group_is_an_error():
    with pytest.raises(MoleflowError, match="groups are"):
        registry.names("gizmos")


def test_plugin_distribution_is_discovered_and_usable(installed_plugin):
    comps = {c.name: c for c in registry.components("losses")}
    assert comps["twice_nll"].distribution == "moleflow-testplugin"
    assert comps["twice_nll"].version == "9.8.7"
    loss = registry.create("losses", "twice_nll")
    out = {"patch_score": torch.full((2, 3, 3), 4.0), "z": torch.zeros(2, 3, 3, 8)}
    assert loss(out).item() == pytest.approx(1.0)


def test_broken_plugin_is_reported_without_breaking_the_listing(installed_plugin):
    rows = registry.listing()
    status = {(c.group, c.name): err for c, err in rows}
    assert status[("models", "broken")] is not None and "broken on purpose" in status[("models", "broken")]
    assert status[("losses", "nll")] is None
    with pytest.raises(MoleflowError, match="moleflow-testplugin 9.8.7 failed to import"):
        registry.get("models", "broken")


def test_cli_plugins_lists_everything_and_the_error(installed_plugin):
    proc = subprocess.run([sys.executable, "-m", "moleflow", "plugins"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    broken = [l for l in lines if " broken " in f" {l} "]
    assert broken and "error: ImportError: this plugin is broken on purpose" in broken[0]
    assert any(l.split()[:2] == ["losses", "twice_nll"] and "moleflow-testplugin" in l and l.endswith("ok")
               for l in lines)
    for group in ("models", "losses", "extractors", "routers", "datasets", "metrics", "versions"):
        assert any(l.startswith(group) for l in lines), group


def _with_entry_point(monkeypatch, group: str, name: str, value: str) -> None:
    """Register `name` in `group` as an installed distribution's entry point would (for this test only)."""
    from importlib.metadata import EntryPoint

    real, full_group = registry.entry_points, registry.PREFIX + group

    def patched(group: str):
        found = list(real(group=group))
        return found + [EntryPoint(name, value, group)] if group == full_group else found

    monkeypatch.setattr(registry, "entry_points", patched)


def test_registered_strategy_and_extractor_are_the_ones_used(monkeypatch, tiny_bench, tmp_path):
    """--strategy and --extractor look their names up in moleflow.strategies / moleflow.extractors: a class
    registered under a new name is what the run builds."""
    from helpers import MarkedExtractor, MarkedStrategy, tiny_config
    from moleflow.continual.strategies import strategy_class
    from moleflow.continual.task_data import build_extractor

    _with_entry_point(monkeypatch, "extractors", "marked", "helpers:MarkedExtractor")
    cfg = tiny_config(tiny_bench, tmp_path, extractor="marked")
    assert type(build_extractor(cfg, torch.device("cpu"))) is MarkedExtractor
    assert type(build_extractor(tiny_config(tiny_bench, tmp_path), torch.device("cpu"))) is not MarkedExtractor

    monkeypatch.undo()
    _with_entry_point(monkeypatch, "strategies", "marked", "helpers:MarkedStrategy")
    assert "marked" in registry.names("strategies") and strategy_class("marked") is MarkedStrategy
    with pytest.raises(MoleflowError, match="unknown strategy 'nope'; known: finetune, joint, marked, moleflow"):
        strategy_class("nope")


def test_the_contract_names_what_a_model_lacks_and_fills_optional_hooks():
    """moleflow/contract.py: a model missing a required method is refused by name; optional hooks default."""
    from moleflow.baselines.knn import KNNOptions, PatchKNN
    from moleflow.contract import ModelHooks, model_spec

    class NoScores(torch.nn.Module):
        def begin_task(self, task_id, class_name=""): ...

    with pytest.raises(MoleflowError, match="missing: trainable_parameters, fit_task, end_task, patch_scores"):
        ModelHooks.of(NoScores())
    hooks = ModelHooks.of(PatchKNN(8))
    assert hooks.observe_trained(0, None) is None and hooks.describe() == "" and not hooks.has_score_maps
    spec = model_spec("knn", PatchKNN)
    assert spec.input_kind == "features" and spec.options_class is KNNOptions

    class BadKind(PatchKNN):
        input_kind = "voxels"

    with pytest.raises(MoleflowError, match="input_kind='voxels'"):
        model_spec("bad", BadKind)

    class NoOptions(PatchKNN):
        options_class = None

    with pytest.raises(MoleflowError, match="model 'bare' .* declares no options_class"):
        model_spec("bare", NoOptions)


def test_a_registered_per_class_metric_reaches_metrics_json_and_compare(monkeypatch, tiny_bench, tmp_path):
    """The evaluator computes the per-class metrics through moleflow.metrics: a metric registered by a
    plugin (here: an entry point added for this test) is in metrics.json and in `moleflow compare`."""
    from helpers import tiny_config
    from moleflow.compare import compare_runs
    from moleflow.continual.trainer import run_training

    _with_entry_point(monkeypatch, "metrics", "top_decile_recall", "helpers:top_decile_recall")
    cfg = tiny_config(tiny_bench, tmp_path, model="knn", heatmaps=0)
    run = run_training(cfg, progress=False, log=lambda *_: None)
    per_class = run.read_json("metrics.json")["final"]["per_class"]
    for values in per_class.values():
        assert 0.0 <= values["top_decile_recall"] <= 1.0 and "top_decile_recall_oracle" in values
        assert {"image_auroc", "aupro", "f1", "f1_threshold"} <= values.keys()  # the built-ins, same keys as before
    assert "top_decile_recall" in compare_runs([run.path])
