"""The hand-written forward/backward of the flow (flow/fused_coupling.py) against autograd through FrEIA.

Both flows are built from the same seed, so they hold the same weights; every weight that starts at zero
(LoRA B, the subnets' last layer) is randomised so that a wrong term in the chain rule cannot hide."""

from __future__ import annotations

import pytest
import torch

from moleflow.flow.model import MoLEFlow

DIM, GRID = 12, (4, 4)


def _flow(fused: bool, tasks: int = 1, **kwargs) -> MoLEFlow:
    torch.manual_seed(0)
    model = MoLEFlow(DIM, GRID, num_coupling_layers=3, lora_rank=2, adapter_hidden=0, fused=fused, **kwargs).double()
    feats = torch.randn(8, *GRID, DIM, dtype=torch.double)
    for task in range(tasks):
        if task:
            model.end_task(task - 1)
        model.begin_task(task, f"c{task}")
        model.observe_training_features(task, feats + task)
    with torch.no_grad():
        for layer in model._lora_layers:
            layer.base.weight.normal_(0, 0.3)
            layer.base.bias.normal_(0, 0.1)
            for key in layer.lora_B:
                layer.lora_B[key].normal_(0, 0.3)
        for block in model.flow.module_list:
            block.global_scale.normal_(0, 1)
            block.global_offset.normal_(0, 0.3)
    return model


def _loss_and_grads(model: MoLEFlow, feats: torch.Tensor, task: int, subgrid=None) -> tuple[dict, dict]:
    out = model(feats, task, subgrid)
    # a loss that reads z and log|det J| unevenly, so each output's gradient path matters
    (out["patch_score"].pow(2).mean() + out["z"].sin().sum() - 3 * out["log_jac_det"].mean()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("task", [0, 1])
def test_fused_flow_matches_freia_outputs_and_every_gradient(task):
    reference, fused = _flow(False, tasks=task + 1), _flow(True, tasks=task + 1)
    assert fused.fused and not reference.fused
    feats = torch.randn(3, *GRID, DIM, dtype=torch.double)
    out_ref, grads_ref = _loss_and_grads(reference, feats, task)
    out_fused, grads_fused = _loss_and_grads(fused, feats, task)
    for key in ("z", "log_jac_det", "patch_score"):
        torch.testing.assert_close(out_fused[key], out_ref[key], rtol=1e-12, atol=1e-12)
    assert grads_fused.keys() == grads_ref.keys()
    # task 0 trains the base too; task 1 only its expert and adapter (the base is frozen)
    assert any(".base." in n for n in grads_ref) == (task == 0)
    assert any(f"lora_A.{task}" in n for n in grads_ref) and any(f"adapters.{task}" in n for n in grads_ref)
    for name in grads_ref:
        torch.testing.assert_close(grads_fused[name], grads_ref[name], rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("task", [0, 1])
@pytest.mark.parametrize("context", [dict(cpcf_fixed_context=True), dict()])
def test_fused_flow_with_a_cpcf_condition_matches_freia(task, context):
    """With CPCF every subnet also reads the context, which is computed from the adapted input: its gradient
    reaches the adapter (and the learned context's conv at task 0) through every block's condition."""
    reference = _flow(False, tasks=task + 1, use_cpcf=True, **context)
    fused = _flow(True, tasks=task + 1, use_cpcf=True, **context)
    assert fused.fused and not reference.fused
    feats = torch.randn(3, *GRID, DIM, dtype=torch.double)
    for subgrid in (None, (1, 0, 2)):
        reference.zero_grad(), fused.zero_grad()
        out_ref, grads_ref = _loss_and_grads(reference, feats, task, subgrid)
        out_fused, grads_fused = _loss_and_grads(fused, feats, task, subgrid)
        for key in ("z", "log_jac_det", "patch_score"):
            torch.testing.assert_close(out_fused[key], out_ref[key], rtol=1e-12, atol=1e-12)
        assert grads_fused.keys() == grads_ref.keys()
        assert any(f"adapters.{task}" in n for n in grads_ref)
        assert any("context.conv" in n for n in grads_ref) == (task == 0 and not context)
        for name in grads_ref:
            torch.testing.assert_close(grads_fused[name], grads_ref[name], rtol=1e-10, atol=1e-10, msg=name)


def test_fused_forward_is_inverted_by_freia_inverse():
    model = _flow(True)
    x = torch.randn(2, *GRID, DIM, dtype=torch.double)
    with torch.no_grad():
        z = model(x, 0)["z"]
        x_adapted = model.adapt(x, 0)
        torch.testing.assert_close(model.inverse(z, 0), x_adapted, rtol=1e-9, atol=1e-9)


def test_permutation_cache_follows_loaded_weights():
    """The fused pass caches each block's permutation as indices: loading other permutation matrices must
    not leave it computing with the old ones."""
    model = _flow(True)
    before = [block.w_perm.clone() for block in model.flow.module_list]
    torch.manual_seed(5)
    donor = MoLEFlow(DIM, GRID, num_coupling_layers=3, lora_rank=2, adapter_hidden=0).double()
    x = torch.randn(2, *GRID, DIM, dtype=torch.double)
    with torch.no_grad():
        model(x, 0)  # fills the cache
        for block, source in zip(model.flow.module_list, donor.flow.module_list):
            block.w_perm.copy_(source.w_perm)
            block.w_perm_inv.copy_(source.w_perm_inv)
        assert any(not torch.equal(b.w_perm, old) for b, old in zip(model.flow.module_list, before))
        fused_out = model(x, 0)["z"]
        model.fused = False
        freia_out = model(x, 0)["z"]
    torch.testing.assert_close(fused_out, freia_out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(coupling_type="glow"), dict(use_spatial_lora=True)])
def test_flows_the_fused_pass_does_not_compute_use_freia(kwargs):
    model = MoLEFlow(DIM, GRID, num_coupling_layers=2, lora_rank=2, **kwargs)
    assert not model.fused
