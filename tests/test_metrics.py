"""Metrics against sklearn, hand-computed cases and an independent slow AUPRO reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from moleflow.errors import MoleflowError
from moleflow.evaluation import metrics as M
from moleflow.evaluation.metrics import MetricUndefinedWarning


def random_pixels(seed: int, n: int = 4, h: int = 12, w: int = 12, decimals: int | None = None):
    """Blob masks (about 20 % anomalous) and maps that are weakly informative; rounding makes ties."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((n, h, w)), sigma=(0, 1.5, 1.5))
    masks = smooth > np.quantile(smooth, 0.8)
    maps = rng.random((n, h, w)) + masks * rng.uniform(-0.3, 0.8)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return masks, maps


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Slow textbook AUPRO: loop over every distinct score as a threshold, label each image alone."""
    regions = []
    for mask, score in zip(masks, maps):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [score[labels == r] for r in range(1, n + 1)]
    normal = maps[masks == 0]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(np.mean(normal >= t))
        pros.append(np.mean([np.mean(region >= t) for region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    inside = fprs <= fpr_limit
    x, y = list(fprs[inside]), list(pros[inside])
    if x[-1] < fpr_limit:
        i = int(np.argmax(fprs > fpr_limit))
        y.append(pros[i - 1] + (pros[i] - pros[i - 1]) * (fpr_limit - fprs[i - 1]) / (fprs[i] - fprs[i - 1]))
        x.append(fpr_limit)
    area = sum((x[k + 1] - x[k]) * (y[k + 1] + y[k]) / 2 for k in range(len(x) - 1))
    return area / fpr_limit


def two_region_case(tied: bool = False):
    """One 4x10 image: region A = 2 px, region B = 8 px (2x4 block), 30 normal pixels.

    Scores: A = 0.9; left half of B = 0.7 (0.8 when `tied`); right half of B = 0.1;
    normals: 3 at 0.8, 6 at 0.5, 21 at 0.2.
    """
    mask = np.zeros((4, 10), dtype=bool)
    mask[0, 0:2] = True  # A
    mask[2:4, 6:10] = True  # B
    score = np.zeros((4, 10))
    score[0, 0:2] = 0.9
    score[2:4, 6:8] = 0.8 if tied else 0.7
    score[2:4, 8:10] = 0.1
    normal_values = np.array([0.8] * 3 + [0.5] * 6 + [0.2] * 21)
    score[~mask] = normal_values
    return mask[None], score[None]


# ------------------------------------------------------------------------------ against sklearn

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1])
def test_image_metrics_match_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.4
    scores = rng.normal(size=60) + labels * 0.7
    if decimals is not None:
        scores = np.round(scores, decimals)
    assert M.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert M.image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_pixel_metrics_match_sklearn(seed, decimals):
    masks, maps = random_pixels(seed, n=6, h=16, w=16, decimals=decimals)
    y, s = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_curves_are_the_ones_the_metrics_integrate(seed):
    """The report's curves: their areas are the reported numbers, and they are sklearn's ROC vertices."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    labels = rng.random(40) < 0.4
    scores = np.round(rng.normal(size=40) + labels, 1)  # ties
    fpr, tpr = M.roc_curve(labels, scores)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(M.image_auroc(labels, scores), abs=1e-12)
    sk_fpr, sk_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert set(zip(fpr.round(12), tpr.round(12))) <= set(zip(sk_fpr.round(12), sk_tpr.round(12)))  # its vertices
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0) and np.all(np.diff(fpr) >= 0)
    masks, maps = random_pixels(seed, n=4, h=16, w=16, decimals=2)
    x, y = M.pixel_roc_curve(masks, maps)
    assert np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) == pytest.approx(M.pixel_auroc(masks, maps), abs=1e-12)
    x, pro = M.pro_curve(masks, maps)
    assert x[-1] == 1.0 and pro[-1] == pytest.approx(1.0) and np.all(np.diff(pro) >= -1e-12)
    assert reference_aupro(masks, maps, 0.3) == pytest.approx(M.aupro(masks, maps), abs=1e-9)
    with pytest.warns(MetricUndefinedWarning):
        assert M.roc_curve([1, 1, 1], [0.1, 0.2, 0.3]) is None


