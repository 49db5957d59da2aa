"""Windows: the synthetic classes draw an object, or a defect, only inside its bounding box.

A `Window` is a pair of slices (rows, columns) into a (size, size) image: the bounding box of what is
being drawn, grown by a margin (anti-aliased edge, blur, shadow, a wobbly outline) and clipped to the
image. Fields - distances, coverages, shading - are computed only on the window's pixels, with absolute
pixel-centre coordinates (`grid`), and the patch is written into a copy of the image (`pasted`). Most
pixels of a frame never see a small part or a defect: outside its box they are plain background or the
unchanged normal render, so computing them again would only cost time (a defect a few pixels across
then costs a few hundred pixels of work, not the whole frame) and could not change them.

Also here, shared by several class modules: object poses (a random shift and rotation, and object
points back to the image), jagged paths, round dents and a few float32 noise fields.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import irregular_blob, pixel_grid, random_point_in, smooth_noise

Window = tuple[slice, slice]
FULL: Window = (slice(None), slice(None))


# ---- windows ----------------------------------------------------------------------------------------------


def window(near: np.ndarray) -> Window:
    """Bounding slices of a boolean mask (empty slices if the mask is empty)."""
    rows, cols = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def box(points: np.ndarray, margin: float, size: int) -> Window:
    """Slices covering (n, 2) image points (row, col) grown by `margin` pixels, clipped to the image."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    low = np.floor(points.min(0) - margin).astype(int)
    high = np.ceil(points.max(0) + margin).astype(int) + 1
    return slice(max(0, low[0]), min(size, max(0, high[0]))), slice(max(0, low[1]), min(size, max(0, high[1])))


def points_box(points: np.ndarray, pad: float, size: int) -> Window:
    """Bounding box of (n, 2) (y, x) `points` grown by `pad` pixels, clipped to the image.

    As `box`, but computed in the points' own dtype (float32 for paths) and without clamping the
    stop at 0; the texture classes use this one, and their images depend on its exact rounding.
    """
    low = np.maximum(np.floor(points.min(0) - pad), 0).astype(int)
    high = np.minimum(np.ceil(points.max(0) + pad) + 1, size).astype(int)
    return slice(low[0], high[0]), slice(low[1], high[1])


def square(size: int, cy: float, cx: float, reach: float) -> Window:
    """The pixels within `reach` of (cy, cx) (and 2 more), clipped to the image."""
    r = math.ceil(reach) + 2
    row, col = int(cy), int(cx)
    return slice(max(0, row - r), min(size, row + r + 1)), slice(max(0, col - r), min(size, col + r + 1))


def object_square(pose: tuple[float, float, float], size: int, centre: tuple[float, float], reach: float) -> Window:
    """Image rows / columns within `reach` pixels of an object-frame point; `pose` is the image (y, x)
    of the object-frame origin and the rotation (radians)."""
    cy, cx, angle = pose
    y = cy + math.cos(angle) * centre[0] + math.sin(angle) * centre[1]
    x = cx - math.sin(angle) * centre[0] + math.cos(angle) * centre[1]
    return (slice(max(0, int(y - reach)), max(0, min(size, int(y + reach) + 2))),
            slice(max(0, int(x - reach)), max(0, min(size, int(x + reach) + 2))))


