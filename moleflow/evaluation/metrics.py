"""Anomaly-detection metrics, defined once for the whole harness.

Convention: a higher score means more anomalous, and an image or pixel counts as predicted anomalous
at threshold t when its score >= t. Tied scores always move together (one step of every curve).

* Image AUROC / AP: sklearn ``roc_auc_score`` / ``average_precision_score`` on one score per image.
* Pixel AUROC / AP: the same two numbers over ALL pixels of ALL test images of a class, flattened
  into one population. Computed by an exact sort-based implementation (equal to sklearn to ~1e-12,
  tested) because sklearn needs 6-8 s for 16M pixels (330 images of 224x224).
* AUPRO: regions are the 8-connected components of each image's ground-truth mask. At threshold t,
  PRO(t) = mean over all regions (of all images) of the fraction of the region's pixels with
  score >= t, and FPR(t) = fraction of normal (mask == 0) pixels with score >= t. The PRO-vs-FPR
  curve starts at (0, 0), has one vertex per distinct score, is linearly interpolated at
  FPR = fpr_limit (default 0.3), integrated from 0 to fpr_limit with the trapezoid rule and divided
  by fpr_limit, so it lies in [0, 1] (1 = every region fully found before any false positive).
* F1-max: F1, precision, recall and threshold at the threshold maximising F1 on the sklearn
  ``precision_recall_curve`` of the image scores.
* Pixel IoU at threshold t: |{map >= t} AND gt| / |{map >= t} OR gt| over all pixels.
* Curves for plots: ``roc_curve`` (image scores), ``pixel_roc_curve`` and ``pro_curve`` return the
  vertices whose areas are the numbers above (the same code computes both).
* Routing accuracy: fraction of images whose predicted task equals the true task. Confusion matrix:
  rows = true task, columns = predicted task, integer counts.

Undefined cases (one class only, no anomalous or no normal pixels, constant scores, NaN scores,
nothing to count) return NaN and emit ``MetricUndefinedWarning`` naming the metric and the reason:
never a crash and never an uninformative 0.5. Malformed inputs (non-binary labels or masks,
mismatched shapes, task ids out of range) raise ``MoleflowError``.

Inputs may be numpy arrays, torch tensors or sequences; scores are processed as float64.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from moleflow.errors import MoleflowError

# Connect the 8 neighbours inside an image but never across the image (first) axis of the stack.
_EIGHT_CONNECTED_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_IMAGE[1] = True


class MetricUndefinedWarning(RuntimeWarning):
    """A metric is undefined for the given inputs; NaN was returned instead."""


def _undefined(metric: str, why: str) -> float:
    warnings.warn(f"{metric}: {why}; returning NaN", MetricUndefinedWarning, stacklevel=3)
    return float("nan")


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _scores(x: Any) -> np.ndarray:
    return _to_numpy(x).astype(np.float64, copy=False)


def _binary(x: Any, name: str, metric: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.dtype == bool:
        return arr
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise MoleflowError(
            f"{metric}: {name} must be binary (0/1 or bool) but contains {arr[bad].flat[0]!r}; "
            f"threshold it first (e.g. {name} > 0.5)")
    return arr.astype(bool)


def _image_inputs(labels: Any, scores: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(labels, "labels", metric).ravel()
    s = _scores(scores).ravel()
    if y.shape != s.shape:
        raise MoleflowError(f"{metric}: {y.size} labels but {s.size} scores; pass one score per image")
    return y, s


def _as_image_stack(a: np.ndarray, name: str, metric: str) -> np.ndarray:
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise MoleflowError(f"{metric}: {name} has shape {a.shape}; expected (N,H,W) or (N,1,H,W)")
    return a


def _pixel_inputs(masks: Any, maps: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    m = _as_image_stack(_binary(masks, "masks", metric), "masks", metric)
    s = _as_image_stack(_scores(maps), "maps", metric)
    if m.shape != s.shape:
        raise MoleflowError(f"{metric}: masks {m.shape} and maps {s.shape} differ; resize maps to the masks")
    return m, s


def _degenerate(y: np.ndarray, s: np.ndarray, unit: str) -> str | None:
    """Why a ranking metric is undefined for these labels/scores, or None if it is defined."""
    if y.size == 0:
        return f"no {unit}"
    if np.isnan(s).any():
        return "scores contain NaN"
    if y.all():
        return f"no normal {unit} (every label is anomalous)"
    if not y.any():
        return f"no anomalous {unit}"
    if s.min() == s.max():
        return "all scores are equal, so the ranking is uninformative"
    return None


def _order_preserving_finite(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense ranks of s (finite, same order and ties) plus the distinct values, for sklearn,
    which rejects +-inf although every metric here depends only on the order of the scores."""
    values, ranks = np.unique(s, return_inverse=True)
    return ranks.astype(np.float64), values


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _threshold_table(pos: np.ndarray, neg: np.ndarray, pos_weights: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every distinct positive score u (descending): the summed weight of positives with
    score >= u, the number of negatives with score > u and with score >= u.

    Only these thresholds move the positive axis, so they give every vertex of the tie-aware curve.
    Sorting positives and negatives separately (no argsort over all pixels) takes 16M pixels in
    about 1.5-4 s instead of sklearn's 6-8 s.
    """
    if pos_weights is None:  # plain sort (faster than argsort); integer counts stay exact
        sorted_pos = np.sort(pos)[::-1]
        cum_all = np.arange(1, pos.size + 1, dtype=np.float64)
    else:
        order = np.argsort(pos)[::-1]
        sorted_pos = pos[order]
        cum_all = np.cumsum(pos_weights[order])
    is_last_of_tie = np.append(sorted_pos[1:] != sorted_pos[:-1], True)
    thresholds = sorted_pos[is_last_of_tie]
    cum = cum_all[is_last_of_tie]
    neg_sorted = np.sort(neg)
    n_neg_ge = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    n_neg_gt = neg.size - np.searchsorted(neg_sorted, thresholds, side="right")
    return cum, n_neg_gt, n_neg_ge


def _curve(cum: np.ndarray, n_neg_gt: np.ndarray, n_neg_ge: np.ndarray, n_neg: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (x = FPR, y = cumulative positive weight) of the curve from (0, 0) to (1, total).

    Per distinct positive score u: the negatives strictly above u first move the curve right
    (horizontal), then the tie group at u moves it diagonally from (gt, previous) to (ge, cum).
    """
    k = cum.size
    x = np.empty(2 * k + 2)
    y = np.empty(2 * k + 2)
    x[0], y[0] = 0.0, 0.0
    x[1:-1:2], y[1:-1:2] = n_neg_gt / n_neg, np.append(0.0, cum[:-1])
    x[2:-1:2], y[2:-1:2] = n_neg_ge / n_neg, cum
    x[-1], y[-1] = 1.0, cum[-1]
    return x, y


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the piecewise-linear curve (x non-decreasing, x[0] = 0) on [0, limit]."""
    k = int(np.searchsorted(x, limit, side="left"))  # first vertex with x >= limit; k >= 1
    y_at = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
    return _trapezoid(np.append(x[:k], limit), np.append(y[:k], y_at))


# --------------------------------------------------------------------------------------- image level

def _image_metric(labels: Any, scores: Any, metric: str, score_fn: Any) -> float:
    """An sklearn metric of image scores; NaN (with a warning) when undefined, and infinite scores mapped
    to finite ones in the same order first."""
    y, s = _image_inputs(labels, scores, metric)
    if (why := _degenerate(y, s, "images")) is not None:
        return _undefined(metric, why)
    if not np.isfinite(s).all():
        s = _order_preserving_finite(s)[0]
    return float(score_fn(y, s))


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of image scores (labels 1 = anomalous)."""
    return _image_metric(labels, scores, "image_auroc", roc_auc_score)


def image_ap(labels: Any, scores: Any) -> float:
    """Average precision of image scores (labels 1 = anomalous)."""
    return _image_metric(labels, scores, "image_ap", average_precision_score)


def f1_max(labels: Any, scores: Any) -> dict[str, float]:
    """F1, precision, recall and threshold (predict anomalous when score >= threshold) at max F1."""
    y, s = _image_inputs(labels, scores, "f1_max")
    if (why := _degenerate(y, s, "images")) is not None:
        nan = _undefined("f1_max", why)
        return {"f1": nan, "precision": nan, "recall": nan, "threshold": nan}
    values = None
    if not np.isfinite(s).all():
        s, values = _order_preserving_finite(s)
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the final (1, 0) point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    threshold = thresholds[best] if values is None else values[int(thresholds[best])]
    return {"f1": float(f1[best]), "precision": float(precision[best]),
            "recall": float(recall[best]), "threshold": float(threshold)}


# --------------------------------------------------------------------------------------- pixel level

def _checked_pixels(masks: Any, maps: Any, metric: str
                   ) -> tuple[np.ndarray, np.ndarray] | float:
    """(masks as bool, maps as float64), or NaN (with a warning) when the metric is undefined."""
    m, s = _pixel_inputs(masks, maps, metric)
    if (why := _degenerate(m, s, "pixels")) is not None:
        return _undefined(metric, why)
    return m, s


def pixel_auroc(masks: Any, maps: Any) -> float:
    """ROC AUC over all pixels of all images (exact, ties counted as one step)."""
    checked = _checked_pixels(masks, maps, "pixel_auroc")
    if isinstance(checked, float):
        return checked
    x, y, n_pos = _roc_vertices(*checked)
    return _trapezoid(x, y) / n_pos


def _roc_vertices(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """ROC vertices (FPR, positives counted) of defined inputs, and the number of positives."""
    pos, neg = s[y], s[~y]
    cum, n_neg_gt, n_neg_ge = _threshold_table(pos, neg)
    x, counted = _curve(cum, n_neg_gt, n_neg_ge, neg.size)
    return x, counted, pos.size


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Tie-aware ROC curve (FPR, TPR) of image scores, from (0, 0) to (1, 1); its trapezoid area is
    image_auroc. None (with a warning) where the curve is undefined."""
    y, s = _image_inputs(labels, scores, "roc_curve")
    if (why := _degenerate(y, s, "images")) is not None:
        _undefined("roc_curve", why)
        return None
    if not np.isfinite(s).all():
        s = _order_preserving_finite(s)[0]
    x, counted, n_pos = _roc_vertices(y, s)
    return x, counted / n_pos


def pixel_roc_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The ROC curve (FPR, TPR) over all pixels whose area is pixel_auroc; None (with a warning) where undefined."""
    checked = _checked_pixels(masks, maps, "pixel_roc_curve")
    if isinstance(checked, float):
        return None
    x, counted, n_pos = _roc_vertices(*checked)
    return x, counted / n_pos


def pro_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-region-overlap curve (FPR, PRO) over the whole FPR range, whose area up to 0.3 (divided by 0.3)
    is aupro; None (with a warning) where undefined."""
    checked = _checked_pixels(masks, maps, "pro_curve")
    if isinstance(checked, float):
        return None
    m, s = checked
    pos, neg = s[m], s[~m]
    regions, n_regions = ndimage.label(m, structure=_EIGHT_CONNECTED_PER_IMAGE)
    region_sizes = np.bincount(regions.ravel())
    # Each region carries total weight 1/n_regions, shared equally by its pixels; boolean indexing
    # walks pixels in the same C order as `pos = maps[masks]`.
    weights = 1.0 / (n_regions * region_sizes[regions[m]])
    cum, n_neg_gt, n_neg_ge = _threshold_table(pos, neg, weights)
    x, y = _curve(cum, n_neg_gt, n_neg_ge, neg.size)
    return x, np.clip(y, 0.0, 1.0)  # float summation of the weights may end at 1 + 1e-12


def pixel_ap(masks: Any, maps: Any) -> float:
    """Average precision over all pixels of all images: sum over thresholds of dRecall * precision."""
    checked = _checked_pixels(masks, maps, "pixel_ap")
    if isinstance(checked, float):
        return checked
    m, s = checked
    pos, neg = s[m], s[~m]
    tps, _, fps = _threshold_table(pos, neg)
    precision = tps / (tps + fps)
    recall_steps = np.diff(tps, prepend=0.0) / pos.size
    return float(np.sum(recall_steps * precision))


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to FPR = fpr_limit, divided by fpr_limit."""
    if not 0.0 < fpr_limit <= 1.0:
        raise MoleflowError(f"aupro: fpr_limit={fpr_limit!r} must be in (0, 1]; 0.3 is the standard value")
    checked = _checked_pixels(masks, maps, "aupro")
    if isinstance(checked, float):
        return checked
    x, y = pro_curve(*checked)
    return _area_up_to(x, y, fpr_limit) / fpr_limit


def pixel_iou(masks: Any, maps: Any, threshold: float) -> float:
    """Intersection over union of {maps >= threshold} and the ground truth over all pixels."""
    if np.isnan(threshold):
        raise MoleflowError("pixel_iou: threshold is NaN; pass a finite score threshold (e.g. from f1_max)")
    m, s = _pixel_inputs(masks, maps, "pixel_iou")
    if m.size == 0:
        return _undefined("pixel_iou", "no pixels")
    if np.isnan(s).any():
        return _undefined("pixel_iou", "maps contain NaN")
    if not m.any():
        return _undefined("pixel_iou", "no anomalous pixels in the masks")
    predicted = s >= threshold
    return float(np.count_nonzero(predicted & m) / np.count_nonzero(predicted | m))


# --------------------------------------------------------------------------------------- routing

def _task_ids(x: Any, name: str, metric: str) -> np.ndarray:
    arr = _to_numpy(x).ravel()
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise MoleflowError(f"{metric}: {name} must be integer task ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    return arr.astype(np.int64, copy=False)


def _task_pair(true_tasks: Any, pred_tasks: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    true = _task_ids(true_tasks, "true_tasks", metric)
    pred = _task_ids(pred_tasks, "pred_tasks", metric)
    if true.shape != pred.shape:
        raise MoleflowError(f"{metric}: {true.size} true task ids but {pred.size} predictions")
    return true, pred


def routing_accuracy(true_tasks: Any, pred_tasks: Any) -> float:
    """Fraction of images routed to their own task."""
    true, pred = _task_pair(true_tasks, pred_tasks, "routing_accuracy")
    if true.size == 0:
        return _undefined("routing_accuracy", "no images")
    return float(np.mean(true == pred))


def confusion_matrix(true_tasks: Any, pred_tasks: Any, num_tasks: int) -> np.ndarray:
    """(num_tasks, num_tasks) int64 counts; rows = true task, columns = predicted task."""
    if num_tasks < 1:
        raise MoleflowError(f"confusion_matrix: num_tasks={num_tasks} must be >= 1")
    true, pred = _task_pair(true_tasks, pred_tasks, "confusion_matrix")
    for name, ids in (("true_tasks", true), ("pred_tasks", pred)):
        outside = ids[(ids < 0) | (ids >= num_tasks)]
        if outside.size:
            raise MoleflowError(f"confusion_matrix: {name} contains task id {int(outside[0])} outside "
                                f"0..{num_tasks - 1}; pass the total number of tasks as num_tasks")
    if num_tasks == 1:  # every image is task 0; sklearn warns about "a single label" even with labels= given
        return np.array([[true.size]], dtype=np.int64)
    return sk_confusion_matrix(true, pred, labels=np.arange(num_tasks)).astype(np.int64)


#: the test images' ground truth, for routing numbers per split: a defect moves the image's pooled feature, which
#: a prototype router reads, so anomalous images can be mis-routed where normal ones are not
ROUTING_SPLITS = (("normal", False), ("anomalous", True))
#: their per-class keys in metrics.json, in ROUTING_SPLITS' order
ROUTING_SPLIT_KEYS = tuple(f"routing_accuracy_{name}" for name, _ in ROUTING_SPLITS)


def _routing_split_inputs(true_tasks: Any, pred_tasks: Any, labels: Any, metric: str
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    true, pred = _task_pair(true_tasks, pred_tasks, metric)
    anomalous = _binary(labels, "labels", metric).reshape(-1)
    if anomalous.shape != true.shape:
        raise MoleflowError(f"{metric}: {anomalous.size} labels but {true.size} routed images")
    return true, pred, anomalous


def routing_accuracy_by_split(true_tasks: Any, pred_tasks: Any, labels: Any) -> dict[str, float]:
    """{"normal": accuracy, "anomalous": accuracy}: routing accuracy of the normal (label 0) and of the anomalous
    (label 1) images apart; NaN for a split without images (no warning: a class may have no anomalies)."""
    true, pred, anomalous = _routing_split_inputs(true_tasks, pred_tasks, labels, "routing_accuracy_by_split")
    return {name: float(np.mean(true[anomalous == flag] == pred[anomalous == flag]))
            if (anomalous == flag).any() else float("nan") for name, flag in ROUTING_SPLITS}


def routing_by_split(true_tasks: Any, pred_tasks: Any, labels: Any, num_tasks: int) -> dict[str, dict]:
    """Per split (normal, anomalous): {"images": count, "accuracy": routing accuracy, "confusion": counts with
    rows = true task, columns = routed task}."""
    true, pred, anomalous = _routing_split_inputs(true_tasks, pred_tasks, labels, "routing_by_split")
    accuracy = routing_accuracy_by_split(true, pred, anomalous)
    return {name: {"images": int((anomalous == flag).sum()), "accuracy": accuracy[name],
                   "confusion": confusion_matrix(true[anomalous == flag], pred[anomalous == flag], num_tasks).tolist()}
            for name, flag in ROUTING_SPLITS}


# ----- which registered metrics the evaluator computes per class (moleflow.metrics; a plugin metric too) -----
# `per_class = "image"`: called as fn(labels, image_scores); `"pixel"`: fn(masks, anomaly_maps). A float result
# is stored under the metric's registered name, a dict under `output_names` (only the keys named there; without
# it, every key as "<name>_<key>"). F1-max keeps its two historical keys (f1, f1_threshold), as before.
image_auroc.per_class = "image"  # type: ignore[attr-defined]
image_ap.per_class = "image"  # type: ignore[attr-defined]
f1_max.per_class = "image"  # type: ignore[attr-defined]
f1_max.output_names = {"f1": "f1", "threshold": "f1_threshold"}  # type: ignore[attr-defined]
pixel_auroc.per_class = "pixel"  # type: ignore[attr-defined]
pixel_ap.per_class = "pixel"  # type: ignore[attr-defined]
aupro.per_class = "pixel"  # type: ignore[attr-defined]
