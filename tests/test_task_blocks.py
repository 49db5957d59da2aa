"""--task_blocks: coupling blocks each task owns after the shared flow (z = own(shared(x')))."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from helpers import train_steps
from moleflow.errors import MoleflowError
from moleflow.flow.model import MoLEFlow
from moleflow.testing import train_config

DIM, GRID = 12, (4, 4)
_train = partial(train_steps, steps=4)


def _model(tasks: int, *, fused: bool = True, **kw) -> MoLEFlow:
    torch.manual_seed(0)
    kw = {"num_coupling_layers": 2, "lora_rank": 2, "adapter_hidden": 0, "task_blocks": 2, **kw}
    if kw["task_blocks"]:
        kw.setdefault("task_block_hidden", 8)
    model = MoLEFlow(DIM, GRID, fused=fused, **kw)
    for t in range(tasks):
        if t:
            model.end_task(t - 1)
        model.begin_task(t, f"c{t}")
        model.observe_training_features(t, torch.randn(6, *GRID, DIM) + t)
    return model


def _randomise(model: MoLEFlow) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "w_perm" not in name:  # FrEIA's fixed permutation matrices must stay permutations
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("context", [{}, {"use_cpcf": True, "cpcf_fixed_context": True}], ids=["plain", "cpcf"])
def test_task_blocks_are_inverted_and_computed_alike_by_both_passes(context):
    fused, reference = _model(2, **context), _model(2, fused=False, **context)
    for model in (fused, reference):
        _randomise(model) if model is fused else model.load_state_dict(fused.state_dict())
    feats = torch.randn(3, *GRID, DIM)
    with torch.no_grad():
        out, ref = fused(feats, 1), reference(feats, 1)
        torch.testing.assert_close(out["z"], ref["z"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out["log_jac_det"], ref["log_jac_det"], rtol=1e-5, atol=1e-4)
        x = fused.adapt(feats, 1)
        back = fused.inverse(out["z"], 1, context=fused.flow_context(x) if context else None)
        assert (back - x).abs().max() < 1e-4
        # the task's own blocks change its mapping: without them z differs
        shared_only, _ = fused.flow(x.reshape(-1, DIM), c=[fused.flow_context(x).reshape(-1, DIM)] if context else [],
                                    jac=True)
        assert not torch.allclose(shared_only.reshape(out["z"].shape), out["z"], atol=1e-3)


def test_log_jac_det_includes_the_task_blocks():
    """log|det dz/dx'| of shared flow + the task's blocks against the numerical Jacobian of x' -> z."""
    model = _model(2, task_blocks=1).double()
    _randomise(model)
    token = torch.randn(1, 1, 1, DIM, dtype=torch.float64)

    def to_z(v: torch.Tensor) -> torch.Tensor:
        return model._run_flow(v.view(1, 1, 1, DIM), 1, rev=False, context=None)[0].reshape(DIM)

    jac = torch.autograd.functional.jacobian(to_z, token.reshape(DIM))
    expected = torch.linalg.slogdet(jac)[1].item()
    shared_only = torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda v: model.flow(v.view(1, DIM), jac=False)[0].reshape(DIM), token.reshape(DIM)))[1].item()
    assert abs(expected - shared_only) > 1e-2  # the task's block changes the volume: the check can fail
    assert abs(model._run_flow(token, 1, rev=False, context=None)[1].item() - expected) < 1e-8