def grid(win: Window) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre (row, col) coordinates inside a window."""
    return np.meshgrid(np.arange(win[0].start, win[0].stop, dtype=np.float32),
                       np.arange(win[1].start, win[1].stop, dtype=np.float32), indexing="ij")


def pasted(image: np.ndarray, win: Window, patch: np.ndarray) -> np.ndarray:
    """A copy of `image` with `patch` written into `win`."""
    out = image.copy()
    out[win] = patch
    return out


def random_blob(rng: np.random.Generator, size: int, radius: float) -> tuple[Window, np.ndarray, tuple]:
    """A random irregular blob away from the border: its box, its alpha inside the box, and its centre."""
    centre = random_point_in(rng, size, radius + 1)
    win = points_box(np.array([centre]), 1.7 * radius + 3, size)  # the wobbly outline stays within 1.7 radii
    y, x = grid(win)
    return win, irregular_blob(rng, y, x, centre, radius), centre


# ---- drawing ----------------------------------------------------------------------------------------------


def stroke_distance(y: np.ndarray, x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance to a polyline of (n, 2) (y, x) vertices (sqrt, not hypot: several times faster)."""
    distance = np.full(y.shape, np.inf, dtype=np.float32)
    for (y0, x0), (y1, x1) in zip(points[:-1].tolist(), points[1:].tolist()):
        dy, dx = y1 - y0, x1 - x0
        py, px = y - y0, x - x0
        t = np.clip((py * dy + px * dx) / max(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
        py, px = py - t * dy, px - t * dx
        distance = np.minimum(distance, py * py + px * px)
    return np.sqrt(distance)


def rgb(channels: list[np.ndarray], lighting: float) -> np.ndarray:
    """Stack per-channel planes into an (H, W, 3) float32 image, lit and clipped."""
    return np.clip(np.stack(channels, axis=-1) * np.float32(lighting), 0, 1).astype(np.float32, copy=False)


def jagged_path(rng: np.random.Generator, start: tuple[float, float], length: float, kinks: int,
                wobble: float, centred: bool = False) -> np.ndarray:
    """(kinks + 1, 2) vertices of a path of total length `length` from `start` turning by ~wobble rad at kinks.

    With `centred`, the path begins half its length back from `start` along its first heading.
    """
    heading = rng.uniform(0, 2 * math.pi)
    points = [np.asarray(start, dtype=np.float64)]
    if centred:
        points[0] = points[0] - 0.5 * length * np.array([math.sin(heading), math.cos(heading)])
    for _ in range(kinks):
        heading += rng.normal(0, wobble)
        points.append(points[-1] + length / kinks * np.array([math.sin(heading), math.cos(heading)]))
    return np.array(points, dtype=np.float32)


def random_path(rng: np.random.Generator, size: int, length: float, kinks: int, wobble: float) -> np.ndarray:
    """A centred `jagged_path` around a random point at least half its length (and 2 pixels) from the border."""
    return jagged_path(rng, random_point_in(rng, size, margin=length / 2 + 2), length, kinks, wobble, centred=True)


def dent(y: np.ndarray, x: np.ndarray, centre: tuple[float, float], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth (0..1) of a round dent and its lit rim (0..1, light from the upper left); zero beyond ~2 radii."""
    dy, dx = (y - centre[0]) / radius, (x - centre[1]) / radius
    q = dy * dy + dx * dx
    depth = np.exp(-q) * (q < 4.5)
    # The dent's far wall (lower right) faces the light from the upper left.
    return depth, np.clip((dy + dx) * depth * 1.2, 0, 1)


# ---- poses ------------------------------------------------------------------------------------------------


def rotate(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Image offsets (dy, dx) from an object's origin -> its frame (oy, ox), for an object turned by `angle`."""
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return cos * dy - sin * dx, sin * dy + cos * dx


def pose(rng: np.random.Generator, size: int, shift: float, degrees: float
         ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """Object-frame coordinates (oy, ox) of every pixel under a random shift and rotation, and the pose."""
    scale = size / 256
    y, x = pixel_grid(size)
    cy, cx = (size - 1) / 2 + rng.uniform(-shift, shift, 2) * scale
    angle = math.radians(rng.uniform(-degrees, degrees))
    oy, ox = rotate(y - np.float32(cy), x - np.float32(cx), angle)
    return oy, ox, (float(cy), float(cx), math.cos(angle), math.sin(angle))


def to_image(frame: tuple[float, float, float, float], points: np.ndarray) -> np.ndarray:
    """Object-frame (n, 2) (y, x) points -> image (row, col) points, inverting `pose`."""
    cy, cx, cos, sin = frame
    py, px = points[:, 0], points[:, 1]
    return np.stack([cy + cos * py + sin * px, cx - sin * py + cos * px], axis=1).astype(np.float32)


# ---- noise fields -----------------------------------------------------------------------------------------


def noise(rng: np.random.Generator, size: int | tuple[int, int], sigma: float) -> np.ndarray:
    """smooth_noise over (size, size) (or a shape) as a C-ordered float32 field (for large sigmas it returns
    float64 in Fortran order, and every later operation that mixes memory orders runs several times slower)."""
    shape = (size, size) if isinstance(size, int) else size
    return np.ascontiguousarray(smooth_noise(rng, shape, sigma), dtype=np.float32)


def fine_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Cheap unit-variance fine noise (smooth_noise costs several ms at such small sigmas)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma, truncate=2.5)
    return field / (field.std() + 1e-8)


def texture_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std noise a few pixels across; blurred uniform noise, cheaper than smooth_noise here."""
    if sigma >= 6:  # wide (large images): smooth_noise's coarse grid is far cheaper than a wide kernel
        return noise(rng, shape, sigma)
    field = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), sigma, truncate=3.0)
    return (field - field.mean()) / (field.std() + 1e-8)


def fine_grain(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Unit-std fine noise: uniform noise under a [1 2 1] blur, a fraction of the cost of a Gaussian one."""
    a = rng.random((shape[0] + 2, shape[1] + 2), dtype=np.float32)
    b = a[:-2] + 2 * a[1:-1] + a[2:]
    return (b[:, :-2] + 2 * b[:, 1:-1] + b[:, 2:] - 8.0) * (1 / math.sqrt(3.0))
