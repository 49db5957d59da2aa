"""Checks of single synthetic classes' own geometry; the generic per-class checks are in test_synthetic.py."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from test_synthetic import SIZE, nearest_distance, patch_features

from moleflow.synth.benchmark import (
    CHANGE_THRESHOLD,
    CLASSES,
    render_defect,
    render_good,
)


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


def test_flipped_nut_is_masked_as_a_whole_part():
    for index in range(3):
        sample = render_defect("metal_nut", "flip", SIZE, seed=2, index=index)
        part = sample.normal.max(-1) > 60  # the metal; the background and the hole are near black
        assert part.mean() > 0.25
        assert (sample.mask & part).sum() >= 0.97 * part.sum(), index


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


def test_toothbrush_is_coloured():
    """Coloured plastic and bristles at any size (unlike the grey metal_nut, tile or transistor)."""
    for size in (32, 97, 300):
        image = CLASSES["toothbrush"].render(np.random.default_rng(size), size).image
        assert np.abs(image[..., 0] - image[..., 2]).max() > 0.1, size


@pytest.mark.parametrize("name", ["bottle", "cable", "hazelnut"])
def test_defect_region_is_less_normal_than_before_the_defect(name):
    """Stricter than test_masked_pixels_look_unlike_any_normal_patch (which compares with patches anywhere,
    flat background included): the masked patches of each defect are farther from normal patches than the
    same pixels were before it."""
    rng = np.random.default_rng(0)
    bank = np.concatenate([patch_features(render_good(name, SIZE, 0, i) / 255).reshape(-1, 27) for i in range(12)])
    nn_distance = nearest_distance(bank, rng)
    for defect in CLASSES[name].defects:
        wins = []
        for index in range(6):
            sample = render_defect(name, defect, SIZE, seed=9, index=index)
            after, before = (patch_features(image / 255)[sample.mask] for image in (sample.image, sample.normal))
            wins.append(nn_distance(after).mean() > nn_distance(before).mean())
        assert np.mean(wins) >= 0.8, f"{name}/{defect}: stands out in only {np.mean(wins):.0%} of images"


def test_lookalike_writes_two_lots_per_product_that_differ_by_their_cast_and_carry_large_defects(tmp_path):
    """`moleflow synth --classes lookalike`: the routing stress stream (synth/lookalike.py)."""
    import numpy as np
    from PIL import Image

    from moleflow.data.streams import LOOKALIKE, NAMED_STREAMS
    from moleflow.synth import lookalike
    from moleflow.synth.benchmark import CLASSES, generate_benchmark

    summary = generate_benchmark(tmp_path, classes=["lookalike"], size=64, n_train=6, n_test_good=2,
                                 n_test_defect=6, progress=False, workers=1)
    assert list(summary) == list(LOOKALIKE) == list(NAMED_STREAMS["lookalike"])
    assert not set(LOOKALIKE) & set(CLASSES)  # `--classes all` stays MVTec's 15

    def red_over_blue(name: str) -> float:
        images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
                  for p in sorted((tmp_path / name / "train" / "good").glob("*.png"))]
        return float(np.mean([im[..., 0].mean() / im[..., 2].mean() for im in images]))

    for product in ("pill", "leather"):
        gains = lookalike.LOTS[f"{product}_lot2"][1]
        ratio = red_over_blue(f"{product}_lot2") / red_over_blue(f"{product}_lot1")
        assert ratio == pytest.approx(gains[0] / gains[2], rel=0.03)  # the cast, within the images' own spread
    masks = [np.asarray(Image.open(p)) > 0 for p in (tmp_path / "pill_lot1" / "ground_truth").rglob("*.png")]
    assert np.mean([m.mean() for m in masks]) > 0.02  # large defects: on average over 2 % of the image
    marker = (tmp_path / "pill_lot2" / ".moleflow_synth.json").read_text()
    assert '"lot"' in marker and '"gains"' in marker  # a changed lot definition is regenerated, not reused
