"""moleflow-ae: discovery through the installed distribution, the AE losses against reference
implementations (skimage, scipy, numpy), the networks on grey non-square input, the training corruption,
the options (flags, checks, rules), zero forgetting, and one tiny end-to-end run through moleflow's trainer."""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
import pytest
import torch

from moleflow import registry
from moleflow.contract import FitContext
from moleflow.errors import MoleflowError
from moleflow.losses.compose import CompositeLoss

from moleflow_ae.corruption import TrainingCorruption
from moleflow_ae.losses import focal_frequency, sobel_magnitude, ssim
from moleflow_ae.model import ReconstructionAE
from moleflow_ae.networks import build_network, count_parameters
from moleflow_ae.options import AEOptions

LOSSES = {"mse", "ssim", "focal_frequency", "sobel_gradient"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from threads, and on a busy 2-core machine OpenMP threads spin
    against each other (measured: 12 s vs 0.2 s for one tiny fit). Restored for the other test files."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _images(n: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth-ish images with a bright centred object on a dark background."""
    g = torch.Generator().manual_seed(seed)
    img = 0.1 + 0.05 * torch.rand(n, 3, height, width, generator=g)
    img[:, :, height // 4: 3 * height // 4, width // 4: 3 * width // 4] += 0.6
    return img.clamp(0, 1)


#: a tiny network and a short loop (the loop's options are the model's own)
TINY = {"width": 4, "depth": 2, "latent": 4, "num_epochs": 2, "batch_size": 4, "lr": 1e-3, "grad_clip": 0.0}


def _context(seed: int = 0, label: str = "task 0") -> FitContext:
    return FitContext(seed=seed, device=torch.device("cpu"), label=label, progress=False)


def _trained(seed: int = 0, **opts) -> ReconstructionAE:
    model = ReconstructionAE(**{**TINY, **opts})
    model.begin_task(0, "a")
    model.fit_task(0, _images(6, seed=seed), model.trainable_parameters(0), _context())
    model.end_task(0)
    return model


# ------------------------------------------------------------------------------------------- discovery
def test_components_come_from_the_installed_distribution():
    try:
        dist = distribution("moleflow-ae")
    except PackageNotFoundError:
        pytest.fail("moleflow-ae is not installed: run ./run.sh test (it installs everything under plugins/)")
    declared = {(ep.group, ep.name) for ep in dist.entry_points}
    assert declared == {("moleflow.models", "ae")} | {("moleflow.losses", name) for name in LOSSES}
    found = {(c.group, c.name): c.distribution for g in ("models", "losses") for c in registry.components(g)}
    assert found[("models", "ae")] == "moleflow-ae"
    assert all(found[("losses", name)] == "moleflow-ae" for name in LOSSES)
    assert registry.get("models", "ae") is ReconstructionAE


# ------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(channels)
    a = torch.rand(2, channels, 40, 52, generator=g)
    b = (a + 0.15 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(2):
        ref = structural_similarity(a[i].numpy(), b[i].numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1)
        assert ours[i].item() == pytest.approx(float(ref), abs=1e-3)
    loss = registry.create("losses", "ssim")({"reconstruction": a, "target": b})
    assert loss.item() == pytest.approx(1 - ours.mean().item(), abs=1e-6)
    assert registry.create("losses", "ssim")({"reconstruction": a, "target": a}).item() == pytest.approx(0, abs=1e-5)


def test_ssim_refuses_images_smaller_than_its_window():
    x = torch.rand(1, 1, 8, 40)
    with pytest.raises(MoleflowError, match="at least 11x11"):
        ssim(x, x)


def test_sobel_magnitude_matches_scipy_and_loss_is_l1_between_magnitudes():
    from scipy import ndimage

    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 2, 17, 23, generator=g, dtype=torch.float64).unbind(0)
    a, b = a[None], b[None]
    ours = sobel_magnitude(a, eps=0.0)
    for c in range(2):
        ref = np.hypot(ndimage.sobel(a[0, c].numpy(), axis=0), ndimage.sobel(a[0, c].numpy(), axis=1))
        np.testing.assert_allclose(ours[0, c].numpy(), ref, atol=1e-10)
    loss = registry.create("losses", "sobel_gradient")({"reconstruction": a, "target": b})
    assert loss.item() == pytest.approx((sobel_magnitude(a) - sobel_magnitude(b)).abs().mean().item())
    # a constant shift has no gradient: the loss only sees edges
    flat = registry.create("losses", "sobel_gradient")({"reconstruction": a, "target": (a + 0.3)})
    assert flat.item() < 1e-6


def _ffl_numpy(recon: np.ndarray, target: np.ndarray, alpha: float) -> float:
    """Jiang et al. 2021, written independently from the spec: per image and channel."""
    total = []
    for r, t in zip(recon.reshape(-1, *recon.shape[-2:]), target.reshape(-1, *target.shape[-2:])):
        d = np.fft.fft2(r, norm="ortho") - np.fft.fft2(t, norm="ortho")
        dist = np.abs(d) ** 2
        w = np.abs(d) ** alpha
        w = w / w.max() if w.max() > 0 else np.zeros_like(w)
        total.append((w * dist).mean())
    return float(np.mean(total))


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_focal_frequency_matches_a_numpy_reference(alpha):
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 16, 20, generator=g, dtype=torch.float64)
    b = torch.rand(2, 3, 16, 20, generator=g, dtype=torch.float64)
    b[1, 2] = a[1, 2]  # one identical channel: weights 0/0 must become 0, not NaN
    assert focal_frequency(a, b, alpha).item() == pytest.approx(_ffl_numpy(a.numpy(), b.numpy(), alpha), rel=1e-9)
    loss = registry.create("losses", "focal_frequency")
    assert loss.alpha == 1.0
    assert loss({"reconstruction": a, "target": a}).item() == 0.0


def test_losses_combine_with_weights_and_give_finite_gradients():
    composite = CompositeLoss(["mse=1", "ssim=0.5", "focal_frequency=2", "sobel_gradient=0.3"], model_name="ae")
    recon = torch.rand(2, 3, 24, 24, requires_grad=True)
    target = torch.rand(2, 3, 24, 24)
    total, parts = composite({"reconstruction": recon, "target": target})
    expected = parts["mse"] + 0.5 * parts["ssim"] + 2 * parts["focal_frequency"] + 0.3 * parts["sobel_gradient"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert set(parts) == LOSSES and all(v > 0 for v in parts.values())
    total.backward()
    assert torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- networks
def test_ae_and_unet_have_similar_sizes_but_only_unet_has_skips():
    ae, unet = (build_network(arch, 3, 16, 4, 32) for arch in ("ae", "unet"))
    assert not ae.skips and unet.skips
    assert 0.9 < count_parameters(unet) / count_parameters(ae) < 1.1
    # a skip-free decoder sees the image only through the bottleneck: its first decoder conv has no
    # extra input channels
    assert ae.up[0][0].in_channels == ae.bottleneck[-2].out_channels
    assert unet.up[0][0].in_channels > unet.bottleneck[-2].out_channels


@pytest.mark.parametrize("arch", ["ae", "unet"])
@pytest.mark.parametrize("score", ["recon", "latent", "both"])
def test_grey_non_square_input_needs_no_resizing(arch, score):
    model = _trained(arch=arch, channels=1, score=score, depth=4)  # 40x72: not a multiple of 2**4
    images = _images(2, 40, 72, seed=3)
    assert model.reconstruct(images, 0).shape == (2, 1, 40, 72)
    scores = model.patch_scores(images, 0)
    assert scores.shape == (2, 40, 72) and torch.isfinite(scores).all() and (scores >= 0).all()


def test_channels_one_averages_rgb():
    model = ReconstructionAE(channels=1)
    images = torch.rand(2, 3, 8, 8)
    assert torch.equal(model.to_model_channels(images), images.mean(1, keepdim=True))
    with pytest.raises(MoleflowError, match="--channels 1"):
        ReconstructionAE(channels=3).to_model_channels(torch.rand(1, 1, 8, 8))


def test_score_both_is_the_sum_of_mean_normalised_maps():
    recon_model = _trained(score="recon")
    latent_model, both_model = ReconstructionAE(**TINY, score="latent"), ReconstructionAE(**TINY, score="both")
    for other in (latent_model, both_model):
        other.load_task_state(0, recon_model.task_state(0))
    images = _images(2, seed=5)
    r, lat, both = (m.patch_scores(images, 0) for m in (recon_model, latent_model, both_model))
    means = recon_model.tasks["0"].score_means
    assert not torch.allclose(r, lat)
    torch.testing.assert_close(both, r / means[0] + lat / means[1])
    # the means come from the clean training images, so normal images score about 1 per map
    train_both = both_model.patch_scores(_images(6, seed=0), 0).mean().item()
    assert train_both == pytest.approx(2.0, rel=1e-4)


# ------------------------------------------------------------------------------------------- corruption
def test_synthetic_defects_change_only_masked_foreground_pixels():
    opts = AEOptions(anomaly_prob=1.0, foreground=True)
    clean = _images(4, 40, 48, seed=4)
    corrupted, target, masks = TrainingCorruption(opts, seed=0)(clean)
    assert torch.equal(target, clean)  # no augmentation by default
    changed = (corrupted != clean).any(1, keepdim=True)
    assert torch.equal(changed.float(), masks) and masks.flatten(1).sum(1).min() > 0
    foreground = torch.zeros_like(masks, dtype=torch.bool)
    foreground[..., 10:30, 12:36] = True  # the bright object of _images
    assert not (masks.bool() & ~foreground).any()
    again, _, _ = TrainingCorruption(opts, seed=0)(clean)
    assert torch.equal(again, corrupted)  # deterministic from the seed


def test_synthetic_false_trains_a_plain_autoencoder():
    clean = _images(3)
    corrupted, target, masks = TrainingCorruption(AEOptions(synthetic=False), seed=0)(clean)
    assert torch.equal(corrupted, clean) and torch.equal(target, clean) and masks.sum() == 0


def test_rotation_is_rigid_on_non_square_images():
    # a centred disc is unchanged by any rotation: an aspect mistake would turn it into an ellipse
    height, width = 40, 96
    rows, cols = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    disc = (((rows - height / 2) ** 2 + (cols - width / 2) ** 2).sqrt() < 12).float().expand(4, 3, -1, -1)
    rotated = TrainingCorruption(AEOptions(rotate=90.0, synthetic=False), seed=0).augment(disc)
    # only where no reflected border can reach: every source pixel within 19 px of the centre is inside
    inner = ((rows - height / 2) ** 2 + (cols - width / 2) ** 2).sqrt() < 19
    assert (rotated - disc)[..., inner].abs().mean() < 0.02
    bar = torch.zeros(8, 1, height, width)
    bar[..., 18:22, 20:76] = 1.0  # a long horizontal bar (224 px per image) does turn
    assert (TrainingCorruption(AEOptions(rotate=90.0), seed=0).augment(bar) - bar).abs().sum() > 8 * 100
    zoomed = TrainingCorruption(AEOptions(scale=0.05, synthetic=False), seed=1).augment(disc)
    assert 0 < (zoomed - disc).abs().mean() < 0.05
    assert math.isclose(float(disc.sum()), float(zoomed.sum()), rel_tol=0.15)


def test_anomaly_prob_zero_trains_a_plain_autoencoder_too():
    clean = _images(3)
    corrupted, _, masks = TrainingCorruption(AEOptions(anomaly_prob=0.0), seed=0)(clean)
    assert torch.equal(corrupted, clean) and masks.sum() == 0


# ------------------------------------------------------------------------------------------- options
def test_constructor_options_are_checked_like_flags():
    with pytest.raises(MoleflowError, match=r"--rotation: not an option of model 'ae' \(its options: .*rotate"):
        ReconstructionAE(rotation=5)
    with pytest.raises(MoleflowError, match="--arch vae: use one of ae, unet"):
        ReconstructionAE(arch="vae")
    with pytest.raises(MoleflowError, match="--channels 2: use one of 1, 3"):
        ReconstructionAE(channels=2)
    with pytest.raises(MoleflowError, match="--rotate: cannot use True"):
        ReconstructionAE(rotate=True)
    with pytest.raises(MoleflowError, match=r"--scale 1.5: must be in \[0, 1\)"):
        ReconstructionAE(scale=1.5)
    with pytest.raises(MoleflowError, match=r"--anomaly_prob -0.1: must be in \[0, 1\]"):
        ReconstructionAE(anomaly_prob=-0.1)
    with pytest.raises(MoleflowError, match="--width 0: must be >= 1"):
        ReconstructionAE(width=0)
    model = ReconstructionAE(rotate=5)
    assert model.opts.rotate == 5.0 and isinstance(model.opts.rotate, float)
    # changes replace fields of the options given, the others are kept
    model = ReconstructionAE(AEOptions(score="both", width=8), width=4)
    assert (model.opts.score, model.opts.width, model.opts.depth) == ("both", 4, 4)


def _cli_cfg(tmp_path, *argv):
    from moleflow.testing import train_config

    return train_config("--data_path", str(tmp_path), *argv)


def test_every_option_is_a_flag_and_a_model_opt(tmp_path):
    by_flag = _cli_cfg(tmp_path, "--model", "ae", "--score", "both", "--arch", "unet", "--rotate", "5",
                       "--no_synthetic", "--grad-clip", "0", "--num_epochs", "3", "--lr", "1e-3")
    by_opt = _cli_cfg(tmp_path, "--model", "ae", "--model_opt", "score=both", "arch=unet", "rotate=5",
                      "synthetic=false", "grad_clip=0", "num_epochs=3", "lr=0.001")
    assert isinstance(by_flag.options, AEOptions) and by_flag.options == by_opt.options
    o = by_flag.options
    assert (o.score, o.arch, o.rotate, o.synthetic, o.grad_clip, o.num_epochs, o.lr) == \
        ("both", "unet", 5.0, False, 0.0, 3, 1e-3)
    assert _cli_cfg(tmp_path, "--model", "ae").options == AEOptions()


def test_flags_of_the_ae_are_not_flags_of_another_model(tmp_path):
    with pytest.raises(MoleflowError, match="--arch: not a setting, nor an option of model 'moleflow'"):
        _cli_cfg(tmp_path, "--arch", "unet")
    with pytest.raises(MoleflowError, match="--rotate: not a setting, nor an option of model 'knn'"):
        _cli_cfg(tmp_path, "--model", "knn", "--rotate", "5")
    # the AE trains with plain Adam: weight decay is not among its options
    with pytest.raises(MoleflowError, match="--weight_decay: not a setting, nor an option of model 'ae'"):
        _cli_cfg(tmp_path, "--model", "ae", "--weight_decay", "0.1")


def test_flag_values_are_checked_before_any_image_is_read(tmp_path):
    from moleflow.testing import model_opt_error

    with pytest.raises(MoleflowError, match=r"--rotate 200(\.0)?: must be in \[0, 180\]"):
        _cli_cfg(tmp_path, "--model", "ae", "--rotate", "200")
    with pytest.raises(MoleflowError, match=r"--rotate: cannot use \[1\]"):
        _cli_cfg(tmp_path, "--model", "ae", "--model_opt", "rotate=[1]")
    assert "--colour: not an option of model 'ae'" in model_opt_error("ae", "colour=1", tmp_path)
    assert "must be in [0, 180]" in model_opt_error("ae", "rotate=200", tmp_path)


@pytest.mark.parametrize("argv, refused", [
    (["--no_synthetic", "--anomaly_prob", "0.3"], "anomaly_prob"),
    (["--model_opt", "synthetic=false", "anomaly_prob=0.3"], "anomaly_prob"),
    (["--no_synthetic", "--no_foreground"], "foreground"),
    (["--anomaly_prob", "0", "--foreground"], "foreground"),
    (["--anomaly_prob", "0", "--no_synthetic"], "anomaly_prob"),
    (["--anomaly_prob", "0", "--synthetic"], "synthetic"),
])
def test_an_option_that_would_change_nothing_is_refused(tmp_path, argv, refused):
    with pytest.raises(MoleflowError, match=f"^--{refused} changes nothing unless"):
        _cli_cfg(tmp_path, "--model", "ae", *argv)


@pytest.mark.parametrize("argv, expected", [
    (["--no_synthetic"], {"synthetic": False}),
    (["--anomaly_prob", "0"], {"anomaly_prob": 0.0, "synthetic": True}),
    (["--anomaly_prob", "1", "--no_foreground"], {"anomaly_prob": 1.0, "foreground": False}),
    (["--synthetic", "--foreground", "--anomaly_prob", "0.2"], {"synthetic": True, "foreground": True,
                                                                 "anomaly_prob": 0.2}),
])
def test_options_that_are_read_are_accepted(tmp_path, argv, expected):
    options = _cli_cfg(tmp_path, "--model", "ae", *argv).options
    assert {name: getattr(options, name) for name in expected} == expected


# ------------------------------------------------------------------------------------------- its loss
def test_loss_is_an_option_with_mse_as_its_default(tmp_path):
    assert _cli_cfg(tmp_path, "--model", "ae").options.loss == ["mse=1"]
    given = _cli_cfg(tmp_path, "--model", "ae", "--loss", "mse=1", "--loss", "focal_frequency=0.5",
                     "--loss_opt", "focal_frequency.alpha=2")
    assert given.options.loss == ["mse=1", "focal_frequency=0.5"]  # replaces the default, not added to it
    terms = given.options.make_loss("ae").terms
    assert [(t.name, t.weight) for t in terms] == [("mse", 1.0), ("focal_frequency", 0.5)]
    assert terms[1].fn.alpha == 2.0


def test_a_loss_the_ae_cannot_feed_is_refused_before_any_image_is_read(tmp_path):
    # given, so never replaced: nll reads the flow's outputs
    with pytest.raises(MoleflowError, match="--loss nll: loss 'nll' needs model output 'patch_score', which "
                                            "model 'ae' does not produce"):
        _cli_cfg(tmp_path, "--model", "ae", "--loss", "nll=1.0", "--loss", "mse=1")
    with pytest.raises(MoleflowError, match="--loss_opt ssim.nope: loss 'ssim' has no option 'nope'"):
        _cli_cfg(tmp_path, "--model", "ae", "--loss", "ssim=1", "--loss_opt", "ssim.nope=1")
    with pytest.raises(MoleflowError, match="unknown loss 'nope'"):
        _cli_cfg(tmp_path, "--model", "ae", "--loss", "nope=1")


def test_fit_task_runs_the_models_own_loop_and_loss():
    images = _images(6)
    model = ReconstructionAE(**{**TINY, "num_epochs": 3, "batch_size": 4})
    model.begin_task(0)
    initial = model.task_state(0)
    fit = model.fit_task(0, images, model.trainable_parameters(0), _context())
    assert len(fit.epoch_losses) == 3 and fit.steps == 3 * 2 and fit.seconds > 0  # 6 images in batches of 4
    assert fit.loss_state == {}  # the AE losses own no parameters
    # the same start, seed and options train the same network; another --loss trains another one
    again = ReconstructionAE(**{**TINY, "num_epochs": 3})
    other = ReconstructionAE(**{**TINY, "num_epochs": 3, "loss": ["mse=1", "ssim=1"]})
    for m in (again, other):
        m.load_task_state(0, initial)
    assert again.fit_task(0, images, again.trainable_parameters(0), _context()).epoch_losses == fit.epoch_losses
    assert other.fit_task(0, images, other.trainable_parameters(0), _context()).epoch_losses != fit.epoch_losses
    # the constructor checks names and values, not which outputs a loss reads: fit_task still names the problem
    flow_loss = ReconstructionAE(**TINY, loss=["nll=1.0"])
    flow_loss.begin_task(0)
    with pytest.raises(MoleflowError, match="needs model output 'patch_score'"):
        flow_loss.fit_task(0, images, flow_loss.trainable_parameters(0), _context())
    with pytest.raises(MoleflowError, match=r"task 3 \(x\): no training images"):
        model.fit_task(0, images[:0], model.trainable_parameters(0), _context(label="task 3 (x)"))


# ------------------------------------------------------------------------------------------- continual
def test_zero_forgetting_and_checkpoint_round_trip():
    model = _trained(seed=0)
    test = _images(3, seed=9)
    before = model.patch_scores(test, 0)
    model.begin_task(1, "b")
    params = model.trainable_parameters(1)
    assert not any(p is q for p in params for q in model.tasks["0"].parameters())
    model.fit_task(1, _images(6, seed=1) * 0.5, params, _context(seed=1, label="task 1"))
    model.end_task(1)
    assert torch.equal(model.patch_scores(test, 0), before)
    assert not torch.equal(model.patch_scores(test, 1), before)
    counts = model.param_counts()
    assert counts["shared"] == 0 and counts["per_task"] == [count_parameters(model.tasks["0"].net)] * 2
    restored = ReconstructionAE(**TINY)
    for t in (0, 1):
        restored.load_task_state(t, model.task_state(t))
    assert torch.equal(restored.patch_scores(test, 0), before)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from moleflow.testing import tiny_benchmark

    return tiny_benchmark(tmp_path_factory.mktemp("bench") / "synth")


def _cfg(bench, runs, *extra):
    from moleflow.testing import train_config

    return train_config("--data_path", str(bench), "--img_size", "64", "--no_pretrained", "--embed_dim", "32",
                        "--model", "ae", "--runs_dir", str(runs), "--heatmaps", "0", "--device", "cpu", *extra)


def test_end_to_end_through_the_trainer(bench, tmp_path, capsys):
    from moleflow.cli import main
    from moleflow.continual.trainer import run_training
    from moleflow.inference import evaluate_run

    # flags and --model_opt items are the same options
    cfg = _cfg(bench, tmp_path, "--num_epochs", "2", "--lr", "1e-3", "--batch_size", "4", "--arch", "unet",
               "--score", "both", "--model_opt", "width=4", "depth=3", "latent=8", "--rotate", "5",
               "--scale", "0.05", "--loss", "mse=1", "--loss", "ssim=0.5", "--loss", "sobel_gradient=0.5",
               "--loss", "focal_frequency=1")
    run = run_training(cfg, progress=False, log=lambda *_: None)
    m = run.read_json("metrics.json")
    assert m["routing"]["accuracy"] == 1.0
    assert m["continual"]["bwt"]["image_auroc"] == 0.0  # one AE per task: earlier tasks cannot move
    expected = count_parameters(build_network("unet", 3, 4, 3, 8))
    assert m["params"]["shared"] == 0 and m["params"]["per_task"] == [expected] * 3
    for metrics in m["final"]["per_class"].values():
        assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    # the loop's options reached the model's fit_task: 2 epochs of ceil(8 images / 4) steps per task
    assert [(f["epochs"], f["steps"]) for f in run.read_json("progress.json")["fit"]] == [(2, 4)] * 3
    # config.json keeps the options typed, by name
    saved = run.read_json("config.json")["model"]
    assert saved["name"] == "ae" and saved["options"]["rotate"] == 5.0 and saved["options"]["arch"] == "unet"
    assert saved["options"]["loss"] == ["mse=1", "ssim=0.5", "sobel_gradient=0.5", "focal_frequency=1"]
    # checkpoints hold everything scoring needs: re-evaluating from them gives the same numbers
    before = m["final"]["per_class"]
    assert evaluate_run(run.path, progress=False).read_json("metrics.json")["final"]["per_class"] == before
    # --resume takes every option from the run folder: an option flag with it is refused
    assert main(["train", "--resume", str(run.path), "--score", "latent"]) == 2
    assert "drop: --score" in capsys.readouterr().err