def test_pixel_metrics_accept_torch_channel_dim_and_uint8_masks():
    masks, maps = random_pixels(7, decimals=2)
    expected = (M.pixel_auroc(masks, maps), M.pixel_ap(masks, maps), M.aupro(masks, maps))
    t_masks = torch.from_numpy(masks.astype(np.uint8))[:, None]
    t_maps = torch.from_numpy(maps).float()[:, None]  # float32 keeps these 2-decimal ties
    got = (M.pixel_auroc(t_masks, t_maps), M.pixel_ap(t_masks, t_maps), M.aupro(t_masks, t_maps))
    assert got == pytest.approx(expected, abs=1e-12)


def test_infinite_scores_rank_like_large_finite_ones():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([-np.inf, 0.3, np.inf, 0.5, 0.6, np.inf])
    finite = np.array([-1e9, 0.3, 1e9, 0.5, 0.6, 1e9])
    assert M.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, finite))
    assert M.image_ap(labels, scores) == pytest.approx(average_precision_score(labels, finite))
    assert M.f1_max(labels, scores)["f1"] == pytest.approx(M.f1_max(labels, finite)["f1"])
    assert M.f1_max(labels, scores)["threshold"] in scores
    masks = labels.reshape(1, 2, 3).astype(bool)
    assert M.pixel_auroc(masks, scores.reshape(1, 2, 3)) == pytest.approx(roc_auc_score(labels, finite))


# ------------------------------------------------------------------------------ AUPRO by hand

def test_aupro_perfect_map_is_one():
    # Every anomalous pixel (>= 1) outscores every normal one (< 0.5): PRO reaches 1 at FPR 0.
    mask, _ = two_region_case()
    rng = np.random.default_rng(0)
    perfect = mask + 0.5 * rng.random(mask.shape)
    assert M.aupro(mask, perfect) == pytest.approx(1.0, abs=1e-12)


def test_aupro_inverted_map_is_zero():
    # Every normal pixel outscores every anomalous one: FPR reaches 1 while PRO is still 0.
    mask, _ = two_region_case()
    rng = np.random.default_rng(1)
    inverted = (~mask) + 0.5 * rng.random(mask.shape)
    assert M.aupro(mask, inverted) == 0.0


def test_aupro_two_regions_of_different_size():
    # Curve vertices (FPR, PRO), FPR in units of 1/30 normal pixels, PRO = mean over 2 regions:
    #   t=0.9: A found (2/2), B 0/8 -> (0, 0.5)       t=0.8: 3 normals -> (0.1, 0.5)
    #   t=0.7: B 4/8                -> (0.1, 0.75)    t=0.5: 6 normals -> (0.3, 0.75)
    # Area on [0, 0.3] = 0.1*0.5 + 0.2*0.75 = 0.2  ->  AUPRO = 0.2/0.3 = 2/3.
    # (Pixel-weighted overlap would give (0.1*0.2 + 0.2*0.6)/0.3 = 0.467 instead.)
    mask, score = two_region_case()
    assert M.aupro(mask, score) == pytest.approx(2 / 3, abs=1e-12)
    # Area on [0, 0.2] = 0.1*0.5 + 0.1*0.75 = 0.125  ->  0.125/0.2 = 0.625.
    assert M.aupro(mask, score, fpr_limit=0.2) == pytest.approx(0.625, abs=1e-12)


def test_aupro_tied_scores_form_one_diagonal_step():
    # B's left half ties with 3 normals at 0.8, so the curve goes straight from (0, 0.5) to (0.1, 0.75):
    # area on [0, 0.3] = 0.1*(0.5+0.75)/2 + 0.2*0.75 = 0.2125  ->  0.2125/0.3 = 0.708333...
    mask, score = two_region_case(tied=True)
    assert M.aupro(mask, score) == pytest.approx(0.2125 / 0.3, abs=1e-12)
    # At FPR 0.05 (inside the tie step) PRO is interpolated to 0.625:
    # area = 0.05*(0.5+0.625)/2 = 0.028125  ->  0.028125/0.05 = 0.5625.
    assert M.aupro(mask, score, fpr_limit=0.05) == pytest.approx(0.5625, abs=1e-12)


