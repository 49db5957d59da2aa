"""Vectorised drawing primitives shared by the synthetic benchmark classes.

Everything works on float32 arrays of pixel-centre coordinates; shapes are anti-aliased by turning a
distance (in pixels) into a coverage in [0, 1] over a one-pixel ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row (y) and column (x) coordinates of every pixel centre, each of shape (size, size)."""
    axis = np.arange(size, dtype=np.float32)
    return np.meshgrid(axis, axis, indexing="ij")


def _upsample_linear(field: np.ndarray, factor: int, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation along `axis` of a field sampled every `factor` pixels, to `n_out` samples.

    Gather + blend rather than a matrix product: tiny BLAS calls thrash threads on a busy machine.
    """
    position = np.arange(n_out, dtype=np.float32) / factor
    low = np.minimum(position.astype(int), field.shape[axis] - 2)
    frac = position - low
    if axis == 1:
        return field[:, low] * (1.0 - frac) + field[:, low + 1] * frac
    return field[low] * (1.0 - frac)[:, None] + field[low + 1] * frac[:, None]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise with zero mean and unit std.

    Large sigmas are smoothed on a coarse grid and upsampled linearly: same look, a fraction of the cost
    of a wide kernel (or ndimage.zoom) at full resolution.
    """
    factor = max(1, int(sigma // 3))
    coarse = (math.ceil(shape[0] / factor) + 2, math.ceil(shape[1] / factor) + 2)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / factor, mode="wrap")
    if factor > 1:
        field = _upsample_linear(_upsample_linear(field, factor, 0, shape[0]), factor, 1, shape[1])
    field = field[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-8)


def coverage(distance: np.ndarray, half_width: float) -> np.ndarray:
    """Anti-aliased coverage of a shape whose inside is `distance <= half_width` (one-pixel edge ramp)."""
    return np.clip(half_width + 0.5 - distance, 0.0, 1.0)


def segment_distance(y: np.ndarray, x: np.ndarray, start: tuple[float, float], end: tuple[float, float]) -> np.ndarray:
    """Euclidean distance of every point (y, x) to the segment start-end (points given as (y, x))."""
    (y0, x0), (y1, x1) = start, end
    dy, dx = y1 - y0, x1 - x0
    length_sq = dy * dy + dx * dx
    t = np.zeros_like(y) if length_sq < 1e-12 else np.clip(((y - y0) * dy + (x - x0) * dx) / length_sq, 0.0, 1.0)
    return np.hypot(y - (y0 + t * dy), x - (x0 + t * dx))


def polyline_distance(y: np.ndarray, x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance to a polyline given as an (n, 2) array of (y, x) vertices."""
    distance = np.full(y.shape, np.inf, dtype=np.float32)
    for start, end in zip(points[:-1], points[1:]):
        distance = np.minimum(distance, segment_distance(y, x, tuple(start), tuple(end)))
    return distance


def irregular_blob(
    rng: np.random.Generator, y: np.ndarray, x: np.ndarray, centre: tuple[float, float], radius: float
) -> np.ndarray:
    """Soft alpha in [0, 1] of a random ellipse with a wobbly outline, roughly `radius` pixels across/2."""
    angle = rng.uniform(0, math.pi)
    aspect = rng.uniform(0.45, 1.0)
    cos, sin = math.cos(angle), math.sin(angle)
    along = (y - centre[0]) * cos + (x - centre[1]) * sin
    across = -(y - centre[0]) * sin + (x - centre[1]) * cos
    radial = np.sqrt((along / radius) ** 2 + (across / (radius * aspect)) ** 2)
    wobble = smooth_noise(rng, y.shape, sigma=max(1.0, 0.35 * radius))
    radial = radial * (1.0 + 0.2 * np.clip(wobble, -2, 2))  # clipped: no satellite specks far away
    # Distance to the outline in pixels (approximately), so the edge ramp stays one pixel wide.
    return coverage((radial - 1.0) * radius * aspect, 0.0)


def random_point_in(rng: np.random.Generator, size: int, margin: float) -> tuple[float, float]:
    """A uniform (y, x) point at least `margin` pixels from the border (or the centre if none fits)."""
    low, high = margin, size - 1 - margin
    if high <= low:
        return (size - 1) / 2, (size - 1) / 2
    return float(rng.uniform(low, high)), float(rng.uniform(low, high))


def lerp(base: np.ndarray, target: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """Blend `target` over `base` with a per-pixel alpha; alpha may be (H, W) for (H, W, C) images."""
    if base.ndim == 3 and alpha.ndim == 2:
        alpha = alpha[..., None]
    return base * (1.0 - alpha) + target * alpha


def warp(image: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Resample an (H, W, C) image at (y + dy, x + dx) with bilinear interpolation."""
    y, x = pixel_grid(image.shape[0])
    coords = np.stack([y + dy, x + dx])
    channels = [ndimage.map_coordinates(image[..., c], coords, order=1, mode="reflect") for c in range(image.shape[2])]
    return np.stack(channels, axis=-1)


@dataclass(frozen=True)
class PosedScene:
    """What every posed object's scene starts with: the object-frame coordinates of every pixel (pose
    applied), in pixels; each class's scene adds its own parts."""

    oy: np.ndarray
    ox: np.ndarray


@dataclass(frozen=True)
class Layer:
    """Something drawn over an object inside `box` (image rows, columns): its alpha (h, w) and its paint, a
    colour (h, w, 3) or a grey shade (h, w)."""

    box: tuple[slice, slice]
    alpha: np.ndarray
    paint: np.ndarray
