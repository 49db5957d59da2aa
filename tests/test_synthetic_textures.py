"""Synthetic carpet, tile and wood: determinism, exact masks, detectable defects, varied normals, PNG modes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from moleflow.data.synthetic import CHANGE_THRESHOLD, CLASSES, generate_benchmark, render_defect

NAMES = ["carpet", "tile", "wood"]
SIZE = 64
SMALL = {"size": SIZE, "n_train": 3, "n_test_good": 2, "n_test_defect": 5, "progress": False}


def tree_hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_textures")
    summary = generate_benchmark(out, classes=NAMES, size=SIZE, n_train=12, n_test_good=2, n_test_defect=20, seed=0,
                                 progress=False)
    return out, summary


def test_registered_with_at_least_three_mvtec_defect_types():
    expected = {"carpet": {"color", "cut", "hole", "metal_contamination", "thread"},
                "tile": {"crack", "glue_strip", "gray_stroke", "oil", "rough"},
                "wood": {"color", "hole", "liquid", "scratch"}}
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
            assert sample.mask.mean() < 0.5, (defect, index)  # a local defect, not a repainted image


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
    # Every pair differs clearly (not just by sensor noise), and the mean colour itself varies a little.
    flat = train.reshape(len(train), -1)
    distances = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert distances[~np.eye(len(train), dtype=bool)].min() > 0.02
    assert train.mean((1, 2)).std(0).max() > 0.003


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
