"""The embedded MVTec-style benchmark: layout, masks, determinism, errors, and that defects are detectable.

The generic per-class checks run over all 15 classes; checks of one class's own geometry live in
test_synthetic_classes.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from moleflow.synth.benchmark import (
    CHANGE_THRESHOLD,
    CLASSES,
    DEFAULT_CLASSES,
    generate_benchmark,
    render_defect,
)
from moleflow.errors import MoleflowError

SIZE = 64
SMALL = dict(size=SIZE, n_train=3, n_test_good=2, n_test_defect=4, progress=False)
NAMES = list(CLASSES)  # all 15
GRAYSCALE = {"grid", "screw", "zipper"}  # stored as L-mode PNG, as real MVTec stores them
DEFECT_NAMES = {
    "bottle": {"broken_large", "broken_small", "contamination"},
    "cable": {"cable_swap", "missing_wire", "poke_insulation", "cut_inner_insulation"},
    "capsule": {"crack", "faulty_imprint", "poke", "scratch", "squeeze"},
    "carpet": {"color", "cut", "hole", "metal_contamination", "thread"},
    "grid": {"broken", "bent", "contamination"},
    "hazelnut": {"crack", "cut", "hole", "print"},
    "leather": {"cut", "color", "fold"},
    "metal_nut": {"bent", "color", "flip", "scratch"},
    "pill": {"color", "contamination", "crack", "faulty_imprint", "scratch"},
    "screw": {"manipulated_front", "scratch_head", "thread_side", "thread_top"},
    "tile": {"crack", "glue_strip", "gray_stroke", "oil", "rough"},
    "toothbrush": {"defective", "missing_tuft", "contamination"},
    "transistor": {"bent_lead", "cut_lead", "damaged_case"},
    "wood": {"color", "hole", "liquid", "scratch"},
    "zipper": {"broken_teeth", "split_teeth", "squeezed_teeth", "fabric_border", "fabric_interior"},
}
MAX_MASK_AREA = 0.25  # a local defect, not a repainted image ...
MAX_MASK_AREA_OF = {("metal_nut", "flip"): 0.7}  # ... except the flipped nut: the whole part is the defect
MIN_TRAIN_DISTANCE = 0.02  # mean |difference| of any two train images (0..1 scale)
# capsule: one smooth shell in a narrow pose range; its closest train pair is ~0.019 apart, so it keeps the
# object groups' original 0.005 (still far above sensor noise).
MIN_TRAIN_DISTANCE_OF = {"capsule": 0.005}
STANDS_OUT = 0.8  # held for every class in the per-group files; no class needed a lower threshold


def tree_hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[Path, dict]:
    """A benchmark big enough for the detection checks, generated once for the module."""
    out = tmp_path_factory.mktemp("synth")
    summary = generate_benchmark(out, size=SIZE, n_train=30, n_test_good=20, n_test_defect=30, seed=0, progress=False,
                                 workers=1)  # in-process: spawning workers costs more than these tiny images
    return out, summary


@pytest.fixture(scope="module")
def bench_all(bench) -> tuple[Path, dict]:
    """All 15 classes: the three default ones from `bench`, the other twelve written beside them, smaller."""
    out, summary = bench
    others = [name for name in NAMES if name not in summary]
    more = generate_benchmark(out, classes=others, size=SIZE, n_train=12, n_test_good=1, n_test_defect=20, seed=0,
                              progress=False, workers=1)
    return out, {**summary, **more}


def test_layout_matches_mvtec_and_summary(tmp_path, capsys):
    summary = generate_benchmark(tmp_path, **SMALL)
    assert capsys.readouterr().err == ""  # progress=False: no bar
    assert list(summary) == list(DEFAULT_CLASSES)
    for name, counts in summary.items():
        defects = list(CLASSES[name].defects)
        assert len(defects) >= 3
        # 4 split over 3 types: the first type takes the remainder.
        assert counts == {"train": 3, "test_good": 2, "defects": {defects[0]: 2, defects[1]: 1, defects[2]: 1}}
        root = tmp_path / name
        expected = {f"train/good/{i:03d}.png" for i in range(3)} | {f"test/good/{i:03d}.png" for i in range(2)}
        for defect, n in counts["defects"].items():
            expected |= {f"test/{defect}/{i:03d}.png" for i in range(n)}
            expected |= {f"ground_truth/{defect}/{i:03d}_mask.png" for i in range(n)}
        found = {str(p.relative_to(root)) for p in root.rglob("*.png")}
        assert found == expected  # in particular: no masks for good images, a mask for every defect image
        for rel in found:
            image = Image.open(root / rel)
            assert image.size == (SIZE, SIZE)
            if rel.startswith("ground_truth"):
                mask = np.asarray(image)
                assert image.mode == "L" and set(np.unique(mask)) == {0, 255}, rel  # binary and never empty
            else:
                assert image.mode == ("L" if name == "grid" else "RGB"), rel


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    tiny = {"size": 32, "n_train": 2, "n_test_good": 1, "n_test_defect": 5, "progress": False, "workers": 1}
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_benchmark(tmp_path / folder, classes="all", seed=seed, **tiny)
    first, second, other = (tree_hashes(tmp_path / folder) for folder in "abc")
    assert first == second  # every file, the markers included
    images = [rel for rel in first if rel.endswith(".png") and "ground_truth" not in rel]
    assert len(images) == len(NAMES) * (2 + 1 + 5) and {rel.split("/")[0] for rel in images} == set(NAMES)
    assert [rel for rel in images if first[rel] == other[rel]] == []


def test_images_do_not_depend_on_which_classes_are_generated(tmp_path):
    generate_benchmark(tmp_path / "all", seed=1, **SMALL)
    generate_benchmark(tmp_path / "one", classes=["transistor"], seed=1, **SMALL)
    assert tree_hashes(tmp_path / "all" / "transistor") == tree_hashes(tmp_path / "one" / "transistor")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["transistor"]


def test_all_writes_the_15_mvtec_classes_in_parallel_byte_identical_to_one_process(tmp_path):
    from moleflow.data.streams import MVTEC15

    tiny = {**SMALL, "size": 32, "n_train": 1, "n_test_good": 1, "n_test_defect": 2}
    summary = generate_benchmark(tmp_path / "par", classes="all", workers=2, **tiny)
    assert list(summary) == list(MVTEC15) and list(CLASSES) == list(MVTEC15)
    assert all(len(info["defects"]) == 2 for info in summary.values())  # 2 defects over >= 2 types
    assert all(len(CLASSES[name].defects) >= 2 for name in MVTEC15)
    assert sorted(p.name for p in (tmp_path / "par").iterdir()) == sorted(MVTEC15)
    some = ["screw", "pill", "leather"]
    generate_benchmark(tmp_path / "one", classes=some, workers=1, **tiny)
    for name in some:
        assert tree_hashes(tmp_path / "par" / name) == tree_hashes(tmp_path / "one" / name)
    for name in ("grid", "screw", "zipper"):  # single-channel as in real MVTec
        assert Image.open(tmp_path / "par" / name / "train/good/000.png").mode == "L"


def test_classes_may_be_a_comma_separated_string(tmp_path):
    summary = generate_benchmark(tmp_path, classes="transistor, grid,transistor", **SMALL)
    assert list(summary) == ["transistor", "grid"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid", "transistor"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"classes": ["leather", "carpets"]}, "'carpets'; known classes: bottle, cable, capsule, carpet, grid"),
        ({"classes": []}, "choose from: bottle, cable"),
        ({"size": 16}, "size"),
        ({"size": True}, "size"),
        ({"size": 64.0}, "size"),
        ({"n_train": 0}, "n_train"),
        ({"n_test_good": -1}, "n_test_good"),
        ({"n_test_defect": 0}, "n_test_defect"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments_raise_moleflow_error(tmp_path, kwargs, fragment):
    args = {**SMALL, **kwargs}
    with pytest.raises(MoleflowError, match=fragment.replace("(", r"\(")):
        generate_benchmark(tmp_path, **args)
    assert not any(tmp_path.iterdir())  # validation happens before anything is written


def test_existing_folders_are_reused_replaced_or_refused(tmp_path):
    generate_benchmark(tmp_path, classes=["grid"], **{**SMALL, "n_train": 5})
    first = tree_hashes(tmp_path)
    generate_benchmark(tmp_path, classes=["grid"], **{**SMALL, "n_train": 5})
    assert tree_hashes(tmp_path) == first
    generate_benchmark(tmp_path, classes=["grid"], **SMALL)  # fewer train images: stale ones must go
    assert sorted(p.name for p in (tmp_path / "grid" / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]

    foreign = tmp_path / "leather"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(MoleflowError, match="not written by `moleflow synth`"):
        generate_benchmark(tmp_path, classes=["leather"], **SMALL)
    assert (foreign / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_their_mvtec_defect_names(name):
    assert set(CLASSES[name].defects) == DEFECT_NAMES[name] and len(CLASSES[name].defects) >= 2
    assert CLASSES[name].grayscale == (name in GRAYSCALE)


@pytest.mark.parametrize("name", NAMES)
def test_stored_png_modes_and_sizes(bench_all, name):
    out, _ = bench_all
    for path in sorted((out / name).rglob("*.png")):
        image = Image.open(path)
        assert image.size == (SIZE, SIZE), path
        if "ground_truth" in path.parts:
            assert image.mode == "L" and set(np.unique(np.asarray(image))) == {0, 255}, path  # binary, never empty
        else:
            assert image.mode == ("L" if name in GRAYSCALE else "RGB"), path


@pytest.mark.parametrize("name", NAMES)
def test_masks_are_exactly_the_changed_pixels(name):
    for defect in CLASSES[name].defects:
        for index in range(4):
            sample = render_defect(name, defect, SIZE, seed=5, index=index)
            changed = np.abs(sample.image.astype(int) - sample.normal.astype(int)).max(-1) > CHANGE_THRESHOLD
            assert changed.any(), (defect, index)
            assert not (changed & ~sample.mask).any(), (defect, index)  # every visible change is masked
            near = ndimage.binary_dilation(changed, iterations=2)
            assert not (sample.mask & ~near).any(), (defect, index)  # and the mask is at most 2 px wider
            assert sample.mask.mean() < MAX_MASK_AREA_OF.get((name, defect), MAX_MASK_AREA), (defect, index)


@pytest.mark.parametrize("name", NAMES)
def test_renders_at_odd_and_tiny_sizes(name):
    spec = CLASSES[name]
    for size in (32, 97, 300):
        scene = spec.render(np.random.default_rng(size), size)
        assert scene.image.shape == (size, size, 3) and scene.image.dtype == np.float32
        assert 0.0 <= scene.image.min() and scene.image.max() <= 1.0
        if name in GRAYSCALE:  # three equal channels, so the L-mode PNG loses nothing
            assert np.array_equal(scene.image[..., 0], scene.image[..., 1]), size
            assert np.array_equal(scene.image[..., 0], scene.image[..., 2]), size
        for defect, fn in spec.defects.items():
            image = np.asarray(fn(scene, np.random.default_rng(1), 0.12, 1.0))
            assert image.shape == (size, size, 3) and 0.0 <= image.min() and image.max() <= 1.0, (size, defect)
            assert np.abs(image - scene.image).max() > 3 / 255, (size, defect)  # strongest setting: always visible


@pytest.mark.parametrize("name", NAMES)
def test_train_images_vary(bench_all, name):
    out, _ = bench_all
    train = np.stack([load(p) for p in sorted((out / name / "train/good").glob("*.png"))])
    # Every pair differs clearly (not just by sensor noise), every image differs from the mean image,
    # and the mean colour itself varies a little (pose, lighting and texture change every image).
    flat = train.reshape(len(train), -1)
    distances = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert distances[~np.eye(len(train), dtype=bool)].min() > MIN_TRAIN_DISTANCE_OF.get(name, MIN_TRAIN_DISTANCE)
    spread = np.abs(train - train.mean(0)).mean(axis=(1, 2, 3))
    assert (spread > 0.005).all(), spread
    assert train.mean((1, 2)).std(0).max() > 0.003


def patch_features(image: np.ndarray, k: int = 3) -> np.ndarray:
    padded = np.pad(image, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    return sliding_window_view(padded, (k, k), axis=(0, 1)).reshape(image.shape[0], image.shape[1], -1)


def nearest_distance(bank: np.ndarray, rng: np.random.Generator, n: int = 6000):
    """queries (m, 27) -> (m,) distance of each to its nearest neighbour among n patches drawn from bank."""
    bank = bank[rng.choice(len(bank), n, replace=False)].astype(np.float32)
    bank_sq = (bank**2).sum(1)

    def nn_distance(queries: np.ndarray) -> np.ndarray:
        queries = queries.astype(np.float32)
        return np.sqrt(np.maximum((queries**2).sum(1)[:, None] + bank_sq[None] - 2 * queries @ bank.T, 0).min(1))

    return nn_distance


@pytest.mark.parametrize("name", NAMES)
def test_masked_pixels_look_unlike_any_normal_patch(bench_all, name):
    """Nearest-neighbour distance of 3x3 patches to train patches is larger inside the mask than outside.

    Works for textures and objects alike; a misplaced or random mask would win only about half the time.
    """
    out, summary = bench_all
    rng = np.random.default_rng(0)
    train = sorted((out / name / "train/good").glob("*.png"))
    nn_distance = nearest_distance(np.concatenate([patch_features(load(p)).reshape(-1, 27) for p in train]), rng)
    wins = {}
    for defect, n in summary[name]["defects"].items():
        for i in range(n):
            patches = patch_features(load(out / name / "test" / defect / f"{i:03d}.png"))
            mask = np.asarray(Image.open(out / name / "ground_truth" / defect / f"{i:03d}_mask.png")) > 0
            outside = patches[~mask][rng.choice((~mask).sum(), 400, replace=False)]
            wins.setdefault(defect, []).append(nn_distance(patches[mask]).mean() > nn_distance(outside).mean())
    overall = np.mean([win for found in wins.values() for win in found])
    assert overall >= STANDS_OUT, f"{name}: defect region stands out in only {overall:.0%} of images ({wins})"
    assert all(np.mean(found) >= 0.5 for found in wins.values()), wins  # no defect type is invisible


def test_trivial_detector_is_above_chance_but_not_perfect(bench):
    """Per-pixel z-score against train mean/std, max over the image, as the image score.

    Leather and transistor must be clearly above chance; the per-pixel model cannot handle the grid's
    random phase, and no class may be trivially solved (AUROC 1.0). Across seeds 0-5 this detector gave
    leather 0.61-0.76, transistor 0.72-0.84, grid 0.44-0.65; the thresholds leave room for that spread.
    """
    out, summary = bench
    aurocs = {}
    for name in summary:
        train = np.stack([load(p) for p in sorted((out / name / "train/good").glob("*.png"))])
        mean, std = train.mean(0), train.std(0) + 0.01
        scores, labels = [], []
        for folder in sorted((out / name / "test").iterdir()):
            for path in sorted(folder.glob("*.png")):
                scores.append(float((np.abs(load(path) - mean) / std).mean(-1).max()))
                labels.append(folder.name != "good")
        aurocs[name] = roc_auc_score(labels, scores)
    assert aurocs["leather"] > 0.6 and aurocs["transistor"] > 0.6, aurocs
    assert min(aurocs.values()) < 1.0 and max(aurocs.values()) < 0.99, aurocs
    assert 0.55 < np.mean(list(aurocs.values())) < 0.9, aurocs
