"""Synthetic capsule, pill and metal_nut: determinism, exact masks, visible defects, varied normals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from moleflow.data import synthetic_capsule, synthetic_metal_nut, synthetic_pill
from moleflow.data.synthetic import (
    CHANGE_THRESHOLD,
    CLASSES,
    generate_benchmark,
    render_defect,
)

NAMES = ("capsule", "pill", "metal_nut")
MODULES = {"capsule": synthetic_capsule, "pill": synthetic_pill, "metal_nut": synthetic_metal_nut}
SIZE = 64
SMALL = {"size": SIZE, "n_train": 3, "n_test_good": 2, "n_test_defect": 5, "progress": False}


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_objects_b")
    summary = generate_benchmark(out, classes=list(NAMES), size=SIZE, n_train=10, n_test_good=2, n_test_defect=15,
                                 seed=0, progress=False)
    return out, summary


def test_classes_are_registered_with_mvtec_defect_names():
    expected = {
        "capsule": {"crack", "faulty_imprint", "poke", "scratch", "squeeze"},
        "pill": {"color", "contamination", "crack", "faulty_imprint", "scratch"},
        "metal_nut": {"bent", "color", "flip", "scratch"},
    }
    for name in NAMES:
        assert set(CLASSES[name].defects) == expected[name]
        assert not CLASSES[name].grayscale


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_benchmark(tmp_path / folder, classes=list(NAMES), seed=seed, **SMALL)
    first, second, other = (tree_hashes(tmp_path / folder) for folder in "abc")
    assert first == second
    images = [rel for rel in first if "ground_truth" not in rel]
    assert len(images) == 3 * (3 + 2 + 5) and all(first[rel] != other[rel] for rel in images)


@pytest.mark.parametrize("name", NAMES)
def test_renders_any_size_as_float_images_in_range(name):
    render = getattr(MODULES[name], f"render_{name}")
    for size in (32, 97, 300):
        image = render(np.random.default_rng(size), size).image
        assert image.shape == (size, size, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_masks_are_exactly_the_changed_pixels(name):
    for defect in CLASSES[name].defects:
        for index in range(4):
            sample = render_defect(name, defect, SIZE, seed=5, index=index)
            changed = np.abs(sample.image.astype(int) - sample.normal.astype(int)).max(-1) > CHANGE_THRESHOLD
            assert changed.any(), (defect, index)
            assert not (changed & ~sample.mask).any(), (defect, index)
            near = ndimage.binary_dilation(changed, iterations=2)
            assert not (sample.mask & ~near).any(), (defect, index)
            assert sample.mask.mean() < (0.7 if defect == "flip" else 0.25), (defect, index)  # local, not global


def test_flipped_nut_is_masked_as_a_whole_part():
    for index in range(3):
        sample = render_defect("metal_nut", "flip", SIZE, seed=2, index=index)
        part = sample.normal.max(-1) > 60  # the metal; the background and the hole are near black
        assert part.mean() > 0.25
        assert (sample.mask & part).sum() >= 0.97 * part.sum(), index


def test_train_images_vary(bench):
    out, _ = bench
    for name in NAMES:
        train = np.stack([load(p) for p in sorted((out / name / "train/good").glob("*.png"))])
        assert {Image.open(p).mode for p in (out / name).rglob("*.png") if "ground_truth" not in str(p)} == {"RGB"}
        spread = np.abs(train - train.mean(0)).mean(axis=(1, 2, 3))
        assert (spread > 0.005).all(), (name, spread)  # pose, lighting and texture change every image


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

    wins = {}
    for defect, n in summary[name]["defects"].items():
        for i in range(n):
            patches = patch_features(load(out / name / "test" / defect / f"{i:03d}.png"))
            mask = np.asarray(Image.open(out / name / "ground_truth" / defect / f"{i:03d}_mask.png")) > 0
            outside = patches[~mask][rng.choice((~mask).sum(), 400, replace=False)]
            wins.setdefault(defect, []).append(nn_distance(patches[mask]).mean() > nn_distance(outside).mean())
    overall = np.mean([w for v in wins.values() for w in v])
    assert overall >= 0.8, f"{name}: defect region stands out in only {overall:.0%} of images ({wins})"
    assert all(np.mean(v) >= 0.5 for v in wins.values()), wins  # no defect type is invisible
