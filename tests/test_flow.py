from __future__ import annotations

from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import train_steps
from moleflow.errors import MoleflowError
from moleflow.features.positional import sinusoidal_2d
from moleflow.flow.model import MoLEFlow

DIM, GRID = 32, (4, 4)
V1 = dict(adapter="instancenorm", adapter_first_task=False, task0_lora=False, lora_scaling="alpha_over_2rank")
V3 = dict(adapter="film", adapter_first_task=True, task0_lora=True, task0_mix=0.1)


def _model(num_tasks: int = 1, *, seed: int = 0, **kw) -> MoLEFlow:
    torch.manual_seed(seed)
    kw.setdefault("num_coupling_layers", 3)
    model = MoLEFlow(kw.pop("dim", DIM), kw.pop("grid", GRID), **kw)
    for t in range(num_tasks):
        model.begin_task(t, f"class{t}")
    return model


def _feats(b: int = 3, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(b, *GRID, DIM) + shift


def _perturb(model: MoLEFlow, scale: float = 0.1) -> None:
    """Random values for every learnable tensor (incl. LoRA B) so experts and base all do something."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "w_perm" not in name:  # FrEIA's fixed permutation matrices must stay permutations
                p.add_(scale * torch.randn_like(p))


_train = partial(train_steps, steps=4)


def _names(model: MoLEFlow) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


# ----- positional embedding -------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 12, 6, 7, 5, 1])
def test_sinusoidal_2d_is_sin_y_cos_y_sin_x_cos_x_and_zero_past_a_multiple_of_4(dim):
    import math

    emb = sinusoidal_2d(3, 5, dim)
    assert emb.shape == (3, 5, dim) and emb.dtype == torch.float32
    q = dim // 4
    for y, x in [(0, 0), (2, 4), (1, 3)]:  # timm's layout, written out: frequency k is 1/10000^(k/q)
        freqs = [10000.0 ** (-k / q) for k in range(q)]
        expected = ([math.sin(y * f) for f in freqs] + [math.cos(y * f) for f in freqs]
                    + [math.sin(x * f) for f in freqs] + [math.cos(x * f) for f in freqs] + [0.0] * (dim % 4))
        assert emb[y, x].tolist() == pytest.approx(expected, abs=1e-6)
    if dim >= 4:
        assert torch.unique(emb.reshape(15, dim), dim=0).shape[0] == 15  # every position distinct


def test_positional_embedding_is_added_and_not_saved():
    model = _model(1, adapter="none")
    feats = _feats()
    assert torch.equal(model.adapt(feats, 0), feats + sinusoidal_2d(*GRID, DIM))
    assert not any("pos_embed" in k for k in model.state_dict())
    off = _model(1, adapter="none", use_pos_embed=False)
    assert torch.equal(off.adapt(feats, 0), feats)


# ----- invertibility and Jacobian -------------------------------------------------------------------


@pytest.mark.parametrize("coupling", ["allinone", "glow"])
@pytest.mark.parametrize("task", [0, 2])
def test_inverse_recovers_adapted_input_with_experts_active(coupling, task):
    model = _model(3, coupling_type=coupling)
    _perturb(model, scale=0.05)  # larger values make GLOW's float32 round trip ill-conditioned (|z| ~ 40)
    feats = _feats()
    with torch.no_grad():
        x_adapted = model.adapt(feats, task)
        z = model(feats, task)["z"]
        other = 1 if task != 1 else 0
        assert not torch.allclose(z, model(feats, other)["z"], atol=1e-3)  # the expert changes the mapping
        assert (model.inverse(z, task) - x_adapted).abs().max() < 1e-4
        # the check is sensitive: inverting with another task's expert does not recover x'
        assert (model.inverse(z, other) - x_adapted).abs().max() > 1e-3


@pytest.mark.parametrize("coupling", ["allinone", "glow"])
def test_log_jac_det_matches_numerical_jacobian(coupling):
    model = _model(2, dim=4, grid=(1, 1), coupling_type=coupling, adapter="none", subnet_hidden=8).double()
    _perturb(model, scale=0.2)  # much larger makes J ill-conditioned (cond ~1e10) and slogdet itself inexact
    token = torch.randn(4, dtype=torch.float64)

    def to_z(v: torch.Tensor) -> torch.Tensor:
        return model(v.view(1, 1, 1, 4), 1)["z"].reshape(4)

    jac = torch.autograd.functional.jacobian(to_z, token)
    sign, logabsdet = torch.linalg.slogdet(jac)
    out = model(token.view(1, 1, 1, 4), 1)
    assert out["log_jac_det"].shape == (1, 1, 1)
    assert abs(logabsdet.item()) > 1e-2  # a non-trivial volume change is being checked
    assert abs(out["log_jac_det"].item() - logabsdet.item()) < 1e-8
    expected_score = 0.5 * out["z"].pow(2).sum() - out["log_jac_det"].sum()
    assert abs(out["patch_score"].item() - expected_score.item()) < 1e-12


# ----- zero forgetting ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [V3, V1], ids=["v3", "v1"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_zero_forgetting_scores_of_earlier_tasks_are_bitwise_identical(config, weight_decay):
    model = _model(1, **config, num_coupling_layers=2)
    data = [_feats(shift=float(t)) for t in range(3)]
    initial0 = model.patch_scores(data[0], 0)
    _train(model, 0, data[0], weight_decay=weight_decay)
    model.end_task(0)
    scores0 = model.patch_scores(data[0], 0)
    assert not torch.equal(scores0, initial0)  # task 0 actually trained
    frozen_state = {k: v.clone() for k, v in model.state_dict().items()}

    for task in (1, 2):
        model.begin_task(task)
        scores_before = model.patch_scores(data[task], task)
        _train(model, task, data[task], weight_decay=weight_decay)
        assert not torch.equal(model.patch_scores(data[task], task), scores_before)  # the new task learns
        model.end_task(task)
        assert torch.equal(model.patch_scores(data[0], 0), scores0)
        for key, value in frozen_state.items():
            assert torch.equal(model.state_dict()[key], value), key


def test_zero_forgetting_holds_even_if_optimiser_gets_every_parameter():
    model = _model(1, **V3, num_coupling_layers=2)
    x0, x1 = _feats(), _feats(shift=2.0)
    _train(model, 0, x0)
    model.end_task(0)
    scores0 = model.patch_scores(x0, 0)
    model.begin_task(1)
    _train(model, 1, x1, weight_decay=0.5, params=list(model.parameters()))
    assert torch.equal(model.patch_scores(x0, 0), scores0)


# ----- parameter ownership --------------------------------------------------------------------------


def test_trainable_parameters_are_owned_exactly():
    layers = 3
    model = _model(1, **V3, num_coupling_layers=layers)
    names = _names(model)
    fixed = {id(p) for p in model.parameters() if not p.requires_grad}
    assert fixed and all(names[i].rsplit(".", 1)[-1] in ("w_perm", "w_perm_inv") for i in fixed)

    p0 = model.trainable_parameters(0)
    n0 = [names[id(p)] for p in p0]
    assert all(p.requires_grad for p in p0) and not ({id(p) for p in p0} & fixed)
    assert sum(n.endswith("global_scale") for n in n0) == layers
    assert sum(n.endswith("global_offset") for n in n0) == layers
    assert any(".lora_B.0" in n for n in n0) and any(n.startswith("adapters.0.") for n in n0)
    base = {id(p) for p in model.base_parameters()}
    assert base < {id(p) for p in p0} and not (base & fixed)

    globals_before = {n: p.detach().clone() for n, p in model.named_parameters() if "global_" in n}
    perms_before = {n: p.detach().clone() for n, p in model.named_parameters() if "w_perm" in n}
    _train(model, 0, _feats())
    for n, p in model.named_parameters():
        if n in globals_before:
            assert not torch.equal(p, globals_before[n]), f"{n} did not train"
        if n in perms_before:
            assert torch.equal(p, perms_before[n]) and not p.requires_grad

    model.end_task(0)
    assert not any(p.requires_grad for p in p0)
    model.begin_task(1)
    p1 = model.trainable_parameters(1)
    ids1 = {id(p) for p in p1}
    assert not (ids1 & {id(p) for p in p0}) and not (ids1 & base) and not (ids1 & fixed)
    assert all(p.requires_grad for p in p1)
    names = _names(model)
    assert all(".lora_A.1" in names[id(p)] or ".lora_B.1" in names[id(p)] or names[id(p)].startswith("adapters.1.")
               for p in p1)
    trainable_now = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable_now == ids1  # nothing but task 1's expert and adapter can receive gradients


def test_v1_task0_trains_only_the_base_and_plain_flow_keeps_base_trainable():
    v1 = _model(2, **V1)
    assert [id(p) for p in v1.trainable_parameters(0)] == [id(p) for p in v1.base_parameters()]
    assert v1.param_counts()["per_task"][0] == 0

    plain = _model(1, experts=False)  # a plain flow: no expert, no adapter
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    plain.end_task(0)
    plain.begin_task(1)
    base = {id(p) for p in plain.base_parameters()}
    assert base == {id(p) for p in plain.trainable_parameters(1)}
    assert all(p.requires_grad for p in plain.base_parameters())


# ----- state ----------------------------------------------------------------------------------------


def test_task_and_shared_state_round_trip_into_fresh_model(tmp_path):
    source = _model(3, **V3)
    _perturb(source)
    feats = _feats()
    # through safetensors, as checkpoints are written (it refuses non-contiguous tensors)
    save_file(source.shared_state(), tmp_path / "shared.safetensors")
    shared = load_file(tmp_path / "shared.safetensors")
    for t in range(3):
        save_file(source.task_state(t), tmp_path / f"task{t}.safetensors")
    tasks = [load_file(tmp_path / f"task{t}.safetensors") for t in range(3)]
    assert not (set(shared) & set().union(*tasks))
    assert set(shared) | set().union(*tasks) == set(source.state_dict())
    assert any("w_perm" in k for k in shared)
    assert all(".lora_" in k or k.startswith(("adapters.1.", "input_stats.1.")) for k in tasks[1])

    fresh = _model(3, seed=123, **V3)
    assert not torch.equal(fresh.patch_scores(feats, 1), source.patch_scores(feats, 1))
    fresh.load_shared_state(shared)
    for t in range(3):
        fresh.load_task_state(t, tasks[t])
    for t in range(3):
        assert torch.equal(fresh.patch_scores(feats, t), source.patch_scores(feats, t))


def test_loading_state_is_strict():
    model = _model(3, **V3)
    state1 = model.task_state(1)
    with pytest.raises(MoleflowError, match="unexpected"):
        model.load_task_state(1, {**state1, "adapters.1.bogus": torch.zeros(1)})
    with pytest.raises(MoleflowError, match="missing"):
        model.load_task_state(1, dict(list(state1.items())[1:]))
    with pytest.raises(MoleflowError, match="task 2"):
        model.load_task_state(2, state1)  # another task's keys
    shared = model.shared_state()
    with pytest.raises(MoleflowError, match="missing"):
        model.load_shared_state({k: v for k, v in shared.items() if "w_perm_inv" not in k})
    wider = _model(3, **V3, subnet_hidden=2 * DIM + 2)
    with pytest.raises(MoleflowError, match="shapes"):
        model.load_shared_state(wider.shared_state())


# ----- sizes and contract errors --------------------------------------------------------------------


def test_param_counts_match_the_architecture():
    d, hidden, rank, layers = 128, 256, 8, 8
    model = _model(2, dim=d, grid=(2, 2), subnet_hidden=hidden, lora_rank=rank, num_coupling_layers=layers, **V3)
    counts = model.param_counts()
    half = d // 2
    base = layers * ((half * hidden + hidden) + (hidden * d + d) + 2 * d)  # subnets + global scale/offset
    lora = layers * rank * ((half + hidden) + (hidden + d))
    film_hidden = max(d // 2, 128)
    film = 2 * d + (d * film_hidden + film_hidden) + (film_hidden * d + d) + 1
    assert counts == {"shared": base, "per_task": [lora + film, lora + film]}
    assert counts["per_task"][1] == sum(p.numel() for p in model.trainable_parameters(1))
    assert counts["per_task"][1] / counts["shared"] < 0.25


def test_contract_errors_are_actionable():
    model = _model(1)
    with pytest.raises(MoleflowError, match=r"begin_task\(1\)"):
        model.patch_scores(_feats(), 1)
    with pytest.raises(MoleflowError, match="out of order"):
        model.begin_task(2)
    with pytest.raises(MoleflowError, match="built for"):
        model.patch_scores(torch.randn(2, 5, 5, DIM), 0)
    with pytest.raises(MoleflowError, match="coupling_type"):
        MoLEFlow(DIM, GRID, coupling_type="nice")
    model.begin_task(1, "class1")
    assert model.task_names == ["class0", "class1"]
    assert not any(p.requires_grad for p in model.base_parameters())  # begin_task(1) ended task 0
