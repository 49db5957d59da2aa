"""Per-loss options (`--loss_opt NAME.KEY=VALUE`, or a table in --config) reach the loss components,
bad ones are one clear error, and a loss's own parameters (the soft-boundary SVDD radius) are trained
with the model's, fresh at every task."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_config
from moleflow.config import Config
from moleflow.errors import MoleflowError
from moleflow.flow.options import MoLEFlowOptions
from moleflow.losses.compose import CompositeLoss
from moleflow.testing import train_config

SVDD = "deep_svdd_soft_boundary"


def _from_flags(*flags: str, config_file: str | None = None) -> Config:
    return train_config(*flags, *(["--config", config_file] if config_file else []))


def _composite(cfg: Config) -> CompositeLoss:
    return cfg.options.make_loss(cfg.train.model)


def test_options_reach_the_components_from_flags_and_from_a_config_table(tmp_path):
    flags = _from_flags("--loss", "nll=1", f"{SVDD}=0.1", "bce=1", "--loss_opt", f"{SVDD}.nu=0.05",
                        f"{SVDD}.radius=2", "bce.pos_weight=4", "bce.reduction=sum")
    table = {"loss": ["nll=1", f"{SVDD}=0.1", "bce=1"],
             "loss_opt": {SVDD: {"nu": 0.05, "radius": 2}, "bce": {"pos_weight": 4, "reduction": "sum"}}}
    from_files = []
    # a section of flat settings (as in the README's TOML example) and the model's options table
    for name, layout in (("section", {"train": table}), ("model", {"model": {"name": "moleflow", "options": table}})):
        config = tmp_path / f"losses_{name}.json"
        config.write_text(json.dumps(layout))
        from_files.append(_from_flags(config_file=str(config)))
    for cfg in (flags, *from_files):
        svdd, bce = _composite(cfg).terms[1].fn, _composite(cfg).terms[2].fn
        assert (svdd.nu, svdd.radius.item()) == (0.05, 2.0)
        assert (bce.pos_weight, bce.reduction) == (4.0, "sum")
    # and the value changes: nu scales the outside term by 1/nu
    out = {"embedding": torch.full((2, 3), 2.0)}  # ||z||^2 = 12 > R^2 = 4
    default = _composite(_from_flags("--loss", f"{SVDD}=1", "--loss_opt", f"{SVDD}.radius=2")).terms[0].fn(out)
    assert default.item() == pytest.approx(4 + (12 - 4) / 0.1)
    assert _composite(flags).terms[1].fn(out).item() == pytest.approx(4 + (12 - 4) / 0.05)


def test_focal_gamma_and_loss_opt_combine_on_distinct_keys():
    cfg = _from_flags("--focal_gamma", "1.5", "--loss_opt", "focal_nll.clamp=10")
    assert cfg.options.loss_terms()[1] == {"focal_nll": {"gamma": 1.5, "clamp": 10}}


@pytest.mark.parametrize("flags, message", [
    (["--loss_opt", "pos_weight=4"], "expected NAME.KEY=VALUE"),
    (["--loss_opt", "bce.pos_weight=4"], "no 'bce' loss term .* add bce=WEIGHT to --loss"),
    (["--loss", "bce=1", "--loss_opt", "bce.weight=4"], r"loss 'bce' has no option 'weight' \(its options: "
                                                        r"pos_weight, reduction\)"),
    (["--loss", "nll=1", f"{SVDD}=1", "--loss_opt", f"{SVDD}.nu=2"], r"nu=2 must be in \(0, 1\]"),
    (["--focal_gamma", "2", "--loss_opt", "focal_nll.gamma=1"], r"--loss_opt focal_nll\.gamma is also set by another "
                                                                r"option of the model"),
    (["--loss_opt", "nll.x"], "expected KEY=VALUE"),
])
def test_bad_loss_options_are_one_clear_error(flags, message):
    with pytest.raises(MoleflowError, match=message):
        _composite(_from_flags(*flags))


def test_cli_reports_a_bad_loss_option_before_reading_any_image(tmp_path, capsys):
    from moleflow.cli import main

    code = main(["train", "--data_path", str(tmp_path / "missing"), "--runs_dir", str(tmp_path / "runs"),
                 "--loss", "bce=1", "--loss_opt", "bce.weight=4"])
    assert code == 2 and "has no option 'weight'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_svdd_radius_is_trained_and_fresh_at_every_task(tiny_bench, tiny_tasks, tmp_path, monkeypatch):
    from moleflow.continual.trainer import ContinualRun

    # the flow builds its loss from its own options at every task (flow/fit.py): keep each one built for
    # training, with its radius as it was built
    built: list[tuple[CompositeLoss, float]] = []
    make_loss = MoLEFlowOptions.make_loss

    def recording(options, model_name):
        loss = make_loss(options, model_name)
        built.append((loss, loss.terms[1].fn.radius.item()))
        return loss

    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, num_epochs=2, loss=["nll=1", f"{SVDD}=0.01"],
                      loss_opt=[f"{SVDD}.nu=0.1"])
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    monkeypatch.setattr(MoLEFlowOptions, "make_loss", recording)
    state.train_task(0, None)
    assert len(built) == 1
    first, initial0 = built[0]
    radius0 = state.fit_log[0]["loss_state"][f"{SVDD}.radius"]
    # every z lies far outside R = 1 (||z||^2 ~ D = 32), more than nu of them: dloss/dR < 0, R grows
    assert initial0 == 1.0
    assert radius0 > 1.0 and radius0 == first.terms[1].fn.radius.item()
    state.train_task(1, None)
    assert len(built) == 2
    second, initial1 = built[1]
    assert second is not first and initial1 == 1.0  # task 1 starts again from the initial radius
    radius1 = state.fit_log[1]["loss_state"][f"{SVDD}.radius"]
    assert radius1 > 1.0 and radius1 != radius0 and radius1 == second.terms[1].fn.radius.item()
    # without the loss parameter in the optimiser the radius would stay at its initial value
    assert make_loss(state.model.options, "moleflow").terms[1].fn.radius.item() == 1.0


def test_the_readme_toml_example_configures_the_svdd_term(tmp_path):
    import re
    import sys
    from pathlib import Path

    if sys.version_info < (3, 11):
        pytest.skip("TOML configs need Python >= 3.11")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"```toml\n(\[model\.options\]\nloss = .*?)```", readme, re.S)
    assert found, "README.md has no ```toml [model.options] loss = ... block"
    snippet = found.group(1)
    config = tmp_path / "losses.toml"
    config.write_text(snippet)
    composite = _composite(_from_flags(config_file=str(config)))
    assert [(t.name, t.weight) for t in composite.terms] == [("nll", 1.0), (SVDD, 0.01)]
    assert composite.terms[1].fn.nu == 0.05
