"""The v8 position baseline: per task, the mean training NLL at each patch position, fitted once after the
task trains, owned and saved by the task, subtracted from every score of that task."""

from __future__ import annotations

import pytest
import torch

from moleflow.errors import MoleflowError
from moleflow.flow.model import MoLEFlow
from moleflow.flow.score_baseline import PositionBaseline

DIM, GRID = 8, (4, 4)


def _flow(**kw) -> MoLEFlow:
    torch.manual_seed(0)
    return MoLEFlow(DIM, GRID, num_coupling_layers=2, lora_rank=2, position_baseline=True, **kw)


def _train_like(model: MoLEFlow, task: int, feats: torch.Tensor, steps: int = 5) -> None:
    model.observe_training_features(task, feats)
    opt = torch.optim.Adam(model.trainable_parameters(task), lr=1e-2)
    for _ in range(steps):
        out = model(feats, task)
        loss = out["patch_score"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.observe_trained(task, feats)


def test_baseline_is_the_per_position_training_mean():
    scores = torch.randn(6, *GRID) + torch.arange(16.0).view(GRID)
    baseline = PositionBaseline(GRID)
    torch.testing.assert_close(baseline(scores), scores)  # identity until fitted
    baseline.fit(scores)
    torch.testing.assert_close(baseline.mean, scores.mean(0))
    torch.testing.assert_close(baseline(scores).mean(0), torch.zeros(GRID), atol=1e-5, rtol=0)


def test_flow_scores_are_nll_minus_the_tasks_own_baseline_and_travel_with_its_state():
    model = _flow()
    feats = [torch.randn(5, *GRID, DIM) + 3 * t for t in range(2)]
    for t in range(2):
        model.begin_task(t)
        _train_like(model, t, feats[t])
    raw = model(feats[1], 1)["patch_score"].detach()
    scores = model.patch_scores(feats[1], 1)
    torch.testing.assert_close(scores, raw - model.score_baselines["1"].mean)
    torch.testing.assert_close(scores.mean(0), torch.zeros(GRID), atol=1e-4, rtol=0)  # training set: mean 0
    assert not torch.equal(model.score_baselines["0"].mean, model.score_baselines["1"].mean)
    state = model.task_state(1)
    assert {"score_baselines.1.mean", "score_baselines.1.fitted"} <= state.keys()

    fresh = _flow()
    for t in range(2):
        fresh.begin_task(t)
    fresh.load_shared_state(model.shared_state())
    for t in range(2):
        fresh.load_task_state(t, model.task_state(t))
    fresh.eval()
    assert torch.equal(fresh.patch_scores(feats[1], 1), scores)


def test_baseline_of_an_ended_task_cannot_be_refitted():
    model = _flow()
    model.begin_task(0)
    feats = torch.randn(3, *GRID, DIM)
    _train_like(model, 0, feats, steps=1)
    model.end_task(0)
    with pytest.raises(MoleflowError, match="before the task ends"):
        model.observe_trained(0, feats)


def test_without_the_option_scores_are_the_raw_nll():
    torch.manual_seed(0)
    model = MoLEFlow(DIM, GRID, num_coupling_layers=2, lora_rank=2)
    model.begin_task(0)
    feats = torch.randn(3, *GRID, DIM)
    model.observe_trained(0, feats)  # a no-op
    assert model.score_baselines is None
    assert torch.equal(model.patch_scores(feats, 0), model(feats, 0)["patch_score"].detach())


# --- training on strided sub-grids of patches (--token_stride) ----------------------------------------


def test_a_sub_grid_is_scored_exactly_as_those_patches_of_the_full_grid():
    model = _flow()
    model.begin_task(0)
    feats = torch.randn(2, *GRID, DIM)
    full = model(feats, 0)
    for dy, dx in [(0, 0), (1, 0), (0, 1), (1, 1)]:
        part = model(feats, 0, subgrid=(dy, dx, 2))
        for key in ("z", "log_jac_det", "patch_score"):  # the flow is per patch; the positional embedding is sliced
            torch.testing.assert_close(part[key], full[key][:, dy::2, dx::2])
    with pytest.raises(MoleflowError, match="was built for"):  # the model slices: it takes whole grids only
        model(feats[:, ::2, ::2], 0, subgrid=(0, 0, 2))
    with pytest.raises(MoleflowError, match="need 0 <= dy, dx < stride"):
        model(feats, 0, subgrid=(2, 0, 2))
    with pytest.raises(MoleflowError, match="SC-LoRA"):
        sc_lora = MoLEFlow(DIM, GRID, num_coupling_layers=2, use_spatial_lora=True)
        sc_lora.begin_task(0)
        sc_lora(feats, 0, subgrid=(0, 0, 2))


@pytest.mark.parametrize("options", [dict(use_cpcf=True, cpcf_fixed_context=True), dict(use_cpcf=True),
                                     dict(use_patch_attention=True)])
def test_a_sub_grid_of_a_flow_that_mixes_patches_sees_the_whole_grid(options):
    """CPCF's context and the patch attention read a patch's neighbours, which a strided sub-grid leaves
    out: the model computes them on the whole grid and slices after, so the sub-grid's scores are exactly
    those patches' scores on the whole grid (slicing before would change every context)."""
    torch.manual_seed(0)
    model = MoLEFlow(DIM, GRID, num_coupling_layers=2, **options)
    model.begin_task(0)
    with torch.no_grad():  # a non-trivial flow, so a context read from the wrong neighbours shows
        for layer in model._lora_layers:
            layer.base.weight.normal_(0, 0.3)
    feats = torch.randn(2, *GRID, DIM)
    full = model(feats, 0)
    for dy, dx in [(0, 1), (1, 0)]:
        part = model(feats, 0, subgrid=(dy, dx, 2))
        torch.testing.assert_close(part["patch_score"], full["patch_score"][:, dy::2, dx::2])


def test_token_stride_is_refused_where_it_would_do_nothing_or_is_not_a_stride():
    from moleflow.continual.trainer import check_components
    from moleflow.testing import train_config

    with pytest.raises(MoleflowError, match="--token_stride: not a setting, nor an option of model 'knn'"):
        train_config("--model", "knn", "--token_stride", "2")
    with pytest.raises(MoleflowError, match="--position_baseline: not a setting, nor an option of model 'knn'"):
        train_config("--model", "knn", "--position_baseline")
    with pytest.raises(MoleflowError, match="--token_stride changes nothing unless --use_spatial_lora is off"):
        train_config("--use_spatial_lora", "--token_stride", "2")
    check_components(train_config("--use_cpcf", "--token_stride", "2"))  # the context is sliced from whole grids
    check_components(train_config("--model", "knn"))  # a flow preset's stride/baseline never reach knn
    check_components(train_config("--token_stride", "2"))  # the flow takes it
    with pytest.raises(MoleflowError, match="--token_stride 0: must be >= 1"):  # before any image is read
        train_config("--token_stride", "0")
    with pytest.raises(MoleflowError, match="--token_stride 0: must be >= 1"):  # and in code, by the same range
        _flow(token_stride=0)


def test_under_the_v8_preset_an_sc_lora_flow_trains_on_whole_grids_instead_of_failing(tiny_bench, tiny_tasks, tmp_path):
    from helpers import tiny_config
    from moleflow.continual.trainer import ContinualRun

    tasks, extractor = tiny_tasks
    cfg = tiny_config(tiny_bench, tmp_path, version="v8", use_spatial_lora=True, num_epochs=1)
    assert cfg.options.token_stride == 2  # the preset's value, not a request
    state = ContinualRun(cfg, tasks, extractor.dim, extractor.grid, torch.device("cpu"), progress=False)
    assert not state.model.supports_subgrid and state.model.options.token_stride == 1  # the rule: back at 1
    state.train_task(0, None)  # every patch in every step; a strided step would raise in adapt()
    assert state.fit_log[0]["steps"] > 0
    with pytest.raises(MoleflowError, match="--token_stride changes nothing unless --use_spatial_lora is off"):
        _flow(use_spatial_lora=True, token_stride=2)  # in code: the same rule


# --- the per-position z-score (--position_std, v9) -----------------------------------------------------


def test_scaled_baseline_is_the_per_position_z_score_with_a_floor():
    spread = torch.linspace(0.5, 8.0, 16).view(GRID)  # positions differ in spread, not only in level
    scores = torch.randn(50, *GRID, generator=torch.Generator().manual_seed(0)) * spread + 10
    baseline = PositionBaseline(GRID, scale=True)
    torch.testing.assert_close(baseline(scores), scores)  # identity until fitted
    baseline.fit(scores)
    torch.testing.assert_close(baseline.std, scores.std(0))
    z = baseline(scores)
    torch.testing.assert_close(z.mean(0), torch.zeros(GRID), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(GRID), atol=1e-5, rtol=0)
    # a defect of +4 nats at the calmest position outranks +6 at the noisiest only after scaling
    probe = scores.mean(0).expand(2, *GRID).clone()
    probe[0, 0, 0] += 4
    probe[1, -1, -1] += 6
    unscaled = PositionBaseline(GRID)
    unscaled.fit(scores)
    assert unscaled(probe).flatten(1).amax(1).argmax() == 1
    assert baseline(probe).flatten(1).amax(1).argmax() == 0
    constant = PositionBaseline(GRID, scale=True)
    constant.fit(torch.ones(4, *GRID))  # zero spread: the floor keeps the scores finite
    assert torch.isfinite(constant(torch.full((1, *GRID), 2.0))).all()
    # the std buffer exists only with scale: v8 checkpoints keep exactly their keys
    assert set(PositionBaseline(GRID).state_dict()) == {"mean", "fitted"}
    assert set(baseline.state_dict()) == {"mean", "std", "fitted"}


def test_flow_with_position_std_scores_z_and_saves_the_std_with_the_task():
    model = _flow(position_std=True)
    feats = torch.randn(6, *GRID, DIM)
    model.begin_task(0)
    _train_like(model, 0, feats)
    raw = model(feats, 0)["patch_score"].detach()
    base = model.score_baselines["0"]
    torch.testing.assert_close(model.patch_scores(feats, 0), (raw - base.mean) / base.std)
    assert "score_baselines.0.std" in model.task_state(0)
    with pytest.raises(MoleflowError, match="--position_std changes nothing unless --position_baseline"):
        MoLEFlow(DIM, GRID, num_coupling_layers=2, position_std=True)


def test_position_std_is_refused_where_it_would_do_nothing():
    from moleflow.testing import train_config

    with pytest.raises(MoleflowError, match="--position_std changes nothing unless --position_baseline is True"):
        train_config("--no_position_baseline", "--position_std")
    with pytest.raises(MoleflowError, match="--position_std: not a setting, nor an option of model 'knn'"):
        train_config("--model", "knn", "--position_std")
    assert train_config("--version", "v8", "--position_std").options.position_std
    # a preset's value is not a request: v9 without the baseline simply has no z-score to take
    cfg = train_config("--version", "v9", "--no_position_baseline")
    assert cfg.options.position_std and cfg.options.applicable(cfg.model_context()).position_std is False


# --- --ema_decay: a task ends with the moving average of its parameters ------------------------------


def test_ema_decay_ends_the_task_on_the_running_average_of_its_steps():
    """A 1-parameter problem whose every step is known: the run's final value is exactly the exponential
    moving average of the values after each step (starting from the initial value), not the last step."""
    from moleflow.training import FitSettings, optimise

    def run(decay: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        module = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            module.weight.fill_(3.0)
        seen = [module.weight.detach().clone()]
        settings = FitSettings(4, 1, 0.5, 0.0, 0.0, 0, torch.device("cpu"), False, ema_decay=decay)
        sgd = lambda ps: torch.optim.SGD(ps, lr=0.5)  # noqa: E731 - deterministic steps, no moments

        def step_loss(batch, generator):
            loss = (module.weight ** 2).sum()
            return loss, 1

        def record(epoch, loss):
            seen.append(module.weight.detach().clone())

        optimise(module, [module.weight], settings, epoch_batches=lambda g: [0], step_loss=step_loss,
                 steps_per_epoch=1, label="t", make_optimizer=sgd, cosine=False,
                 on_epoch=lambda e, v: record(e, v) if decay == 0 else None)
        return module.weight.detach().clone(), seen

    last, trajectory = run(0.0)
    torch.testing.assert_close(last, trajectory[-1])  # off: the last step's value
    expected = trajectory[0].clone()
    for value in trajectory[1:]:
        expected = 0.75 * expected + 0.25 * value
    averaged, _ = run(0.75)
    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(averaged, last)


def test_ema_decay_is_refused_where_it_would_do_nothing():
    from moleflow.testing import train_config

    with pytest.raises(MoleflowError, match="--ema_decay: not a setting, nor an option of model 'knn'"):
        train_config("--model", "knn", "--ema_decay", "0.9")
    assert train_config("--ema_decay", "0.9").options.ema_decay == 0.9
    with pytest.raises(MoleflowError, match=r"--ema_decay 1.0: must be in \[0, 1\)"):  # before any image is read
        train_config("--ema_decay", "1.0")


# --- the border ring + interior plane (--baseline_interior plane, v12) -----------------------------------


def _layout_scores(n: int, seed: int = 0) -> torch.Tensor:
    """Training NLL of an 'object on a plain background' on an 8 x 8 grid: the backbone's artefacts (a border
    ring +30, a drift of -2 per row and -1 per column) plus the class's layout (a 4 x 4 object at +40 over a
    background at -60), with unit-5 noise per image and position."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    level = -2 * rows - cols - 60.0
    level[2:6, 2:6] += 100.0  # the object
    level[0, :] += 30; level[-1, :] += 30; level[:, 0] += 30; level[:, -1] += 30
    return level + 5 * torch.randn(n, 8, 8, generator=g)


def test_plane_baseline_keeps_the_border_own_and_fits_one_plane_inside():
    from moleflow.flow.score_baseline import border_ring

    scores = _layout_scores(40)
    baseline = PositionBaseline((8, 8), interior="plane", border=1)
    baseline.fit(scores)
    ring = border_ring((8, 8), 1)
    assert ring.sum() == 28 and not ring[1:7, 1:7].any()
    means = scores.double().mean(0)
    torch.testing.assert_close(baseline.mean[ring], means[ring].float())  # the border: each position its own
    inner = baseline.mean[1:7, 1:7].double()
    # the interior is a plane (every second difference 0) and the least-squares one through the interior means
    torch.testing.assert_close(inner[:, 2:] - 2 * inner[:, 1:-1] + inner[:, :-2], torch.zeros(6, 4, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(inner[2:] - 2 * inner[1:-1] + inner[:-2], torch.zeros(4, 6, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    rows, cols = torch.meshgrid(torch.arange(1.0, 7), torch.arange(1.0, 7), indexing="ij")
    design = torch.stack([torch.ones(36), rows.flatten(), cols.flatten()], 1).double()
    coef = torch.linalg.lstsq(design, means[1:7, 1:7].reshape(-1, 1)).solution
    torch.testing.assert_close(inner, (design @ coef).reshape(6, 6), atol=1e-4, rtol=0)
    scaled = PositionBaseline((8, 8), scale=True, interior="plane", border=1)
    scaled.fit(scores)
    torch.testing.assert_close(scaled.std[ring], scores.std(0)[ring], rtol=1e-4, atol=1e-4)
    pooled = ((scores.double() - scaled.mean.double())[:, 1:7, 1:7].pow(2).sum() / (36 * 39)).sqrt()
    torch.testing.assert_close(scaled.std[1:7, 1:7], torch.full((6, 6), float(pooled)), rtol=1e-4, atol=1e-4)
    assert set(scaled.state_dict()) == {"mean", "std", "fitted"}  # the same keys as v9's baseline


def test_plane_baseline_ranks_a_defect_on_the_object_above_background_noise_where_a_per_position_one_does_not():
    """Why v12 exists: a per-position mean subtracts the object's layout, which lifts the plain background to
    the object's level; a defect on the object then competes with every background patch's noise."""
    train = _layout_scores(60, seed=1)
    test = _layout_scores(30, seed=2)
    defect = torch.zeros(30, 8, 8, dtype=torch.bool)
    defect[::2, 3, 3] = True  # half the images: +8 nats on one object patch (1.6 of the noise's sd)
    test = test + 8 * defect

    def auroc(scores: torch.Tensor) -> float:
        pos, neg = scores[defect], scores[~defect]
        return float((pos[:, None] > neg[None, :]).double().mean())

    per_position, plane = PositionBaseline((8, 8)), PositionBaseline((8, 8), interior="plane", border=1)
    per_position.fit(train)
    plane.fit(train)
    assert auroc(plane(test)) > 0.96 > 0.92 > auroc(per_position(test))  # measured: 0.973 and 0.894


def test_plane_baseline_options_are_refused_where_they_change_nothing_and_the_ring_fits_small_grids():
    from moleflow.testing import train_config

    with pytest.raises(MoleflowError, match="--baseline_border changes nothing unless --position_baseline is on "
                                            "with --baseline_interior plane"):
        train_config("--version", "v11", "--baseline_border", "2")  # v11: every position its own
    with pytest.raises(MoleflowError, match="--baseline_interior changes nothing unless --position_baseline"):
        train_config("--no_position_baseline", "--baseline_interior", "plane")
    small = PositionBaseline(GRID, interior="plane", border=2)  # 4 x 4: a ring of 2 would leave no interior
    assert small.border == 1 and int((~small.ring).sum()) == 4
    with pytest.raises(MoleflowError, match="unknown baseline interior"):
        PositionBaseline(GRID, interior="smooth")


def test_flow_with_the_plane_baseline_subtracts_it_and_saves_it_with_the_task():
    model = MoLEFlow(DIM, (6, 6), num_coupling_layers=2, lora_rank=2, position_baseline=True,
                     baseline_interior="plane", baseline_border=1)
    feats = torch.randn(6, 6, 6, DIM)
    model.begin_task(0)
    _train_like(model, 0, feats)
    raw = model(feats, 0)["patch_score"].detach()
    base = model.score_baselines["0"].mean
    torch.testing.assert_close(model.patch_scores(feats, 0), raw - base)
    inner = base[1:5, 1:5].double()
    torch.testing.assert_close(inner[:, 2:] - 2 * inner[:, 1:-1] + inner[:, :-2], torch.zeros(4, 2, dtype=torch.float64),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(base[0], raw.mean(0)[0], atol=1e-4, rtol=1e-4)  # the border row: its own mean
    assert "score_baselines.0.mean" in model.task_state(0)


def test_v12_is_v11_with_the_plane_baseline_and_trains_exactly_as_v11(tiny_bench, tiny_tasks, tmp_path):
    """v12 changes how a task's scores are calibrated, never what it learns: the same seed gives bitwise the
    same trained parameters and raw NLL, and different scores."""
    import dataclasses

    from helpers import task_scores, tiny_config, trained_state
    from moleflow.testing import train_config

    v11, v12 = train_config("--version", "v11").options, train_config("--version", "v12").options
    differ = {f.name for f in dataclasses.fields(v11) if getattr(v11, f.name) != getattr(v12, f.name)}
    assert differ == {"baseline_interior", "baseline_border", "position_std"}
    assert (v12.baseline_interior, v12.baseline_border, v12.position_std) == ("plane", 2, False)
    assert train_config().options == v12  # the default version

    tasks, _ = tiny_tasks
    states = {version: trained_state(tiny_config(tiny_bench, tmp_path, version=version, num_epochs=1), tiny_tasks, 1)
              for version in ("v11", "v12")}
    params = [dict(s.model.named_parameters()) for s in states.values()]
    assert params[0].keys() == params[1].keys()
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])
    feats = tasks[0].tests[0].test.patch
    with torch.no_grad():
        raw = [s.model(feats, 0)["patch_score"] for s in states.values()]
    assert torch.equal(raw[0], raw[1])
    assert not torch.allclose(task_scores(states["v11"], tasks[0]), task_scores(states["v12"], tasks[0]))
