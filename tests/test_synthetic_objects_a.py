"""Synthetic bottle, cable and hazelnut: determinism, exact masks, detectable defects, varied normals, PNG modes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from moleflow.data.synthetic import (
    CHANGE_THRESHOLD,
    CLASSES,
    generate_benchmark,
    render_defect,
    render_good,
)

NAMES = ["bottle", "cable", "hazelnut"]
SIZE = 64
SMALL = {"size": SIZE, "n_train": 3, "n_test_good": 2, "n_test_defect": 4, "progress": False}


def tree_hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_objects_a")
    summary = generate_benchmark(out, classes=NAMES, size=SIZE, n_train=12, n_test_good=2, n_test_defect=20, seed=0,
                                 progress=False)
    return out, summary


def test_registered_with_mvtec_defect_types():
    expected = {"bottle": {"broken_large", "broken_small", "contamination"},
                "cable": {"cable_swap", "missing_wire", "poke_insulation", "cut_inner_insulation"},
                "hazelnut": {"crack", "cut", "hole", "print"}}
    for name in NAMES:
        assert set(CLASSES[name].defects) == expected[name]
        assert not CLASSES[name].grayscale


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_benchmark(tmp_path / folder, classes=NAMES, seed=seed, **SMALL)
    first, second, other = (tree_hashes(tmp_path / folder) for folder in "abc")
    assert first == second
    images = [rel for rel in first if rel.endswith(".png") and "ground_truth" not in rel]
    assert {rel.split("/")[0] for rel in images} == set(NAMES)
    assert images and all(first[rel] != other[rel] for rel in images)


def test_stored_png_modes(bench):
    out, _ = bench
    for name in NAMES:
        for path in (out / name).rglob("*.png"):
            mode = Image.open(path).mode
            assert mode == ("L" if "ground_truth" in path.parts else "RGB"), path


@pytest.mark.parametrize("name", NAMES)
def test_masks_are_exactly_the_changed_pixels(name):
    for defect in CLASSES[name].defects:
        for index in range(3):
            sample = render_defect(name, defect, SIZE, seed=5, index=index)
            changed = np.abs(sample.image.astype(int) - sample.normal.astype(int)).max(-1) > CHANGE_THRESHOLD
            assert changed.any(), (defect, index)
            assert not (changed & ~sample.mask).any(), (defect, index)
            near = ndimage.binary_dilation(changed, iterations=2)
            assert not (sample.mask & ~near).any(), (defect, index)
            assert sample.mask.mean() < 0.25, (defect, index)  # a local defect, not a repainted image


@pytest.mark.parametrize("name", NAMES)
def test_renders_at_odd_and_tiny_sizes(name):
    spec = CLASSES[name]
    for size in (32, 97):
        scene = spec.render(np.random.default_rng(size), size)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.float32
        assert 0.0 <= scene.image.min() and scene.image.max() <= 1.0
        for defect, fn in spec.defects.items():
            image = np.asarray(fn(scene, np.random.default_rng(1), 0.12, 1.0))
            assert image.shape == (size, size, 3) and 0.0 <= image.min() and image.max() <= 1.0, defect
            assert np.abs(image - scene.image).max() > 3 / 255, defect  # strongest setting: always visible


@pytest.mark.parametrize("name", NAMES)
def test_train_images_vary(bench, name):
    out, _ = bench
    train = np.stack([load(p) for p in sorted((out / name / "train/good").glob("*.png"))])
    flat = train.reshape(len(train), -1)
    distances = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert distances[~np.eye(len(train), dtype=bool)].min() > 0.005  # no two train images alike
    assert train.mean((1, 2)).std(0).max() > 0.002  # lighting / colour varies a little too


def test_hazelnut_defects_stay_on_the_nut():
    """Defects are drawn on the shell: the pixels they change were nut, not the near-black background."""
    for defect in CLASSES["hazelnut"].defects:
        for index in range(3):
            sample = render_defect("hazelnut", defect, 128, seed=2, index=index)
            background = sample.normal.max(-1) < 20
            assert (sample.mask & background).sum() <= 0.1 * sample.mask.sum(), (defect, index)


def test_cable_swap_recolours_two_whole_cores_and_keeps_the_geometry():
    for index in range(3):
        sample = render_defect("cable", "cable_swap", 128, seed=1, index=index)
        # Two cores' insulation rings (2 * pi * (0.163^2 - 0.098^2) ~ 0.107 of the image), nothing else.
        assert 0.08 < sample.mask.mean() < 0.16, index
        changed = np.abs(sample.image.astype(int) - sample.normal.astype(int)).max(-1) > CHANGE_THRESHOLD
        # Sheath, filler, copper and background stay put: every changed pixel touches coloured insulation.
        coloured = [image.astype(int).max(-1) - image.astype(int).min(-1) > 40 for image in (sample.normal, sample.image)]
        assert not (changed & ~ndimage.binary_dilation(coloured[0] | coloured[1])).any(), index


def patch_features(image: np.ndarray, k: int = 3) -> np.ndarray:
    padded = np.pad(image, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    return sliding_window_view(padded, (k, k), axis=(0, 1)).reshape(image.shape[0], image.shape[1], -1)


@pytest.mark.parametrize("name", NAMES)
def test_masked_pixels_look_unlike_any_normal_patch(bench, name):
    """3x3 patches inside the mask are farther from every train patch than patches outside it."""
    out, summary = bench
    rng = np.random.default_rng(0)
    train = sorted((out / name / "train/good").glob("*.png"))
    bank = np.concatenate([patch_features(load(p)).reshape(-1, 27) for p in train])
    bank = bank[rng.choice(len(bank), 6000, replace=False)]
    bank_sq = (bank**2).sum(1)

    def nn_distance(queries: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum((queries**2).sum(1)[:, None] + bank_sq[None] - 2 * queries @ bank.T, 0).min(1))

    wins = []
    for defect, n in summary[name]["defects"].items():
        for i in range(n):
            patches = patch_features(load(out / name / "test" / defect / f"{i:03d}.png"))
            mask = np.asarray(Image.open(out / name / "ground_truth" / defect / f"{i:03d}_mask.png")) > 0
            outside = patches[~mask][rng.choice((~mask).sum(), 400, replace=False)]
            wins.append(nn_distance(patches[mask]).mean() > nn_distance(outside).mean())
    assert np.mean(wins) >= 0.8, f"{name}: defect region stands out in only {np.mean(wins):.0%} of images"


@pytest.mark.parametrize("name", NAMES)
def test_defect_region_is_less_normal_than_before_the_defect(name):
    """Stricter than the test above (which compares with patches anywhere, flat background included): the
    masked patches of each defect are farther from normal patches than the same pixels were before it."""
    rng = np.random.default_rng(0)
    bank = np.concatenate([patch_features(render_good(name, SIZE, 0, i) / 255).reshape(-1, 27) for i in range(12)])
    bank = bank[rng.choice(len(bank), 6000, replace=False)].astype(np.float32)
    bank_sq = (bank**2).sum(1)

    def nn_distance(queries: np.ndarray) -> float:
        queries = queries.astype(np.float32)
        return float(np.sqrt(np.maximum((queries**2).sum(1)[:, None] + bank_sq[None] - 2 * queries @ bank.T, 0)
                             .min(1)).mean())

    for defect in CLASSES[name].defects:
        wins = []
        for index in range(6):
            sample = render_defect(name, defect, SIZE, seed=9, index=index)
            after, before = (patch_features(image / 255)[sample.mask] for image in (sample.image, sample.normal))
            wins.append(nn_distance(after) > nn_distance(before))
        assert np.mean(wins) >= 0.8, f"{name}/{defect}: stands out in only {np.mean(wins):.0%} of images"