def test_aupro_regions_are_eight_connected():
    # Diagonal chain (0,0),(1,1),(2,2) is ONE 8-connected region of 3 px; (4,4) is a second region.
    # Only (0,0) outscores the normals (score 2 > 1 > 0), so PRO stays 1/3 * 1/2 = 1/6 for all
    # FPR in [0, 1) and AUPRO = 1/6. (4-connectivity would give 4 regions and 1/4.)
    mask = np.zeros((1, 5, 5), dtype=bool)
    for r, c in [(0, 0), (1, 1), (2, 2), (4, 4)]:
        mask[0, r, c] = True
    score = np.where(mask, 0.0, 1.0)
    score[0, 0, 0] = 2.0
    assert M.aupro(mask, score) == pytest.approx(1 / 6, abs=1e-12)


def test_aupro_regions_do_not_join_across_images():
    # Image 0: 1-px region at (0,0), found. Image 1: 3-px region covering (0,0), not found.
    # Two regions -> PRO = (1 + 0)/2 = 0.5. Joined through the stack they would be one 4-px region (1/4).
    mask = np.zeros((2, 3, 3), dtype=bool)
    mask[0, 0, 0] = True
    mask[1, 0, 0] = mask[1, 0, 1] = mask[1, 1, 0] = True
    score = np.where(mask, 0.0, 1.0)
    score[0, 0, 0] = 2.0
    assert M.aupro(mask, score) == pytest.approx(0.5, abs=1e-12)


def test_aupro_stays_in_unit_interval_on_random_inputs():
    values = []
    for seed in range(50):
        masks, maps = random_pixels(seed, n=3, h=16, w=16, decimals=seed % 3 + 1)
        if seed % 5 == 0:
            maps = -maps  # anti-correlated maps probe the low end
        value = M.aupro(masks, maps)
        assert 0.0 <= value <= 1.0
        values.append(value)
    assert np.ptp(values) > 0.3  # the cases really span a range, so the bound is not vacuous


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_slow_reference(seed, fpr_limit):
    masks, maps = random_pixels(100 + seed, n=3, h=10, w=10, decimals=None if seed % 3 == 0 else 1)
    assert M.aupro(masks, maps, fpr_limit) == pytest.approx(reference_aupro(masks, maps, fpr_limit),
                                                            abs=1e-10)


# ------------------------------------------------------------------------------ F1, IoU, routing

@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(80) < 0.3
    scores = np.round(rng.normal(size=80) + labels, 1)
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        precision, recall = tp / predicted.sum(), tp / labels.sum()
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    result = M.f1_max(labels, scores)
    assert result["f1"] == pytest.approx(best, abs=1e-12)
    predicted = scores >= result["threshold"]  # the reported threshold reproduces the reported numbers
    tp = np.sum(predicted & labels)
    assert result["precision"] == pytest.approx(tp / predicted.sum())
    assert result["recall"] == pytest.approx(tp / labels.sum())


def test_pixel_iou_by_hand():
    mask = np.array([[[1, 1, 0], [0, 0, 0]]])
    score = np.array([[[0.9, 0.2, 0.8], [0.1, 0.1, 0.1]]])
    # t=0.5: predicted {(0,0),(0,2)}, gt {(0,0),(0,1)} -> 1 / 3
    assert M.pixel_iou(mask, score, 0.5) == pytest.approx(1 / 3)
    # t=0.2 (inclusive): predicted {(0,0),(0,1),(0,2)} -> 2 / 3
    assert M.pixel_iou(mask, score, 0.2) == pytest.approx(2 / 3)
    assert M.pixel_iou(mask, score, 0.95) == 0.0


def test_routing_accuracy_and_confusion_matrix():
    true = [0, 0, 1, 1, 2, 2]
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    assert M.routing_accuracy(true, pred) == pytest.approx(4 / 6)
    expected = np.array([[1, 1, 0],
                         [0, 2, 0],
                         [1, 0, 1]])
    np.testing.assert_array_equal(M.confusion_matrix(true, pred, num_tasks=3), expected)
    np.testing.assert_array_equal(M.confusion_matrix(true, pred, num_tasks=4)[3], [0, 0, 0, 0])
    with pytest.raises(MoleflowError, match="task id 2"):
        M.confusion_matrix(true, pred, num_tasks=2)


