"""v6: gated patch self-attention before the flow (moleflow.flow.patch_attention) and its MoLEFlow wiring."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import train_steps
from moleflow.config import resolve_config
from moleflow.versions import version_overrides
from moleflow.flow.options import MoLEFlowOptions
from moleflow.errors import MoleflowError
from moleflow.flow.model import MoLEFlow
from moleflow.flow.patch_attention import PatchSelfAttention

DIM, GRID = 16, (3, 4)
V3 = dict(adapter="film", adapter_first_task=True, task0_lora=True, task0_mix=0.1)


def _model(num_tasks: int = 1, *, seed: int = 0, **kw) -> MoLEFlow:
    torch.manual_seed(seed)
    kw.setdefault("num_coupling_layers", 2)
    kw.setdefault("use_patch_attention", True)
    model = MoLEFlow(DIM, GRID, **{**V3, **kw})
    for t in range(num_tasks):
        model.begin_task(t, f"class{t}")
    return model


def _feats(b: int = 3, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(b, *GRID, DIM) + shift


_train = partial(train_steps, steps=4)


def _attention_snapshot(model: MoLEFlow) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.patch_attention.named_parameters()}


# ----- the block on its own -------------------------------------------------------------------------


def test_block_starts_as_exact_identity():
    torch.manual_seed(0)
    block = PatchSelfAttention(DIM)
    x = torch.randn(2, *GRID, DIM) * 3.0
    out = block(x)
    assert out.shape == x.shape
    assert torch.equal(out, x)
    assert all(g.item() == 0.0 for g in block.gates)
    # the branches themselves are not zero: identity comes from the gates alone
    tokens = x.reshape(2, -1, DIM)
    q, k, v = block.qkv(block.attn_norm(tokens)).chunk(3, dim=-1)
    assert block.attn_out(torch.nn.functional.scaled_dot_product_attention(q, k, v)).abs().max() > 1e-3


def test_gate_opens_with_training_and_the_block_mixes_tokens():
    torch.manual_seed(0)
    block = PatchSelfAttention(DIM)
    x = torch.randn(4, *GRID, DIM)
    # a target only reachable by looking at other patches: every token moves toward its image's mean
    target = x + x.mean(dim=(1, 2), keepdim=True)
    weights_before = block.qkv.weight.detach().clone()
    opt = torch.optim.AdamW(block.parameters(), lr=1e-2)
    for _ in range(5):
        loss = (block(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(g.abs().item() > 1e-3 for g in block.gates)
    out = block(x)
    assert not torch.allclose(out, x, atol=1e-4)
    assert not torch.equal(block.qkv.weight, weights_before)  # branch weights learn once the gate is open
    # changing one patch changes the output at another patch of the same image, but not other images
    x2 = x.clone()
    x2[0, 0, 0] += torch.randn(DIM)  # random, not constant: LayerNorm would hide a constant shift
    out2 = block(x2)
    assert (out2[0, 2, 3] - out[0, 2, 3]).abs().max() > 1e-6
    assert torch.equal(out2[1:], out[1:])


def test_block_rejects_wrong_shapes():
    block = PatchSelfAttention(DIM)
    with pytest.raises(MoleflowError, match="expects"):
        block(torch.randn(2, 12, DIM))
    with pytest.raises(MoleflowError, match="expects"):
        block(torch.randn(2, 3, 4, DIM + 1))


# ----- MoLEFlow ownership ---------------------------------------------------------------------------


def test_model_at_init_adapts_exactly_as_without_attention():
    model = _model(1, adapter="none")
    plain = _model(1, adapter="none", use_patch_attention=False)
    feats = _feats()
    assert torch.equal(model.adapt(feats, 0), plain.adapt(feats, 0))
    assert plain.patch_attention is None and not any("patch_attention" in k for k in plain.state_dict())


def test_attention_is_base_trained_at_task0_with_gradients():
    model = _model(1)
    attn_ids = {id(p) for p in model.patch_attention.parameters()}
    assert attn_ids <= {id(p) for p in model.trainable_parameters(0)}
    assert attn_ids <= {id(p) for p in model.base_parameters()}
    feats = _feats()
    model(feats, 0)["patch_score"].mean().backward()
    assert model.patch_attention.attn_alpha.grad.abs().item() > 0  # the gates get a gradient at init
    assert model.patch_attention.ffn_alpha.grad.abs().item() > 0
    model.zero_grad()
    before = _attention_snapshot(model)
    _train(model, 0, feats, steps=3)
    changed = {n for n, p in model.patch_attention.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(before), f"did not train: {set(before) - changed}"


@pytest.mark.parametrize("all_params", [False, True], ids=["trainable", "every-parameter"])
def test_attention_frozen_after_task0_and_bitwise_unchanged_by_later_tasks(all_params):
    model = _model(1)
    _train(model, 0, _feats())
    model.end_task(0)
    assert not any(p.requires_grad for p in model.patch_attention.parameters())
    frozen = _attention_snapshot(model)
    model.begin_task(1)
    attn_ids = {id(p) for p in model.patch_attention.parameters()}
    assert not (attn_ids & {id(p) for p in model.trainable_parameters(1)})
    params = list(model.parameters()) if all_params else None
    _train(model, 1, _feats(shift=2.0), weight_decay=0.1, params=params)
    for n, p in model.patch_attention.named_parameters():
        assert torch.equal(p, frozen[n]), n


def test_plain_flow_keeps_attention_trainable_in_every_task():
    model = _model(1, experts=False, adapter="film")  # V3's adapter is the default: no adapter is built anyway
    model.end_task(0)
    model.begin_task(1)
    attn_ids = {id(p) for p in model.patch_attention.parameters()}
    assert attn_ids <= {id(p) for p in model.trainable_parameters(1)}
    assert all(p.requires_grad for p in model.patch_attention.parameters())


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_zero_forgetting_of_task0_scores(weight_decay):
    model = _model(1)
    data = [_feats(shift=float(t)) for t in range(3)]
    initial0 = model.patch_scores(data[0], 0)
    _train(model, 0, data[0], weight_decay=weight_decay)
    model.end_task(0)
    scores0 = model.patch_scores(data[0], 0)
    assert not torch.equal(scores0, initial0)
    assert all(g.item() != 0.0 for g in model.patch_attention.gates)  # attention is really in use
    for task in (1, 2):
        model.begin_task(task)
        before = model.patch_scores(data[task], task)
        _train(model, task, data[task], weight_decay=weight_decay)
        assert not torch.equal(model.patch_scores(data[task], task), before)
        model.end_task(task)
        assert torch.equal(model.patch_scores(data[0], 0), scores0)


# ----- state, sizes, config -------------------------------------------------------------------------


def test_shared_state_round_trip_gives_identical_scores(tmp_path):
    source = _model(1)
    feats = _feats()
    _train(source, 0, feats)
    source.begin_task(1)
    _train(source, 1, _feats(shift=1.0))
    source.end_task(1)
    shared = source.shared_state()
    assert any(k.startswith("patch_attention.") for k in shared)
    assert not any(k.startswith("patch_attention.") for t in range(2) for k in source.task_state(t))
    save_file(shared, tmp_path / "shared.safetensors")
    fresh = _model(2, seed=123)
    assert not torch.equal(fresh.patch_scores(feats, 0), source.patch_scores(feats, 0))
    fresh.load_shared_state(load_file(tmp_path / "shared.safetensors"))
    for t in range(2):
        fresh.load_task_state(t, source.task_state(t))
    for t in range(2):
        assert torch.equal(fresh.patch_scores(feats, t), source.patch_scores(feats, t))
    without = _model(2, use_patch_attention=False)
    with pytest.raises(MoleflowError, match="unexpected"):
        without.load_shared_state(shared)  # a v6 checkpoint does not silently load into a v3 model


def test_param_counts_include_attention_in_shared():
    with_attn, plain = _model(2), _model(2, use_patch_attention=False)
    d, hidden = DIM, 2 * DIM
    attn = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 2
    assert with_attn.param_counts()["shared"] - plain.param_counts()["shared"] == attn
    assert with_attn.param_counts()["per_task"] == plain.param_counts()["per_task"]


def test_version_v6_enables_patch_attention():
    cfg = resolve_config({"version": "v6"})
    assert cfg.options.use_patch_attention is True and version_overrides("v6")[1]["use_patch_attention"] is True
    assert cfg.options.adapter == "film" and cfg.options.task0_mix == 0.1  # inherits v3
    assert isinstance(cfg.options, MoLEFlowOptions)
    assert resolve_config({"version": "v3"}).options.use_patch_attention is False
    off = resolve_config({"version": "v6", "use_patch_attention": False})  # explicit flags win
    assert off.options.use_patch_attention is False


def test_flow_part_stays_invertible_with_attention_open():
    model = _model(1)
    _train(model, 0, _feats())
    model.begin_task(1)  # ends task 0
    with torch.no_grad():
        for p in model.trainable_parameters(1):
            p.add_(0.05 * torch.randn_like(p))
    feats = _feats()
    with torch.no_grad():
        for task in (0, 1):
            x_adapted = model.adapt(feats, task)
            z = model(feats, task)["z"]
            assert (model.inverse(z, task) - x_adapted).abs().max() < 1e-4
    # x' really differs from the attention-free input, so the check covers the attention path
    assert not torch.allclose(model.patch_attention(feats), feats, atol=1e-4)
