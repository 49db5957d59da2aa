"""Per-loss options (`--loss_opt NAME.KEY=VALUE`, or a table in --config) reach the loss components,
bad ones are one clear error, and a loss's own parameters (the soft-boundary SVDD radius) are trained
with the model's, fresh at every task."""

from __future__ import annotations

import json

import pytest
import torch

from moleflow.config import Config
from moleflow.errors import MoleflowError
from moleflow.losses.compose import CompositeLoss, loss_terms
from moleflow.testing import train_config
from tests.helpers import tiny_config

SVDD = "deep_svdd_soft_boundary"


def _from_flags(*flags: str, config_file: str | None = None) -> Config:
    return train_config(*flags, *(["--config", config_file] if config_file else []))


def _composite(cfg: Config) -> CompositeLoss:
    terms, options = loss_terms(cfg)
    return CompositeLoss(terms, options=options)


def test_options_reach_the_components_from_flags_and_from_a_config_table(tmp_path):
    flags = _from_flags("--loss", "nll=1", f"{SVDD}=0.1", "bce=1", "--loss_opt", f"{SVDD}.nu=0.05",
                        f"{SVDD}.radius=2", "bce.pos_weight=4", "bce.reduction=sum")
    config = tmp_path / "losses.json"
    config.write_text(json.dumps({"train": {"loss": ["nll=1", f"{SVDD}=0.1", "bce=1"],
                                            "loss_opt": {SVDD: {"nu": 0.05, "radius": 2},
                                                         "bce": {"pos_weight": 4, "reduction": "sum"}}}}))
    from_file = _from_flags(config_file=str(config))
    for cfg in (flags, from_file):
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
    assert loss_terms(cfg)[1] == {"focal_nll": {"gamma": 1.5, "clamp": 10}}


@pytest.mark.parametrize("flags, message", [
    (["--loss_opt", "pos_weight=4"], "expected NAME.KEY=VALUE"),
    (["--loss_opt", "bce.pos_weight=4"], "no 'bce' loss term .* add bce=WEIGHT to --loss"),
    (["--loss", "bce=1", "--loss_opt", "bce.weight=4"], r"loss 'bce' has no option 'weight' \(its options: "
                                                        r"pos_weight, reduction\)"),
    (["--loss", "nll=1", f"{SVDD}=1", "--loss_opt", f"{SVDD}.nu=2"], r"nu=2 must be in \(0, 1\]"),
    (["--focal_gamma", "2", "--loss_opt", "focal_nll.gamma=1"], "also set by --focal_gamma"),
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


def test_svdd_radius_is_trained_and_fresh_at_every_task(tiny_bench, tiny_tasks, tmp_path):
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, num_epochs=2, loss=["nll=1", f"{SVDD}=0.01"],
                      loss_opt=[f"{SVDD}.nu=0.1"])
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    state.train_task(0, None)
    first = state.loss
    radius0 = state.fit_log[0]["loss_state"][f"{SVDD}.radius"]
    # every z lies far outside R = 1 (||z||^2 ~ D = 32), more than nu of them: dloss/dR < 0, R grows
    assert radius0 > 1.0 and radius0 == first.terms[1].fn.radius.item()
    state.train_task(1, None)
    assert state.loss is not first  # task 1 starts again from the initial radius
    radius1 = state.fit_log[1]["loss_state"][f"{SVDD}.radius"]
    assert radius1 > 1.0 and radius1 != radius0
    # without the loss parameter in the optimiser the radius would stay at its initial value
    assert state.new_loss().terms[1].fn.radius.item() == 1.0



def test_the_readme_toml_example_configures_the_svdd_term(tmp_path):
    import re
    import sys
    from pathlib import Path

    if sys.version_info < (3, 11):
        pytest.skip("TOML configs need Python >= 3.11")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"```toml\n(\[train\]\nloss = .*?)```", readme, re.S).group(1)
    config = tmp_path / "losses.toml"
    config.write_text(snippet)
    composite = _composite(_from_flags(config_file=str(config)))
    assert [(t.name, t.weight) for t in composite.terms] == [("nll", 1.0), (SVDD, 0.01)]
    assert composite.terms[1].fn.nu == 0.05