# ------------------------------------------------------------------------------ undefined / malformed

_MASK = np.zeros((1, 4, 4), dtype=bool)
_MASK[0, 1:3, 1:3] = True
_MAP = np.arange(16, dtype=float).reshape(1, 4, 4)
_EMPTY = np.zeros_like(_MASK)
_NAN_MAP = _MAP.copy()
_NAN_MAP[0, 0, 0] = np.nan
_LABELS = np.array([0, 1, 0, 1])

UNDEFINED = [
    ("image_auroc", "no anomalous images", lambda: M.image_auroc([0, 0, 0], [0.1, 0.2, 0.3])),
    ("image_auroc", "all scores are equal", lambda: M.image_auroc(_LABELS, [0.5] * 4)),
    ("image_ap", "no normal images", lambda: M.image_ap([1, 1, 1], [0.1, 0.2, 0.3])),
    ("image_ap", "NaN", lambda: M.image_ap(_LABELS, [0.1, np.nan, 0.3, 0.4])),
    ("image_auroc", "no images", lambda: M.image_auroc([], [])),
    ("f1_max", "all scores are equal", lambda: M.f1_max(_LABELS, [2.0] * 4)["f1"]),
    ("pixel_auroc", "no anomalous pixels", lambda: M.pixel_auroc(_EMPTY, _MAP)),
    ("pixel_ap", "no normal pixels", lambda: M.pixel_ap(~_EMPTY, _MAP)),
    ("pixel_ap", "NaN", lambda: M.pixel_ap(_MASK, _NAN_MAP)),
    ("aupro", "no anomalous pixels", lambda: M.aupro(_EMPTY, _MAP)),
    ("aupro", "no normal pixels", lambda: M.aupro(~_EMPTY, _MAP)),
    ("aupro", "all scores are equal", lambda: M.aupro(_MASK, np.ones_like(_MAP))),
    ("aupro", "NaN", lambda: M.aupro(_MASK, _NAN_MAP)),
    ("pixel_iou", "no anomalous pixels", lambda: M.pixel_iou(_EMPTY, _MAP, 3.0)),
    ("pixel_iou", "NaN", lambda: M.pixel_iou(_MASK, _NAN_MAP, 3.0)),
    ("routing_accuracy", "no images", lambda: M.routing_accuracy([], [])),
]


@pytest.mark.parametrize("metric, reason, call", UNDEFINED, ids=[f"{m}-{r}" for m, r, _ in UNDEFINED])
def test_undefined_cases_return_nan_and_warn(metric, reason, call):
    with pytest.warns(MetricUndefinedWarning, match=f"^{metric}: .*{reason}"):
        value = call()
    assert math.isnan(value)


def test_f1_max_undefined_returns_all_nan():
    with pytest.warns(MetricUndefinedWarning):
        result = M.f1_max([0, 0], [0.1, 0.2])
    assert set(result) == {"f1", "precision", "recall", "threshold"}
    assert all(math.isnan(v) for v in result.values())


@pytest.mark.parametrize("call, match", [
    (lambda: M.pixel_auroc(_MASK * 255, _MAP), "masks must be binary"),
    (lambda: M.image_auroc([0, 2, 1], [0.1, 0.2, 0.3]), "labels must be binary"),
    (lambda: M.pixel_ap(_MASK, _MAP[:, :3]), "differ"),
    (lambda: M.image_ap([0, 1], [0.1, 0.2, 0.3]), "2 labels but 3 scores"),
    (lambda: M.aupro(_MASK, _MAP, fpr_limit=0.0), "fpr_limit"),
    (lambda: M.routing_accuracy([0, 1], [0.5, 1.0]), "integer task ids"),
])
def test_malformed_inputs_raise_moleflow_error(call, match):
    with pytest.raises(MoleflowError, match=match):
        call()
