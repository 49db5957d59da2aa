"""The pixels of the report's image tiles, at each image's own resolution (not the model's input size).

* input: the image file as it is;
* dataset view: the image with its ground-truth mask as a semi-transparent red overlay (anomalous images);
* evaluation view: the anomaly map, upsampled bilinearly to the image, as a semi-transparent overlay in the
  jet colour map (blue = low, red = high) on one scale per class centred on its decision threshold, with the
  mask's outline in white;
* extra maps a model returns (the Students' predictive uncertainty) the same way in viridis.

Colours come from evaluation/visualize.py (colour map table, mask outline); no text is drawn into pixels
(the page's HTML carries every label, so nothing is cut off). Also: the tile order (worst first) and the
score badge's colour.
"""

from __future__ import annotations

import io
import math
from pathlib import Path, PurePath

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from moleflow.data.image_io import open_image, to_binary_mask, to_float_rgb
from moleflow.evaluation.visualize import blend_map, colorize, mask_outline

HEAT_CMAP = "jet"
EXTRA_CMAP = "viridis"
MASK_RGB = np.array([255, 0, 0], np.float32)
MASK_ALPHA = 0.45
OUTLINE_RGB = (255, 255, 255)
JPEG_QUALITY = 88


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


def upsample(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A model-size map bilinearly resized to (H,W)."""
    if amap.shape == tuple(size):
        return amap
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's contour, about 1 px per 256 px of image side so it stays visible on large images."""
    line = mask_outline(mask)
    width = max(1, round(max(mask.shape) / 256))
    return ndimage.binary_dilation(line, iterations=width - 1) if width > 1 else line


def mask_overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The dataset view: mask pixels tinted red (alpha 0.45), outlined in red."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * MASK_RGB
    out = out.round().astype(np.uint8)
    out[_outline(mask)] = MASK_RGB.astype(np.uint8)
    return out


def heat_overlay(rgb: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float,
                 cmap: str = HEAT_CMAP) -> np.ndarray:
    """The evaluation view: half image, half colour-mapped map; the mask outline (if any) in white."""
    out = blend_map(rgb, amap, vmin, vmax, cmap)
    if mask is not None and mask.any():
        out[_outline(mask)] = OUTLINE_RGB
    return out


def encode_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def colorbar_png(cmap: str, width: int = 256, height: int = 12) -> bytes:
    """A horizontal colour bar (low on the left) of a colour map, PNG."""
    row = colorize(np.linspace(0.0, 1.0, width, dtype=np.float32)[None], 0.0, 1.0, cmap)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(row, height, axis=0)).save(buf, format="PNG")
    return buf.getvalue()


def map_range(maps: np.ndarray, threshold: float = math.nan) -> tuple[float, float]:
    """One colour range per class, so its tiles compare: from the 1st percentile of all its maps (low) to
    2T - low, so that the decision threshold T sits in the middle of the colour map and a single outlier image
    cannot wash every other map out; without a usable T, the 1st to 99.5th percentile."""
    finite = maps[np.isfinite(maps)]
    if finite.size == 0:
        return 0.0, 1.0
    low = float(np.percentile(finite, 1))
    if math.isfinite(threshold) and threshold > low:
        return low, 2 * threshold - low
    return low, float(np.percentile(finite, 99.5))


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
