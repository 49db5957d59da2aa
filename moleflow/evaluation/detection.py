"""Thresholded detection metrics and mask statistics (conventions and NaN policy as in metrics.py).

Counts run over every element of the inputs together, so the same functions serve image-level
(one decision per image) and pixel-level (one decision per pixel) evaluation. With tp, fp, fn the
true/false positives and false negatives of the binary decisions:
* precision = tp / (tp + fp)   undefined (NaN + warning) when nothing is predicted anomalous;
* recall    = tp / (tp + fn)   undefined when no target is anomalous;
* f1        = 2 tp / (2 tp + fp + fn)   (the harmonic mean of the two whenever both exist, 0 when
                                          exactly one of them is 0 or undefined), undefined when there
                                          are neither anomalous targets nor anomalous decisions;
* iou       = tp / (tp + fp + fn)       undefined in the same case;
* ap        = average precision of the scores (sklearn ``average_precision_score``); needs scores,
              so it is NaN + warning from decisions alone, and undefined (as image_ap) for a single
              class, constant scores or NaN scores.
`detection_from_logits` decides "anomalous" when logit >= threshold (default 0, i.e. sigmoid >= 0.5).
Since it ranks only, AP is the same for logits and for their sigmoid probabilities.

`pixel_statistics(masks)`: total_pixels, anomalous_pixels (ints) and anomalous_percent
(100 * anomalous / total; NaN + warning when there are no pixels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from moleflow.errors import MoleflowError
from moleflow.evaluation.metrics import _binary, _degenerate, _order_preserving_finite, _scores, _undefined

_KEYS = ("precision", "recall", "f1", "iou", "ap")


def _ratio(num: int, den: int, metric: str, why: str) -> float:
    return _undefined(metric, why) if den == 0 else num / den


def _counts_metrics(targets: np.ndarray, decisions: np.ndarray, metric: str) -> dict[str, float]:
    tp = int(np.count_nonzero(decisions & targets))
    fp = int(np.count_nonzero(decisions & ~targets))
    fn = int(np.count_nonzero(~decisions & targets))
    return {
        "precision": _ratio(tp, tp + fp, f"{metric} precision", "nothing is predicted anomalous"),
        "recall": _ratio(tp, tp + fn, f"{metric} recall", "no target is anomalous"),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, f"{metric} f1", "no anomalous targets and no anomalous decisions"),
        "iou": _ratio(tp, tp + fp + fn, f"{metric} iou", "no anomalous targets and no anomalous decisions"),
    }


def _paired(targets: Any, values: np.ndarray, name: str, metric: str) -> np.ndarray:
    y = _binary(targets, "targets", metric).ravel()
    if y.shape != values.shape:
        raise MoleflowError(f"{metric}: {y.size} targets but {values.size} {name}; pass one {name[:-1]} per target")
    return y


def detection_from_decisions(targets: Any, decisions: Any) -> dict[str, float]:
    """precision, recall, f1, iou of binary decisions (1 = anomalous); ap is NaN (needs scores)."""
    metric = "detection_from_decisions"
    d = _binary(decisions, "decisions", metric).ravel()
    y = _paired(targets, d, "decisions", metric)
    if y.size == 0:
        nan = _undefined(metric, "no samples")
        return dict.fromkeys(_KEYS, nan)
    result = _counts_metrics(y, d, metric)
    result["ap"] = _undefined(f"{metric} ap", "average precision needs scores, not decisions; "
                              "use detection_from_logits")
    return result


def detection_from_logits(targets: Any, logits: Any, threshold: float = 0.0) -> dict[str, float]:
    """precision, recall, f1, iou of (logits >= threshold), and ap of the logits as scores."""
    metric = "detection_from_logits"
    if np.isnan(threshold):
        raise MoleflowError(f"{metric}: threshold is NaN; pass a finite logit threshold (0 = probability 0.5)")
    s = _scores(logits).ravel()
    y = _paired(targets, s, "logits", metric)
    if y.size == 0 or np.isnan(s).any():
        nan = _undefined(metric, "no samples" if y.size == 0 else "logits contain NaN")
        return dict.fromkeys(_KEYS, nan)
    result = _counts_metrics(y, s >= threshold, metric)
    if (why := _degenerate(y, s, "samples")) is not None:
        result["ap"] = _undefined(f"{metric} ap", why)
    else:
        ranks = s if np.isfinite(s).all() else _order_preserving_finite(s)[0]  # sklearn rejects +-inf
        result["ap"] = float(average_precision_score(y, ranks))
    return result


def pixel_statistics(masks: Any) -> dict[str, float]:
    """total_pixels, anomalous_pixels and anomalous_percent of binary masks (any shape)."""
    m = _binary(masks, "masks", "pixel_statistics")
    total, anomalous = int(m.size), int(np.count_nonzero(m))
    percent = _ratio(100 * anomalous, total, "pixel_statistics anomalous_percent", "no pixels")
    return {"total_pixels": total, "anomalous_pixels": anomalous, "anomalous_percent": percent}
