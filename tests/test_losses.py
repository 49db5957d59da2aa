"""Loss components of v5 (center) and v7 (focal NLL), the config switches that build them, and the
continual guarantee (zero forgetting) under both."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import tiny_config
from moleflow.config import Config, resolve_config
from moleflow.errors import MoleflowError
from moleflow.flow.options import MoLEFlowOptions
from moleflow.losses.center import CenterLoss
from moleflow.losses.compose import CompositeLoss
from moleflow.losses.focal_nll import FocalNLLLoss
from moleflow.losses.nll import NLLLoss
from moleflow.options import build_options
from moleflow.testing import train_config
from moleflow.versions import version_overrides


def _outputs_with_nll(values: list[float], dim: int = 4) -> dict[str, torch.Tensor]:
    """Outputs of two-or-more patches whose per-dimension NLL is exactly `values` (patch_score = nll * D)."""
    nll = torch.tensor(values, dtype=torch.float64).view(1, 1, len(values))
    return {"patch_score": nll * dim, "z": torch.zeros(1, 1, len(values), dim, dtype=torch.float64)}


def _random_outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 4, 4, 6, generator=g)
    return {"z": z, "patch_score": 0.5 * z.pow(2).sum(-1) - torch.randn(3, 4, 4, generator=g) * 3}


# --- focal NLL -------------------------------------------------------------------------------------


def test_focal_gamma_zero_is_the_plain_nll_bitwise():
    out = _random_outputs()
    assert torch.equal(FocalNLLLoss(gamma=0.0)(out), NLLLoss()(out))


def test_focal_gamma_two_downweights_low_nll_patches():
    low, high = 0.1, 3.0
    out = _outputs_with_nll([low, high])
    got = FocalNLLLoss(gamma=2.0)(out).item()
    w_low, w_high = (1 - math.exp(-low)) ** 2, (1 - math.exp(-high)) ** 2
    assert got == pytest.approx((w_low * low + w_high * high) / 2, rel=1e-12)
    # the easy patch's share of the loss shrinks relative to the plain NLL
    assert w_low * low / (w_high * high) < 0.05 * (low / high)


def test_focal_weight_is_zero_at_nonpositive_nll_and_one_above_clamp():
    loss = FocalNLLLoss(gamma=2.0, clamp=50.0)
    w = loss.weight(torch.tensor([-300.0, 0.0, 1e4, float("inf")]))
    assert torch.equal(w, torch.tensor([0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_gradient_is_finite_and_not_detached(gamma):
    nll = torch.tensor([-2.0, 0.0, 0.3, 4.0], dtype=torch.float64, requires_grad=True)
    out = {"patch_score": nll.view(1, 1, 4) * 4, "z": torch.zeros(1, 1, 4, 4, dtype=torch.float64)}
    FocalNLLLoss(gamma=gamma)(out).backward()
    assert torch.isfinite(nll.grad).all()
    # d/dn [(1-e^-n)^g n] / 4 patches: includes the weight's own derivative (not a detached re-weighting)
    n = 0.3
    expected = ((1 - math.exp(-n)) ** gamma + gamma * n * (1 - math.exp(-n)) ** (gamma - 1) * math.exp(-n)) / 4
    assert nll.grad[2].item() == pytest.approx(expected, rel=1e-10)
    assert nll.grad[0].item() == 0.0


def test_focal_rejects_negative_gamma():
    with pytest.raises(MoleflowError, match="gamma must be >= 0"):
        FocalNLLLoss(gamma=-1.0)


# --- center loss -----------------------------------------------------------------------------------


def test_center_loss_value_on_a_hand_case():
    z = torch.tensor([[3.0, 4.0], [1.0, 0.0]]).view(1, 1, 2, 2)  # ||z||^2 = 25 and 1, D = 2
    assert CenterLoss()({"z": z}).item() == pytest.approx((25 / 2 + 1 / 2) / 2)


def test_center_weight_zero_is_the_plain_nll_bitwise():
    out = _random_outputs()
    total, parts = CompositeLoss(["nll=1.0", "center=0"])(out)
    assert torch.equal(total, NLLLoss()(out)) and parts["center"] > 0
    options = MoLEFlowOptions()  # center_loss_weight defaults to 0: the switch adds nothing
    assert options.center_loss_weight == 0.0 and options.loss_terms() == (["nll=1.0"], {})


def test_zero_weight_term_cannot_poison_the_total():
    out = _random_outputs()
    out["z"] = out["z"].clone()
    out["z"][0, 0, 0, 0] = float("inf")  # center = inf; 0 * inf would be NaN
    out["patch_score"] = out["patch_score"].clone()
    out["patch_score"][0, 0, 0] = 1.0
    total, _ = CompositeLoss(["nll=1.0", "center=0"])(out)
    assert torch.equal(total, NLLLoss()(out))


# --- config switches -> terms ----------------------------------------------------------------------


def test_versions_resolve_to_their_settings():
    v5, v7, v3 = (resolve_config({"version": v}) for v in ("v5", "v7", "v3"))
    _, preset5 = version_overrides("v5")
    assert (v5.options.center_loss_weight, v5.options.focal_gamma) == (0.05, 0.0)
    assert (v7.options.center_loss_weight, v7.options.focal_gamma) == (0.0, 2.0)
    assert (v3.options.center_loss_weight, v3.options.focal_gamma) == (0.0, 0.0)
    # the parent chain still applies (v3's FiLM adapter), and explicit flags win over the preset
    assert v5.options.adapter == v7.options.adapter == "film" and preset5["task0_mix"] == 0.1
    assert resolve_config({"version": "v7", "focal_gamma": 0.5}).options.focal_gamma == 0.5


def _composite(cfg: Config, tiny_bench, tiny_tasks) -> CompositeLoss:
    """The loss the trainer's model trains with: the flow builds it from its own options (flow/fit.py)."""
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = tiny_tasks
    model = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False).model
    return model.options.make_loss("moleflow")


