"""Synthetic screw, toothbrush and zipper: determinism, exact masks, detectable defects, varied normals, PNG modes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage

from moleflow.data import synthetic_screw, synthetic_toothbrush, synthetic_zipper
from moleflow.data.synthetic import (
    CHANGE_THRESHOLD,
    CLASSES,
    generate_benchmark,
    render_defect,
    render_good,
)

NAMES = ("screw", "toothbrush", "zipper")
MODULES = {"screw": synthetic_screw, "toothbrush": synthetic_toothbrush, "zipper": synthetic_zipper}
GRAYSCALE = {"screw": True, "toothbrush": False, "zipper": True}  # as real MVTec stores them
SIZE = 64
SMALL = {"size": SIZE, "n_train": 3, "n_test_good": 2, "n_test_defect": 5, "progress": False}


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_objects_c")
    summary = generate_benchmark(out, classes=list(NAMES), size=SIZE, n_train=10, n_test_good=2, n_test_defect=20,
                                 seed=0, progress=False)
    return out, summary


def test_classes_are_registered_with_mvtec_defect_names():
    expected = {
        "screw": {"manipulated_front", "scratch_head", "thread_side", "thread_top"},
        "toothbrush": {"defective", "missing_tuft", "contamination"},
        "zipper": {"broken_teeth", "split_teeth", "squeezed_teeth", "fabric_border", "fabric_interior"},
    }
    for name in NAMES:
        assert set(CLASSES[name].defects) == expected[name]
        assert CLASSES[name].grayscale == GRAYSCALE[name]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_benchmark(tmp_path / folder, classes=list(NAMES), seed=seed, **SMALL)
    first, second, other = (tree_hashes(tmp_path / folder) for folder in "abc")
    assert first == second
    images = [rel for rel in first if "ground_truth" not in rel]
    assert len(images) == 3 * (3 + 2 + 5) and all(first[rel] != other[rel] for rel in images)


def test_stored_png_modes(bench):
    out, _ = bench
    for name in NAMES:
        for path in (out / name).rglob("*.png"):
            mode = Image.open(path).mode
            if "ground_truth" in path.parts:
                assert mode == "L", path
            else:
                assert mode == ("L" if GRAYSCALE[name] else "RGB"), path


@pytest.mark.parametrize("name", NAMES)
def test_renders_any_size_as_float_images_in_range(name):
    render = getattr(MODULES[name], f"render_{name}")
    for size in (32, 97, 300):
        image = render(np.random.default_rng(size), size).image
        assert image.shape == (size, size, 3) and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        if GRAYSCALE[name]:
            assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
        else:
            assert np.abs(image[..., 0] - image[..., 2]).max() > 0.1  # coloured plastic / bristles


@pytest.mark.parametrize("name", NAMES)
def test_masks_are_exactly_the_changed_pixels(name):
    for defect in CLASSES[name].defects:
        for index in range(3):
            sample = render_defect(name, defect, SIZE, seed=5, index=index)
            changed = np.abs(sample.image.astype(int) - sample.normal.astype(int)).max(-1) > CHANGE_THRESHOLD
            assert changed.any(), (defect, index)
            assert not (changed & ~sample.mask).any(), (defect, index)  # every visible change is masked
            near = ndimage.binary_dilation(changed, iterations=2)
            assert not (sample.mask & ~near).any(), (defect, index)  # and the mask is at most 2 px wider
            assert sample.mask.mean() < 0.25, (defect, index)  # a local defect, not a repainted image


@pytest.mark.parametrize("name", NAMES)
def test_train_images_vary(name):
    images = np.stack([render_good(name, SIZE, seed=0, index=i).astype(np.float32) for i in range(6)])
    pairwise = [np.abs(images[i] - images[j]).mean() for i in range(6) for j in range(i + 1, 6)]
    assert min(pairwise) > 1.0, pairwise  # mean difference of more than one grey level between any two


def test_screw_lies_at_any_angle():
    """The screw's principal axis (of its dark pixels) takes directions all round, not just a few degrees."""
    angles = []
    for index in range(12):
        image = render_good("screw", 128, seed=0, index=index)[..., 0].astype(np.float32)
        ys, xs = np.nonzero(image < np.median(image) - 60)
        cov = np.cov(np.stack([ys, xs]))
        axis = np.linalg.eigh(cov)[1][:, -1]  # of the largest eigenvalue
        angles.append(np.degrees(np.arctan2(axis[0], axis[1])) % 180)
    assert np.ptp(angles) > 90, angles


def patch_features(image: np.ndarray, k: int = 3) -> np.ndarray:
    padded = np.pad(image, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    return sliding_window_view(padded, (k, k), axis=(0, 1)).reshape(image.shape[0], image.shape[1], -1)


@pytest.mark.parametrize("name", NAMES)
def test_masked_pixels_look_unlike_any_normal_patch(bench, name):
    """Nearest-neighbour distance of 3x3 patches to train patches is larger inside the mask than outside."""
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
