from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from moleflow.errors import MoleflowError
from moleflow.evaluation.maps import anomaly_maps, image_scores
from moleflow.evaluation.visualize import class_scales, encode_png, heat_overlay, overlay_png, overlay_rgb

# ----------------------------------------------------------------------------------------- anomaly maps


def test_upsample_shape_batched_and_non_square():
    patch = torch.rand(3, 4, 5)
    maps = anomaly_maps(patch, (32, 40), sigma=2.0)
    assert maps.shape == (3, 32, 40)
    assert maps.dtype == torch.float32


def test_sigma_zero_is_plain_bilinear_with_half_pixel_centres():
    # align_corners=False: output pixel x samples input at (x + 0.5) / 2 - 0.5, clamped at the edges
    maps = anomaly_maps(torch.tensor([[[0.0, 1.0]]]), (1, 4), sigma=0)
    assert torch.allclose(maps, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))
    patch = torch.rand(2, 7, 7)
    expected = F.interpolate(patch[:, None], size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(anomaly_maps(patch, (28, 28), sigma=0), expected)


@pytest.mark.parametrize("size", [(64, 48), (6, 9)])  # (6, 9): kernel radius 16 exceeds the map
def test_blur_keeps_a_constant_map_constant(size):
    maps = anomaly_maps(torch.full((2, 3, 3), 2.5), size, sigma=4.0)
    assert maps.shape == (2, *size)
    assert torch.allclose(maps, torch.full_like(maps, 2.5), atol=1e-5)
    assert math.isclose(maps.mean().item(), 2.5, rel_tol=1e-6)


def test_blur_matches_torchvision_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur

    patch = torch.rand(3, 8, 6, generator=torch.Generator().manual_seed(0))
    for sigma in (1.0, 2.5):
        ksize = 2 * math.ceil(4 * sigma) + 1
        up = F.interpolate(patch[:, None], size=(48, 40), mode="bilinear", align_corners=False)
        expected = gaussian_blur(up, [ksize, ksize], [sigma, sigma])[:, 0]
        assert torch.allclose(anomaly_maps(patch, (48, 40), sigma=sigma), expected, atol=1e-5)


def test_blur_spreads_a_peak_and_is_vectorised_per_item():
    patch = torch.zeros(2, 8, 8)
    patch[0, 4, 4] = 1.0
    patch[1, 1, 6] = 3.0
    sharp = anomaly_maps(patch, (32, 32), sigma=0)
    blurred = anomaly_maps(patch, (32, 32), sigma=2.0)
    assert blurred[0].max() < sharp[0].max()
    assert (blurred[0] > 0).sum() > (sharp[0] > 0).sum()
    # far from the borders the blur keeps the total mass
    assert math.isclose(blurred[0].sum().item(), sharp[0].sum().item(), rel_tol=1e-4)
    for i in range(2):
        assert torch.allclose(blurred[i], anomaly_maps(patch[i:i + 1], (32, 32), sigma=2.0)[0], atol=1e-6)


def test_negative_sigma_is_a_user_error():
    with pytest.raises(MoleflowError, match="sigma"):
        anomaly_maps(torch.zeros(1, 2, 2), (4, 4), sigma=-1)


# ----------------------------------------------------------------------------------------- image scores

def test_image_scores_max_and_topk():
    patch = torch.tensor([[[1.0, 5.0], [3.0, 2.0]],
                          [[0.0, -1.0], [4.0, 4.0]]])
    assert torch.equal(image_scores(patch, "max"), torch.tensor([5.0, 4.0]))
    assert torch.equal(image_scores(patch, "topk", topk=2), torch.tensor([4.0, 4.0]))
    assert torch.equal(image_scores(patch, "topk", topk=3), torch.tensor([10.0 / 3, 8.0 / 3]))
    # k larger than the number of patches: mean of all of them
    assert torch.equal(image_scores(patch, "topk", topk=100), torch.tensor([11.0 / 4, 7.0 / 4]))
    assert torch.equal(image_scores(patch, "topk", topk=1), image_scores(patch, "max"))


def test_map_max_is_the_anomaly_map_maximum_and_favours_extended_defects():
    spike = torch.zeros(1, 8, 8)
    spike[0, 4, 4] = 1.0
    blob = torch.zeros(1, 8, 8)
    blob[0, 3:6, 3:6] = 1.0
    both = torch.cat([spike, blob])
    scores = image_scores(both, "map_max", out_size=(64, 64), sigma=4.0)
    torch.testing.assert_close(scores, anomaly_maps(both, (64, 64), 4.0).amax(dim=(1, 2)))
    assert image_scores(both, "max").tolist() == [1.0, 1.0]  # patch max cannot tell them apart
    assert scores[1] > 2 * scores[0]  # the blurred map can: one noisy patch counts less than a 3x3 defect
    with pytest.raises(MoleflowError, match="out_size"):
        image_scores(both, "map_max")


def test_image_scores_rejects_unknown_method_and_bad_k():
    with pytest.raises(MoleflowError, match="unknown score aggregation 'mean'.*max, topk"):
        image_scores(torch.zeros(1, 2, 2), "mean")
    with pytest.raises(MoleflowError, match="topk"):
        image_scores(torch.zeros(1, 2, 2), "topk", topk=0)


# ----------------------------------------------------------------------------------------- overlays

def _decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    assert img.mode == "RGB"
    return np.asarray(img)


def test_overlay_png_has_image_size_and_shows_where_the_map_is_high():
    h, w = 48, 64
    image = np.full((h, w, 3), 128, np.uint8)
    amap = np.zeros((h, w), np.float32)
    amap[24:40, 40:60] = 1.0
    flat = _decode(overlay_png(image, np.zeros_like(amap), None, 0.1, vmin=0.0, vmax=1.0))
    hot = _decode(overlay_png(image, amap, None, 0.9, vmin=0.0, vmax=1.0))
    assert hot.shape == (h, w, 3)
    below_label = slice(20, None)  # the score text sits in the top rows
    diff = np.abs(hot.astype(int) - flat.astype(int)).sum(axis=2)[below_label]
    high = (amap > 0)[below_label]
    assert diff[high].min() > 100  # blue -> red
    assert diff[~high].max() == 0
    assert (hot[30, 50, 0] > hot[30, 50, 2]) and (hot[30, 10, 2] > hot[30, 10, 0])  # red where high, blue where low


def test_overlay_normalises_by_vmin_vmax():
    image = np.zeros((24, 24, 3), np.uint8)
    amap = np.full((24, 24), 5.0)
    low = overlay_rgb(image, amap, None, 0.0, vmin=5.0, vmax=10.0)  # 5 is the bottom of the range: blue
    top = overlay_rgb(image, amap, None, 0.0, vmin=0.0, vmax=5.0)  # 5 is the top: red
    assert low[20, 20, 2] > low[20, 20, 0]
    assert top[20, 20, 0] > top[20, 20, 2]


def test_overlay_draws_mask_outline_and_score_text():
    image = np.full((40, 120, 3), 60, np.uint8)
    amap = np.zeros((40, 120))
    mask = np.zeros((40, 120), bool)
    mask[20:30, 10:30] = True
    out = _decode(overlay_png(image, amap, mask, 0.5, vmin=0.0, vmax=1.0, title="crack_000"))
    green = (out == [0, 255, 0]).all(axis=2)
    assert green[20, 15] and green[29, 15] and green[25, 10] and green[25, 29]  # contour
    assert not green[25, 20]  # interior keeps the map colour
    assert green.sum() == 2 * 10 + 2 * 20 - 4  # exactly the 1-px ring
    other_score = _decode(overlay_png(image, amap, mask, 0.75, vmin=0.0, vmax=1.0, title="crack_000"))
    assert not np.array_equal(out[:14], other_score[:14])  # the score is written in the top rows
    assert np.array_equal(out[16:], other_score[16:])
    no_mask = _decode(overlay_png(image, amap, None, 0.5, vmin=0.0, vmax=1.0, title="crack_000"))
    assert not (no_mask == [0, 255, 0]).all(axis=2).any()


def test_one_scale_per_class_centred_on_the_threshold_and_the_map_drawn_at_the_images_size():
    maps = np.linspace(0.0, 10.0, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    scale, extras = class_scales(maps, {"uncertainty": maps * 2}, threshold=4.0)
    low = float(np.percentile(maps, 1))
    assert scale == (low, 8.0 - low, "jet")  # T in the middle of the colour map
    assert class_scales(maps, {}, math.nan)[0] == (low, float(np.percentile(maps, 99.5)), "jet")
    assert extras["uncertainty"].cmap == "viridis"
    image = np.zeros((32, 48, 3), np.uint8)
    out = heat_overlay(image, np.array([[0.0, 0.0], [8.0, 8.0]]), None, *scale)  # 2x2 map: upsampled bilinearly
    assert out.shape == (32, 48, 3) and out[-1, -1, 0] > out[-1, -1, 2] and out[0, 0, 2] > out[0, 0, 0]


def test_png_encoder_round_trips_odd_sizes():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 13, 3), dtype=np.uint8)
    assert np.array_equal(_decode(encode_png(rgb)), rgb)


def test_overlay_is_fast_enough_for_every_test_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    amap = rng.random((256, 256)).astype(np.float32)
    mask = amap > 0.9
    overlay_png(image, amap, mask, 0.5, vmin=0.0, vmax=1.0, title="x")
    start = time.perf_counter()
    for _ in range(10):
        overlay_png(image, amap, mask, 0.5, vmin=0.0, vmax=1.0, title="x")
    per_image = (time.perf_counter() - start) / 10
    assert per_image < 0.05  # ~3 ms measured; generous bound for loaded CI machines, catches pyplot-style slowness
