"""What the report's image tiles need besides the heatmap pipeline of evaluation/visualize.py (which draws the
evaluation view: the anomaly map upsampled to the image, on one jet scale per class centred on its decision
threshold, half over the image, the mask's outline in white; extra maps in viridis; JPEG):

* input: the image file as it is, at its own resolution (not the model's input size);
* the ground-truth mask at that resolution;
* dataset view: the image with its ground-truth mask as a semi-transparent red overlay (anomalous images);
* the colour bars of the legend.

No text is drawn into pixels (the page's HTML carries every label, so nothing is cut off). Also: the tile order
(worst first) and the score badge's colour.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePath

import numpy as np
from PIL import Image

from moleflow.data.image_io import open_image, to_binary_mask, to_float_rgb
from moleflow.evaluation.visualize import colorize, encode_png, mask_outline

MASK_RGB = np.array([255, 0, 0], np.float32)
MASK_ALPHA = 0.45


def load_rgb(path: str | Path) -> np.ndarray:
    """The image file at its own resolution, (H,W,3) uint8."""
    return (to_float_rgb(open_image(path)) * 255).round().astype(np.uint8)


def full_size_mask(mask_file: str | None, model_mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H,W) bool ground truth at the image's size: the mask file when there is one of that size, else the
    model-size mask scaled with nearest neighbour."""
    if mask_file is not None and Path(mask_file).is_file():
        mask = to_binary_mask(open_image(mask_file))
        if mask.shape == tuple(size):
            return mask
    im = Image.fromarray(model_mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(im) > 0


def mask_overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The dataset view: mask pixels tinted red (alpha 0.45), outlined in red."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * MASK_RGB
    out = out.round().astype(np.uint8)
    out[mask_outline(mask)] = MASK_RGB.astype(np.uint8)
    return out


def colorbar_png(cmap: str, width: int = 256, height: int = 12) -> bytes:
    """A horizontal colour bar (low on the left) of a colour map, PNG."""
    row = colorize(np.linspace(0.0, 1.0, width, dtype=np.float32)[None], 0.0, 1.0, cmap)
    return encode_png(np.repeat(row, height, axis=0))


def path_label(path: str, data_path: str, class_name: str) -> str:
    """The image's path relative to its class folder (test/color/000.png), whatever the run's working directory."""
    p = PurePath(path)
    try:
        return p.relative_to(PurePath(data_path) / class_name).as_posix()
    except ValueError:
        pass
    parts = p.parts
    if class_name in parts:
        return PurePath(*parts[len(parts) - 1 - parts[::-1].index(class_name) + 1:]).as_posix()
    return PurePath(*parts[-3:]).as_posix()


def outcome(record: dict) -> str:
    """'FN', 'FP', 'TP', 'TN' or 'undecided' (no threshold) of a per_image.jsonl record."""
    if record.get("prediction") is None:
        return "undecided"
    gt, pred = int(record["ground_truth"]), int(record["prediction"])
    return {(1, 0): "FN", (0, 1): "FP", (1, 1): "TP", (0, 0): "TN"}[gt, pred]


def worst_first(records: list[dict], threshold: float) -> list[int]:
    """Indices of `records`: wrong decisions first, the most confidently wrong (farthest from the threshold on
    the wrong side) leading, then the right ones from the closest call to the clearest; undecided last."""
    def key(i: int) -> tuple[int, float]:
        r = records[i]
        margin = abs(float(r["score"]) - threshold) if math.isfinite(threshold) else 0.0
        margin = margin if math.isfinite(margin) else math.inf
        state = outcome(r)
        if state in ("FN", "FP"):
            return 0, -margin
        return (1, margin) if state != "undecided" else (2, 0.0)

    return sorted(range(len(records)), key=lambda i: (*key(i), records[i]["filename"]))


def score_colour(score: float, threshold: float, low: float, high: float) -> str:
    """CSS colour of a score badge, hue 120 (green) -> 60 (yellow) -> 0 (red): green at the class's lowest
    score `low`, yellow at the decision threshold T, red at 2T - low and above (as the maps' scale); without a
    usable T, green at `low` and red at the highest score `high`."""
    if not math.isfinite(score):
        return "hsl(0, 0%, 55%)"
    if math.isfinite(threshold) and threshold > low:
        position = 0.5 + 0.5 * (score - threshold) / (threshold - low)
    else:
        position = (score - low) / (high - low) if high > low else 0.5
    position = min(max(position, 0.0), 1.0)
    return f"hsl({round(120 * (1 - position))}, 75%, 38%)"