def test_trainer_builds_the_version_losses(tiny_bench, tiny_tasks, tmp_path):
    v5 = _composite(tiny_config(tiny_bench, tmp_path, version="v5"), tiny_bench, tiny_tasks)
    assert [(t.name, t.weight) for t in v5.terms] == [("nll", 1.0), ("center", 0.05)]
    assert isinstance(v5.terms[1].fn, CenterLoss)
    v7 = _composite(tiny_config(tiny_bench, tmp_path, version="v7"), tiny_bench, tiny_tasks)
    assert [(t.name, t.weight) for t in v7.terms] == [("focal_nll", 1.0)]
    assert isinstance(v7.terms[0].fn, FocalNLLLoss) and v7.terms[0].fn.gamma == 2.0


def test_switches_keep_other_terms_and_weights():
    options = MoLEFlowOptions(loss=["nll=0.5", "center=0.2"], focal_gamma=1.5)
    assert options.loss_terms() == (["focal_nll=0.5", "center=0.2"], {"focal_nll": {"gamma": 1.5}})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"loss": ["nll=1", "center=0.1"], "center_loss_weight": 0.05}, "center loss defined twice"),
        ({"loss": ["focal_nll=1"], "focal_gamma": 2.0}, "focal NLL defined twice"),
        ({"loss": ["center=1"], "focal_gamma": 2.0}, "replaces the 'nll' term"),
        ({"center_loss_weight": -0.1}, "--center_loss_weight -0.1: must be >= 0"),
    ],
)
def test_conflicting_switches_are_clear_errors(settings, message):
    with pytest.raises(MoleflowError, match=message):
        build_options(MoLEFlowOptions, settings, "model 'moleflow'").loss_terms()
    # and the command line refuses them when it is resolved, before any image is read
    argv = [part for name, value in settings.items()
            for part in (f"--{name}", *(value if isinstance(value, list) else [str(value)]))]
    with pytest.raises(MoleflowError, match=message):
        train_config("--version", "v3", *argv)


def test_flags_change_the_loss_of_a_real_forward():
    from moleflow.flow.model import MoLEFlow

    torch.manual_seed(0)
    model = MoLEFlow(8, (2, 2), num_coupling_layers=2)
    model.begin_task(0)
    out = model(torch.randn(3, 2, 2, 8), 0)
    values = {}
    for name, overrides in {"plain": {}, "center": {"center_loss_weight": 0.05}, "focal": {"focal_gamma": 2.0}}.items():
        values[name] = MoLEFlowOptions(**overrides).make_loss("moleflow")(out)[0]
    assert torch.equal(values["plain"], NLLLoss()(out))
    center = CenterLoss()(out)
    assert center.item() > 0 and torch.allclose(values["center"], values["plain"] + 0.05 * center)
    assert values["focal"].item() != pytest.approx(values["plain"].item(), rel=1e-3)
    values["focal"].backward()  # the model's parameters get finite gradients through the focal weight
    assert all(torch.isfinite(p.grad).all() for p in model.trainable_parameters(0) if p.grad is not None)


def test_missing_output_key_names_the_loss_key_and_model():
    outputs = {"z": torch.zeros(1, 2, 2, 4), "recon": torch.zeros(1, 2, 2, 4)}  # an autoencoder-like model
    assert CompositeLoss(["center=1"])(outputs)[0].item() == 0.0  # center reads only z
    with pytest.raises(MoleflowError, match=r"loss 'focal_nll' needs model output 'patch_score'.*model 'toy_ae'.*"
                                            r"produces: recon, z"):
        CompositeLoss(["center=1", "focal_nll=1"], model_name="toy_ae")(outputs)


# --- zero forgetting under v5 / v7 (tiny benchmark, same recipe as test_trainer.py) ------------------




@pytest.mark.parametrize("version", ["v5", "v7"])
def test_zero_forgetting_is_bitwise(version, tiny_bench, tiny_tasks, tmp_path):
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, version=version, num_epochs=2, weight_decay=0.1)
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)

    def scores(task) -> torch.Tensor:
        with torch.no_grad():
            return state.model.patch_scores(task.tests[0].test.patch, state.strategy.model_task(task.task_id))

    state.train_task(0, None)
    after0 = scores(tasks[0])
    state.train_task(1, None)
    after1 = [scores(t) for t in tasks[:2]]
    state.train_task(2, None)
    after2 = [scores(t) for t in tasks[:2]]
    assert torch.equal(after0, after1[0]) and torch.equal(after0, after2[0])
    assert torch.equal(after1[1], after2[1])
    assert state.fit_log[0]["final_loss"] is not None  # the task really trained under the version's loss
