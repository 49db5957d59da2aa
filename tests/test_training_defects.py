"""Synthetic anomalies: the exact-mask contract, determinism, foreground confinement, per-method behaviour."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest
import torch
from skimage import data, transform

from moleflow.data import training_defects as A
from moleflow.errors import MoleflowError


def _photo(array: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    resized = transform.resize(array, size, anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1).copy())


@functools.cache
def _images() -> dict[str, torch.Tensor]:
    return {
        "camera64": _photo(data.camera(), (64, 64)),  # grey, square
        "astronaut48x96": _photo(data.astronaut(), (48, 96)),  # RGB, non-square
        "camera176x976": _photo(data.camera(), (176, 976)),  # grey, very wide
    }


def image(name: str) -> torch.Tensor:
    return _images()[name].clone()


def _disc(height: int, width: int, radius: float, centre: tuple[float, float] | None = None) -> torch.Tensor:
    cy, cx = centre or (height / 2, width / 2)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2)[None]


METHODS = {
    "masking-noise": functools.partial(A.random_masking, fill="noise"),
    "masking-mean": functools.partial(A.random_masking, fill="mean"),
    "masking-zero": functools.partial(A.random_masking, fill="zero"),
    "noise": A.noise_injection,
    "cutpaste": A.cutpaste,
    "scar": functools.partial(A.cutpaste, scar=True),
    "perlin": A.perlin_texture,
    "perlin-photo": functools.partial(A.perlin_texture, texture=_photo(data.astronaut(), (40, 40))),
}
IMAGES = ("camera64", "astronaut48x96", "camera176x976")


def assert_exact_mask(original: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> None:
    assert out.shape == original.shape and out.dtype == original.dtype
    assert mask.shape == (1, *original.shape[-2:]) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    inside = mask[0].bool()
    assert inside.any(), "empty mask"
    assert torch.equal(out[:, ~inside], original[:, ~inside]), "a pixel outside the mask changed"
    changed = (out != original).any(dim=0)
    assert changed[inside].float().mean() > 0.95, "most pixels inside the mask must differ"
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("image_name", IMAGES)
@pytest.mark.parametrize("method", METHODS)
def test_contract_exact_mask_on_real_photos(method, image_name):
    original = image(image_name)
    for seed in range(3):
        out, mask = METHODS[method](original, generator=seed)
        assert_exact_mask(original, out, mask)
    assert torch.equal(original, image(image_name)), "the input image must not be modified in place"


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_result_different_seed_different_result(method):
    original = image("astronaut48x96")
    first = METHODS[method](original, generator=7)
    again = METHODS[method](original, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    others = [METHODS[method](original, generator=seed) for seed in (8, 9)]
    assert all(not torch.equal(first[1], mask) or not torch.equal(first[0], out) for out, mask in others)


@pytest.mark.parametrize("method", METHODS)
def test_one_generator_advances_between_calls(method):
    original, g = image("camera64"), torch.Generator().manual_seed(3)
    (out1, mask1), (out2, mask2) = (METHODS[method](original, generator=g) for _ in range(2))
    assert not (torch.equal(out1, out2) and torch.equal(mask1, mask2))


@pytest.mark.parametrize("method", METHODS)
def test_defect_confined_to_foreground(method):
    original = image("astronaut48x96")
    foreground = _disc(48, 96, radius=12, centre=(30, 60))
    for seed in range(4):
        out, mask = METHODS[method](original, generator=seed, foreground=foreground)
        assert_exact_mask(original, out, mask)
        assert not (mask.bool() & ~foreground).any(), "mask leaves the foreground"
        assert torch.equal(out[:, ~foreground[0]], original[:, ~foreground[0]])


@pytest.mark.parametrize("method", METHODS)
def test_tiny_foreground_still_gets_a_defect(method):
    original = image("camera64")
    foreground = torch.zeros(1, 64, 64, dtype=torch.bool)
    foreground[0, 40, 10:13] = True  # three pixels
    out, mask = METHODS[method](original, generator=1, foreground=foreground)
    assert mask.sum() >= 1 and not (mask.bool() & ~foreground).any()
    assert torch.equal(out[:, ~foreground[0]], original[:, ~foreground[0]])


@pytest.mark.parametrize("method", METHODS)
def test_bad_foreground_is_a_clear_error(method):
    original = image("camera64")
    with pytest.raises(MoleflowError, match="empty"):
        METHODS[method](original, generator=0, foreground=torch.zeros(1, 64, 64, dtype=torch.bool))
    with pytest.raises(MoleflowError, match="shape"):
        METHODS[method](original, generator=0, foreground=torch.ones(1, 32, 64, dtype=torch.bool))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(MoleflowError, match="float image"):
        A.noise_injection(torch.zeros(64, 64), generator=0)
    with pytest.raises(MoleflowError, match="float image"):
        A.noise_injection(torch.zeros(1, 8, 8, dtype=torch.uint8), generator=0)
    with pytest.raises(MoleflowError, match="generator"):
        A.noise_injection(image("camera64"), generator="seed")
    with pytest.raises(MoleflowError, match="fill"):
        A.random_masking(image("camera64"), generator=0, fill="blur")


def test_nothing_can_change_is_an_error_not_an_empty_mask():
    black = torch.zeros(3, 16, 16)
    with pytest.raises(MoleflowError, match="no pixel changed"):
        A.random_masking(black, generator=0, fill="zero")
    out, mask = A.random_masking(black, generator=0, fill="noise")  # the same image can change with noise
    assert_exact_mask(black, out, mask)


def test_float64_and_half_images_keep_their_dtype():
    for dtype in (torch.float64, torch.float16):
        original = image("camera64").to(dtype)
        out, mask = A.cutpaste(original, generator=0)
        assert_exact_mask(original, out, mask)


# ----------------------------------------------------------------------------------------- per method
def test_masking_fills_with_zero_mean_or_varied_noise():
    original = image("astronaut48x96")
    out, mask = A.random_masking(original, generator=0, fill="zero")
    assert (out[:, mask[0].bool()] == 0).all()
    out, mask = A.random_masking(original, generator=0, fill="mean")
    channel_means = original.mean(dim=(1, 2))
    assert torch.allclose(out[:, mask[0].bool()], channel_means[:, None].expand(-1, int(mask.sum())))
    out, mask = A.random_masking(original, generator=0, fill="noise")
    assert out[:, mask[0].bool()].std() > 0.2  # uniform noise has std 0.29


def test_masking_patch_count_and_size_follow_the_ranges():
    original = image("camera64")
    small = [A.random_masking(original, generator=s, num_patches=(1, 1), patch_frac=(0.1, 0.1))[1].sum()
             for s in range(5)]
    assert all(s <= 6 * 6 for s in small)  # one 6x6 patch at most (round(6.4))
    large = A.random_masking(original, generator=0, num_patches=(3, 3), patch_frac=(0.4, 0.4))[1].sum()
    assert large > 26 * 26  # three 26x26 patches cover more than one


def test_noise_strength_follows_sigma():
    grey = torch.full((1, 64, 64), 0.5)
    changes = []
    for sigma in (0.02, 0.2):
        out, mask = A.noise_injection(grey, generator=0, sigma=(sigma, sigma), region_frac=(0.2, 0.2))
        assert abs(mask.mean().item() - 0.2) < 0.05  # the ellipse covers about region_frac of the image
        changes.append((out - grey)[mask.bool()].abs().mean().item())
    assert changes[1] > 5 * changes[0]


def _find_source(original: torch.Tensor, block: torch.Tensor) -> list[tuple[int, int]]:
    """Every (top, left) where `block` occurs in `original` pixel for pixel."""
    height, width = block.shape[-2:]
    windows = original.unfold(1, height, 1).unfold(2, width, 1)  # (C, rows, cols, h, w)
    hits = (windows == block[:, None, None]).flatten(3).all(dim=3).all(dim=0)
    return [tuple(x) for x in torch.nonzero(hits).tolist()]


def test_cutpaste_without_jitter_pastes_a_copy_from_elsewhere():
    original = image("camera64")
    for seed in range(4):
        out, mask = A.cutpaste(original, generator=seed, jitter=0.0)
        rows, cols = torch.nonzero(mask[0], as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        block = out[:, top: int(rows.max()) + 1, left: int(cols.max()) + 1]
        sources = _find_source(original, block)
        assert sources and (top, left) not in sources, "the pasted block must be a copy of another place"


def test_cutpaste_area_and_aspect_follow_the_ranges():
    original, area = image("astronaut48x96"), 0.1 * 48 * 96
    unclipped = 0
    for seed in range(8):
        mask = A.cutpaste(original, generator=seed, area_frac=(0.1, 0.1), aspect=(3.0, 3.0), jitter=0.5)[1][0]
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert mask.sum() <= area * 1.1
        if rows.min() > 0 and cols.min() > 0 and rows.max() < 47 and cols.max() < 95 and mask.sum() > 0.95 * area:
            height, width = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
            assert abs(width / height - 3.0) < 0.35 and abs(height * width - area) < 0.1 * area
            unclipped += 1
    assert unclipped >= 2


def test_scar_is_small_and_thin_compared_to_cutpaste():
    original = image("astronaut48x96")
    for seed in range(5):
        scar = A.cutpaste(original, generator=seed, scar=True)[1]
        assert scar.sum() < 0.02 * 48 * 96  # below the smallest CutPaste rectangle


def test_colour_jitter_changes_colour_but_keeps_shape():
    original = image("astronaut48x96")
    jittered = A._colour_jitter(original, torch.Generator().manual_seed(0), 0.3)
    assert jittered.shape == original.shape and not torch.equal(jittered, original)
    assert np.corrcoef(jittered.mean(0).flatten(), original.mean(0).flatten())[0, 1] > 0.9


def test_perlin_noise_is_smooth_deterministic_and_scales_with_cells():
    coarse = A.perlin_noise((48, 96), (2, 4), generator=0)
    assert coarse.shape == (48, 96) and torch.equal(coarse, A.perlin_noise((48, 96), (2, 4), generator=0))
    assert not torch.equal(coarse, A.perlin_noise((48, 96), (2, 4), generator=1))
    assert coarse.abs().max() <= 1.0 and coarse.std() > 0.1
    fine = A.perlin_noise((48, 96), (12, 24), generator=0)
    roughness = [(n[:, 1:] - n[:, :-1]).abs().mean() for n in (coarse, fine)]
    assert roughness[1] > 3 * roughness[0]
    rotated = A.perlin_noise((48, 96), (2, 4), generator=0, angle=0.7)
    assert rotated.shape == (48, 96) and not torch.equal(rotated, coarse)


def test_perlin_texture_blends_the_texture_with_opacity_beta():
    original = image("astronaut48x96")
    white = torch.ones(1, 10, 10)  # another size and channel count: resized and broadcast
    out, mask = A.perlin_texture(original, generator=0, texture=white, beta=(0.25, 0.25), threshold=0.3)
    inside = mask[0].bool()
    assert torch.allclose(out[:, inside], 0.75 * original[:, inside] + 0.25, atol=1e-6)


def test_perlin_threshold_controls_the_defect_area():
    original = image("camera64")
    area = [np.mean([A.perlin_texture(original, generator=s, threshold=t)[1].mean() for s in range(4)])
            for t in (0.0, 0.5)]
    assert area[0] > 2 * area[1]
    out, mask = A.perlin_texture(original, generator=0, threshold=5.0)  # unreachable: falls back, never empty
    assert_exact_mask(original, out, mask)


# ----------------------------------------------------------------------------------------- foreground
@pytest.mark.parametrize("method", ["otsu", "border"])
@pytest.mark.parametrize("object_is_bright", [True, False])
def test_foreground_mask_finds_an_object(method, object_is_bright):
    disc = _disc(48, 96, radius=15, centre=(24, 40))
    noise = 0.03 * torch.randn(3, 48, 96, generator=torch.Generator().manual_seed(0))
    picture = (torch.where(disc, 0.8, 0.2) if object_is_bright else torch.where(disc, 0.2, 0.8)) + noise
    found = A.foreground_mask(picture.clamp(0, 1), method=method)
    assert found.shape == (1, 48, 96) and found.dtype == torch.bool
    iou = (found & disc).sum() / (found | disc).sum()
    assert iou > 0.9


def test_foreground_mask_fills_holes_and_handles_plain_images():
    ring = _disc(64, 64, radius=20) & ~_disc(64, 64, radius=8)
    found = A.foreground_mask(torch.where(ring, 0.9, 0.1).float())
    assert found[0, 32, 32] and (found == _disc(64, 64, radius=20)).float().mean() > 0.98
    assert A.foreground_mask(torch.full((1, 16, 16), 0.4)).all()
    with pytest.raises(MoleflowError, match="foreground method"):
        A.foreground_mask(image("camera64"), method="grabcut")


# ----------------------------------------------------------------------------------------- synthesizer
def test_synthesizer_is_deterministic_from_its_seed():
    original = image("camera64")

    def draws(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        synth = A.AnomalySynthesizer(seed=seed)
        return [synth(original) for _ in range(4)]

    first, again, other = draws(0), draws(0), draws(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(first, other))
    for out, mask in first:
        assert_exact_mask(original, out, mask)


def test_synthesizer_uses_every_method_and_their_options():
    original = image("astronaut48x96")
    synth = A.AnomalySynthesizer(methods=("masking", "noise"), seed=0, masking={"fill": "zero"})
    zero_filled = [bool((out[:, mask[0].bool()] == 0).all()) for out, mask in (synth(original) for _ in range(12))]
    assert any(zero_filled) and not all(zero_filled)  # both methods are picked, masking fills with zeros


def test_synthesizer_keeps_defects_on_the_foreground():
    disc = _disc(48, 96, radius=14, centre=(24, 50))
    picture = torch.where(disc, 0.7, 0.1).expand(3, -1, -1) + 0.1 * image("astronaut48x96")
    synth = A.AnomalySynthesizer(methods=tuple(A.METHODS), keep_on_foreground=True, seed=0)
    for _ in range(8):
        out, mask = synth(picture)
        assert_exact_mask(picture, out, mask)
        assert not (mask.bool() & ~disc).any()


def test_synthesizer_rejects_unknown_methods_and_options():
    with pytest.raises(MoleflowError, match="unknown anomaly method"):
        A.AnomalySynthesizer(methods=("masking", "blur"))
    with pytest.raises(MoleflowError, match="unknown option"):
        A.AnomalySynthesizer(methods=("cutpaste",), cutpaste={"colour": 0.2})
    with pytest.raises(MoleflowError, match="not in methods"):
        A.AnomalySynthesizer(methods=("noise",), cutpaste={"jitter": 0.2})
    with pytest.raises(MoleflowError, match="foreground method"):
        A.AnomalySynthesizer(foreground_method="grabcut")


def test_synthesizer_pickles_and_workers_draw_different_defects(monkeypatch):
    original = image("camera64")
    synth = A.AnomalySynthesizer(seed=0)
    copy = pickle.loads(pickle.dumps(synth))  # what a spawned DataLoader worker receives
    assert torch.equal(copy(original)[1], synth(original)[1])

    def in_worker(worker_id: int) -> torch.Tensor:
        info = torch.utils.data._utils.worker.WorkerInfo(id=worker_id, num_workers=2, seed=1234 + worker_id,
                                                         dataset=None)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        worker_copy = pickle.loads(pickle.dumps(A.AnomalySynthesizer(seed=0)))
        return torch.cat([worker_copy(original)[1] for _ in range(3)])

    assert not torch.equal(in_worker(0), in_worker(1))
    assert torch.equal(in_worker(0), in_worker(0))