def test_a_task_owns_its_blocks_and_training_it_forgets_nothing():
    model = _model(1)
    x0, x1 = torch.randn(4, *GRID, DIM), torch.randn(4, *GRID, DIM) + 2
    _train(model, 0, x0)
    model.end_task(0)
    scores0 = model.patch_scores(x0, 0)
    model.begin_task(1)
    model.observe_training_features(1, x1)
    own = {id(p) for p in model.task_flows["1"].parameters() if p.requires_grad}
    trainable = {id(p) for p in model.trainable_parameters(1)}
    assert own and own <= trainable  # the task's blocks train with its expert and adapter ...
    fixed = {id(p) for n, p in model.task_flows["1"].named_parameters() if "w_perm" in n}
    assert fixed and not fixed & trainable  # ... never FrEIA's fixed permutations
    assert not {id(p) for p in model.task_flows["0"].parameters()} & trainable
    before = model.patch_scores(x1, 1)
    _train(model, 1, x1, params=list(model.parameters()))  # even an optimiser given everything
    model.end_task(1)
    assert not torch.equal(model.patch_scores(x1, 1), before)
    assert torch.equal(model.patch_scores(x0, 0), scores0)
    # saved with the task, loaded back exactly
    state = model.task_state(1)
    assert any(k.startswith("task_flows.1.") for k in state) and not any(k.startswith("task_flows.0.") for k in state)
    assert "task_flows.1.module_list.0.global_scale" not in model.shared_state()
    fresh = _model(2)
    fresh.load_shared_state(model.shared_state())
    fresh.load_task_state(1, state)
    fresh.load_task_state(0, model.task_state(0))
    assert torch.equal(fresh.patch_scores(x1, 1), model.patch_scores(x1, 1))


def test_param_counts_add_the_task_blocks():
    without, with_blocks = _model(2, task_blocks=0), _model(2)
    blocks = sum(p.numel() for n, p in with_blocks.task_flows["1"].named_parameters() if "w_perm" not in n)
    assert blocks > 0
    assert with_blocks.param_counts()["per_task"][1] == without.param_counts()["per_task"][1] + blocks
    assert with_blocks.param_counts()["shared"] == without.param_counts()["shared"]


def test_task_block_flags_that_would_change_nothing_are_refused():
    with pytest.raises(MoleflowError, match="--task_block_hidden.*--task_blocks is 1 or more"):
        train_config("--task_blocks", "0", "--task_block_hidden", "32")
    from moleflow.contract import ModelContext

    # v11's width is not applied to a flow without task blocks: it falls back to its default with them
    assert train_config("--task_blocks", "0").options.applicable(ModelContext()).task_block_hidden == 0
    with pytest.raises(MoleflowError, match="--task_blocks"):
        train_config("--strategy", "finetune", "--task_blocks", "2")
    cfg = train_config("--task_blocks", "2", "--task_block_hidden", "32")
    assert (cfg.options.task_blocks, cfg.options.task_block_hidden) == (2, 32)


def test_v11_is_v10_with_two_task_blocks_and_the_adapter_in_the_density():
    import dataclasses

    v10, v11 = train_config("--version", "v10").options, train_config("--version", "v11").options
    differ = {f.name for f in dataclasses.fields(v10) if getattr(v10, f.name) != getattr(v11, f.name)}
    assert differ == {"task_blocks", "task_block_hidden", "adapter_in_density"}
    assert (v11.task_blocks, v11.task_block_hidden, v11.adapter_in_density) == (2, 76, True)
    assert (v11.adapter, v11.adapter_hidden) == ("film", 0)  # v3's FiLM adapter without v8's MLP


@pytest.mark.parametrize("task", [0, 1])
def test_adapter_in_density_adds_the_adapters_log_det(task):
    """With --adapter_in_density the patch NLL is that of the adapter's input: log|det| of x -> x' -> z."""
    model = _model(2, adapter="film", adapter_in_density=True, task_blocks=1).double()
    _randomise(model)
    feats = torch.randn(1, *GRID, DIM, dtype=torch.float64)
    x = model._before_adapter(feats, task, None)

    def to_z(v: torch.Tensor) -> torch.Tensor:
        y, _ = model._adapted(v.view(1, 1, 1, DIM), task)
        return model._run_flow(y, task, rev=False, context=None)[0].reshape(DIM)

    token = x[0, 0, 0]
    expected = torch.linalg.slogdet(torch.autograd.functional.jacobian(to_z, token))[1].item()
    got = model(feats, task)["log_jac_det"][0, 0, 0].item()
    assert abs(got - expected) < 1e-8
    without = model._run_flow(model.adapt(feats, task), task, rev=False, context=None)[1].reshape(1, *GRID)[0, 0, 0]
    assert abs(got - without.item()) > 1e-3  # the adapter's own term is really there
