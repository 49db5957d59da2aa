"""v4 / v4.1: CPCF neighbourhood context (moleflow.flow.cpcf) and SC-LoRA (moleflow.flow.spatial_lora)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from helpers import train_steps
from moleflow.config import resolve_config
from moleflow.versions import version_overrides
from moleflow.flow.options import MoLEFlowOptions
from moleflow.errors import MoleflowError
from moleflow.flow.cpcf import FixedContext, LearnedContext, NeighbourhoodAttention
from moleflow.flow.lora import LoRALinear, active_expert
from moleflow.flow.model import MoLEFlow
from moleflow.flow.spatial_lora import CornerGroups, SpatialLoRALinear, bilinear_corners

DIM, GRID, G = 16, (7, 7), 4  # on a 7x7 patch grid, patches 0, 2, 4, 6 sit exactly on the 4x4 LoRA grid
V3 = dict(adapter="film", adapter_first_task=True, task0_lora=True, task0_mix=0.1)
V4 = dict(V3, use_cpcf=True, use_spatial_lora=True, sc_lora_grid_size=G)
V41 = dict(V4, cpcf_fixed_context=True)




def _model(num_tasks: int = 1, *, seed: int = 0, **kw) -> MoLEFlow:
    torch.manual_seed(seed)
    kw.setdefault("num_coupling_layers", 2)
    model = MoLEFlow(DIM, kw.pop("grid", GRID), kw.pop("options", None), **kw)
    for t in range(num_tasks):
        model.begin_task(t, f"class{t}")
    return model


def _feats(b: int = 2, shift: float = 0.0, grid: tuple[int, int] = GRID) -> torch.Tensor:
    return torch.randn(b, *grid, DIM) + shift


def _perturb(params, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn_like(p))


_train = partial(train_steps, steps=3)


def _spatial_layer(seed: int = 0) -> SpatialLoRALinear:
    torch.manual_seed(seed)
    layer = SpatialLoRALinear(6, 5, rank=2, alpha=4.0, grid_size=G)
    layer.add_expert(0)
    _perturb(layer.lora_B.values(), scale=0.5)
    return layer


def _plain_copy(layer: SpatialLoRALinear, grid_point: int):
    """A plain LoRA layer holding one grid point's expert, as a function run with task 0's expert."""
    plain = LoRALinear(6, 5, rank=2, alpha=4.0)
    plain.base.load_state_dict(layer.base.state_dict())
    plain.add_expert(0)
    with torch.no_grad():
        plain.lora_A["0"].copy_(layer.lora_A["0"][grid_point])
        plain.lora_B["0"].copy_(layer.lora_B["0"][grid_point])

    def run(x: torch.Tensor) -> torch.Tensor:
        with active_expert(0):
            return plain(x)

    return run


def _run_on_grid(layer: SpatialLoRALinear, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """x (images, h*w, in) -> layer output with each row at its patch position."""
    idx, w = bilinear_corners(*grid, layer.grid_size)
    groups = CornerGroups.from_rows(idx.repeat(x.shape[0], 1), w.float().repeat(x.shape[0], 1))
    with active_expert(0, groups):
        return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)


# ----- SC-LoRA layer --------------------------------------------------------------------------------


def test_bilinear_corners_put_grid_corners_on_patch_grid_corners():
    idx, w = bilinear_corners(*GRID, G)
    assert torch.allclose(w.sum(-1), torch.ones(49, dtype=torch.float64))
    pos = lambda y, x: y * GRID[1] + x  # noqa: E731
    assert w[pos(0, 0)].tolist() == [1, 0, 0, 0] and idx[pos(0, 0), 0] == 0
    assert w[pos(6, 6)].tolist() == [0, 0, 0, 1] and idx[pos(6, 6), 3] == G * G - 1
    assert w[pos(0, 6)].tolist() == [0, 1, 0, 0] and idx[pos(0, 6), 1] == G - 1
    assert torch.allclose(w[pos(1, 1)], torch.full((4,), 0.25, dtype=torch.float64))  # centre of cell (0,0)


def test_patch_exactly_on_a_grid_point_uses_that_points_plain_lora():
    layer = _spatial_layer()
    x = torch.randn(2, 49, 6)
    out = _run_on_grid(layer, x, GRID)
    for y in (0, 2, 4, 6):
        for xx in (0, 2, 4, 6):
            grid_point = (y // 2) * G + xx // 2
            expected = _plain_copy(layer, grid_point)(x[:, y * 7 + xx])
            assert torch.allclose(out[:, y * 7 + xx], expected, atol=1e-6), (y, xx)
    # the experts really differ between grid points, so the comparison above identifies the right one
    assert not torch.allclose(_plain_copy(layer, 0)(x[:, 0]), _plain_copy(layer, 1)(x[:, 0]), atol=1e-3)


def test_zero_b_is_exactly_the_base_layer():
    torch.manual_seed(0)
    layer = SpatialLoRALinear(6, 5, rank=2, alpha=4.0, grid_size=G)
    layer.add_expert(0)
    x = torch.randn(3, 49, 6)
    assert torch.equal(_run_on_grid(layer, x, GRID).reshape(-1, 5), layer.base(x.reshape(-1, 6)))
    _perturb(layer.lora_B.values())
    assert not torch.allclose(_run_on_grid(layer, x, GRID).reshape(-1, 5), layer.base(x.reshape(-1, 6)))


def test_cell_centre_is_the_mean_of_its_four_corner_outputs():
    layer = _spatial_layer()
    x = torch.randn(2, 49, 6)
    out = _run_on_grid(layer, x, GRID)
    for y, xx in ((1, 1), (3, 5), (5, 3)):
        row = x[:, y * 7 + xx]
        cy, cx = y // 2, xx // 2
        corners = [cy * G + cx, cy * G + cx + 1, (cy + 1) * G + cx, (cy + 1) * G + cx + 1]
        mean = torch.stack([_plain_copy(layer, c)(row) for c in corners]).mean(0)
        assert torch.allclose(out[:, y * 7 + xx], mean, atol=1e-6), (y, xx)


def test_blend_matches_a_per_row_reference_on_an_unaligned_grid():
    layer = _spatial_layer()
    grid = (5, 6)  # positions fall at uneven fractions of the cells, and cells hold different row counts
    x = torch.randn(3, 30, 6)
    out = _run_on_grid(layer, x, grid)
    idx, w = bilinear_corners(*grid, G)
    a, b = layer.lora_A["0"].detach(), layer.lora_B["0"].detach()
    for p in range(30):
        delta_w = sum(w[p, k].item() * (b[idx[p, k]] @ a[idx[p, k]]) for k in range(4))
        expected = layer.base(x[:, p]) + layer.scale * x[:, p] @ delta_w.T
        assert torch.allclose(out[:, p], expected, atol=1e-5), p


# ----- CPCF context ---------------------------------------------------------------------------------


def test_fixed_context_is_parameter_free_and_computes_the_gated_mean():
    model = _model(1, **V41)
    assert isinstance(model.context, FixedContext)
    assert not list(model.context.parameters()) and not list(model.context.buffers())
    assert not any(k.startswith("context.") for k in model.state_dict())
    x = torch.randn(2, *GRID, DIM)
    ctx = model.flow_context(x)
    # default (leave-centre-out): the mean of the 8 neighbours
    assert torch.allclose(ctx[:, 3, 3], (x[:, 2:5, 2:5].sum(dim=(1, 2)) - x[:, 3, 3]) / 8, atol=1e-6)
    # replicate padding: the corner's 3x3 neighbourhood is its 2x2 block with the border rows repeated
    corner_sum = x[:, [0, 0, 1]][:, :, [0, 0, 1]].sum(dim=(1, 2))
    assert torch.allclose(ctx[:, 0, 0], (corner_sum - x[:, 0, 0]) / 8, atol=1e-6)
    historical = _model(1, **V41, cpcf_include_center=True).flow_context(x)
    assert torch.allclose(historical[:, 3, 3], 0.7 * x[:, 3, 3] + 0.3 * x[:, 2:5, 2:5].mean(dim=(1, 2)), atol=1e-6)
    with_learned = _model(1, **V4)
    assert model.param_counts()["shared"] < with_learned.param_counts()["shared"]
    assert {id(p) for p in model.trainable_parameters(0)} == {
        id(p) for p in model.base_parameters() + model._expert_parameters(0) + model._adapter_parameters(0)
    }


@pytest.mark.parametrize("use_attention", [False, True], ids=["conv", "attention"])
def test_learned_context_trains_at_task0_only_and_stays_frozen(use_attention):
    model = _model(1, **V4, cpcf_use_attention=use_attention)
    assert isinstance(model.context, NeighbourhoodAttention if use_attention else LearnedContext)
    ctx_params = list(model.context.parameters())
    ctx_ids = {id(p) for p in ctx_params}
    assert ctx_ids <= {id(p) for p in model.trainable_parameters(0)}
    feats = _feats()
    _train(model, 0, feats, steps=1)  # first step: the zero-init last subnet layers start to open
    model(feats, 0)["patch_score"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in ctx_params)
    before = [p.detach().clone() for p in ctx_params]
    _train(model, 0, feats, steps=2)
    assert all(not torch.equal(p, b) for p, b in zip(ctx_params, before))

    model.end_task(0)
    frozen = [p.detach().clone() for p in ctx_params]
    model.begin_task(1)
    assert not (ctx_ids & {id(p) for p in model.trainable_parameters(1)})
    assert not any(p.requires_grad for p in ctx_params)
    _train(model, 1, _feats(shift=2.0), weight_decay=0.1)
    _train(model, 1, _feats(shift=2.0), weight_decay=0.1, params=list(model.parameters()))
    assert all(torch.equal(p, f) for p, f in zip(ctx_params, frozen))


# ----- the whole flow ---------------------------------------------------------------------------------


@pytest.mark.parametrize("coupling", ["allinone", "glow"])
@pytest.mark.parametrize("context", ["conv", "attention", "fixed"])
def test_inverse_with_cpcf_and_sclora_recovers_adapted_input(coupling, context):
    extra = {"attention": {"cpcf_use_attention": True}, "fixed": {"cpcf_fixed_context": True}}.get(context, {})
    model = _model(2, **V4, **extra, coupling_type=coupling)
    _perturb([p for n, p in model.named_parameters() if "w_perm" not in n])
    feats = _feats()
    with torch.no_grad():
        for task in (0, 1):
            x_adapted = model.adapt(feats, task)
            z = model(feats, task)["z"]
            ctx = model.flow_context(x_adapted)
            assert (model.inverse(z, task, context=ctx) - x_adapted).abs().max() < 1e-4
            # the context matters: another image's context does not give back x'
            assert (model.inverse(z, task, context=ctx.flip(0)) - x_adapted).abs().max() > 1e-3
    with pytest.raises(MoleflowError, match="flow_context"):
        model.inverse(z, 1)


@pytest.mark.parametrize("config", [V4, V41], ids=["v4", "v4.1"])
def test_zero_forgetting_with_cpcf_and_sclora(config):
    model = _model(1, **config)
    data = [_feats(shift=float(t)) for t in range(3)]
    initial0 = model.patch_scores(data[0], 0)
    _train(model, 0, data[0], weight_decay=0.1)
    model.end_task(0)
    scores0 = model.patch_scores(data[0], 0)
    assert not torch.equal(scores0, initial0)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    for task in (1, 2):
        model.begin_task(task)
        before = model.patch_scores(data[task], task)
        _train(model, task, data[task], weight_decay=0.1)
        assert not torch.equal(model.patch_scores(data[task], task), before)
        model.end_task(task)
        assert torch.equal(model.patch_scores(data[0], 0), scores0)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())


def test_sclora_experts_are_owned_per_task_and_round_trip(tmp_path):
    source = _model(2, **V4)
    _perturb([p for n, p in source.named_parameters() if "w_perm" not in n])
    task1 = source.task_state(1)
    assert task1 and all(".lora_A.1" in k or ".lora_B.1" in k or k.startswith(("adapters.1.", "input_stats.1."))
                         for k in task1)
    assert all(v.shape[0] == G * G for k, v in task1.items() if ".lora_" in k)
    assert any(k.startswith("context.") for k in source.shared_state())
    fresh = _model(2, seed=7, **V4)
    fresh.load_shared_state(source.shared_state())
    for t in range(2):
        fresh.load_task_state(t, source.task_state(t))
    feats = _feats()
    for t in range(2):
        assert torch.equal(fresh.patch_scores(feats, t), source.patch_scores(feats, t))
    with pytest.raises(MoleflowError, match="shapes"):
        _model(2, **V4 | {"sc_lora_grid_size": 3}).load_task_state(1, task1)


def test_sclora_multiplies_expert_size_by_grid_points():
    plain, spatial = _model(2, **V3), _model(2, **V3, use_spatial_lora=True, sc_lora_grid_size=G)
    film = sum(p.numel() for p in plain._adapter_parameters(1))
    lora = plain.param_counts()["per_task"][1] - film
    assert spatial.param_counts()["per_task"][1] == G * G * lora + film
    assert spatial.param_counts()["shared"] == plain.param_counts()["shared"]


FLAG_CHANGES = [
    ({}, {"use_cpcf": True}),
    ({}, {"use_spatial_lora": True}),
    ({"use_cpcf": True}, {"cpcf_use_attention": True}),
    ({"use_cpcf": True}, {"cpcf_fixed_context": True}),
    ({"use_cpcf": True}, {"cpcf_context_kernel": 5}),
    ({"use_cpcf": True, "cpcf_fixed_context": True}, {"cpcf_context_kernel": 5}),
    ({"use_cpcf": True, "cpcf_fixed_context": True, "cpcf_include_center": True}, {"cpcf_context_gate": 0.8}),
    ({"use_cpcf": True, "cpcf_fixed_context": True}, {"cpcf_include_center": True}),
    ({"use_spatial_lora": True}, {"sc_lora_grid_size": 2}),
]


@pytest.mark.parametrize("version", ["v1", "v3", "v6"])
@pytest.mark.parametrize("base,flag", FLAG_CHANGES, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_each_flag_changes_the_model_on_top_of_any_version(version, base, flag):
    feats = _feats(b=1)
    results = []
    for settings in (base, {**base, **flag}):
        cfg = resolve_config({"version": version, **settings})
        model = _model(2, options=cfg.options.applicable(cfg.model_context()), num_coupling_layers=2)
        _perturb([p for n, p in model.named_parameters() if "w_perm" not in n and "lora_A" not in n])
        scores = model.patch_scores(feats, 1)
        assert torch.isfinite(scores).all()
        results.append((model.param_counts(), scores))
    (counts_off, scores_off), (counts_on, scores_on) = results
    assert counts_off != counts_on or not torch.allclose(scores_off, scores_on, atol=1e-5)


def test_versions_v4_and_v41_resolve():
    v4, (_, preset) = resolve_config({"version": "v4"}), version_overrides("v4")
    assert preset["use_cpcf"] is True and preset["use_spatial_lora"] is True
    assert v4.options.cpcf_fixed_context is False and v4.options.adapter == "film"  # inherits v3
    kw = v4.options
    assert isinstance(kw, MoLEFlowOptions) and kw.use_cpcf and kw.use_spatial_lora and kw.sc_lora_grid_size == 4
    assert kw.cpcf_context_kernel == 3 and not kw.cpcf_use_attention
    v41, (_, preset41) = resolve_config({"version": "v4.1"}), version_overrides("v4.1")
    assert preset41["cpcf_fixed_context"] is True and v41.options.use_cpcf and v41.options.use_spatial_lora
    assert v41.options.cpcf_fixed_context and v41.options.cpcf_context_gate == 0.3
    off = resolve_config({"version": "v4.1", "use_spatial_lora": False})  # explicit flags win
    assert off.options.use_spatial_lora is False and off.options.cpcf_fixed_context is True
    v3 = resolve_config({"version": "v3"})
    assert not v3.options.use_cpcf and not v3.options.use_spatial_lora


def test_bad_settings_are_actionable_errors():
    with pytest.raises(MoleflowError, match="odd"):
        _model(1, use_cpcf=True, cpcf_context_kernel=4)
    with pytest.raises(MoleflowError, match="exclude"):
        _model(1, use_cpcf=True, cpcf_fixed_context=True, cpcf_use_attention=True)
    with pytest.raises(MoleflowError, match="gate"):
        _model(1, use_cpcf=True, cpcf_fixed_context=True, cpcf_context_gate=1.5)
    with pytest.raises(MoleflowError, match="grid_size"):
        _model(1, use_spatial_lora=True, sc_lora_grid_size=0)
    with pytest.raises(MoleflowError, match="built for"):
        _model(1, use_spatial_lora=True, use_pos_embed=False).patch_scores(_feats(grid=(5, 5)), 0)
    with pytest.raises(MoleflowError, match="without use_cpcf"):
        _model(1).inverse(torch.zeros(1, *GRID, DIM), 0, context=torch.zeros(1, *GRID, DIM))


@pytest.mark.parametrize("kind", [{"cpcf_fixed_context": True}, {}, {"cpcf_use_attention": True}])
def test_context_of_a_patch_never_contains_the_patch_itself(kind):
    """A coupling conditioned on a context that contains x_i could read x2 from its own condition
    (shift = -x2), making log_jac_det wrong; the context must depend on the neighbours only."""
    model = _model(1, use_cpcf=True, **kind)
    x = torch.randn(1, *GRID, DIM)
    bumped = x.clone()
    bumped[0, 3, 3] += 5.0
    before, after = model.flow_context(x), model.flow_context(bumped)
    assert torch.equal(before[0, 3, 3], after[0, 3, 3])
    assert not torch.equal(before[0, 3, 4], after[0, 3, 4])  # the neighbours do see it
    leaky = _model(1, use_cpcf=True, cpcf_include_center=True, **kind)
    assert not torch.equal(leaky.flow_context(x)[0, 3, 3], leaky.flow_context(bumped)[0, 3, 3])
