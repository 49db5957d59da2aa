"""Synthetic `leather`: pebbled, creased brown hide lit from the upper left, and its defects.

Normal look: Worley-like pebbles (domes around jittered seeds, warped so cells are irregular), a network
of finer creases, broad undulation, warm brown albedo with slow colour drift, shaded from a height map.
Defects (all in image space, applied to a rendered normal sample): cut, color, fold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import (
    coverage,
    irregular_blob,
    lerp,
    pixel_grid,
    polyline_distance,
    random_point_in,
    smooth_noise,
    warp,
)

BASE_COLOUR = np.array([0.56, 0.35, 0.21], dtype=np.float32)


@dataclass(frozen=True)
class LeatherScene:
    image: np.ndarray  # (size, size, 3) float32 in [0, 1]


def _pebbles(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Domes (1 at a seed, 0 at the cell border) around jittered grid seeds, as a (size, size) field."""
    n = math.ceil(size / cell) + 2
    centres = (np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1) - 1 + 0.5) * cell
    centres = centres + rng.uniform(-0.45, 0.45, centres.shape) * cell
    rows, cols = np.rint(centres.reshape(-1, 2)).astype(int).T
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    not_seed = np.ones((size, size), dtype=bool)
    not_seed[rows[inside], cols[inside]] = False
    distance = ndimage.distance_transform_edt(not_seed).astype(np.float32)
    return 1.0 - np.clip(distance / (0.8 * cell), 0.0, 1.0) ** 2


def render_leather(rng: np.random.Generator, size: int) -> LeatherScene:
    scale = size / 256
    shape = (size, size)
    cell = max(2.5, rng.uniform(6.0, 7.5) * scale)
    pebbles = _pebbles(rng, size, cell)
    # Domain warp: pebble rows are never straight in real hide.
    amplitude = 1.6 * cell / 7
    pebbles = warp(pebbles[..., None], amplitude * smooth_noise(rng, shape, 3 * cell),
                   amplitude * smooth_noise(rng, shape, 3 * cell))[..., 0]
    creases = np.exp(-(smooth_noise(rng, shape, 5 * cell) / 0.12) ** 2)  # thin ridges on zero crossings
    height = (0.9 * pebbles - 0.7 * creases + 0.25 * smooth_noise(rng, shape, max(0.6, 0.8 * scale))
              + 0.8 * smooth_noise(rng, shape, 28 * scale))
    grad_y, grad_x = np.gradient(ndimage.gaussian_filter(height, 0.6 * scale + 0.3))
    light = rng.normal([-0.55, -0.45], 0.08)  # (y, x) direction the light comes from, with a little jitter
    shade = 1.0 + 0.3 * cell * (grad_y * light[0] + grad_x * light[1])  # gradients scale as 1/cell
    shade = np.clip(shade, 0.55, 1.45)

    brightness = rng.uniform(0.97, 1.03) * (1.0 + 0.04 * smooth_noise(rng, shape, 40 * scale))
    warmth = 0.02 * smooth_noise(rng, shape, 55 * scale)  # slow drift between reddish and yellowish brown
    colour = BASE_COLOUR * rng.uniform(0.98, 1.02, 3).astype(np.float32)
    albedo = colour * brightness[..., None]
    albedo = albedo + np.stack([warmth, 0.3 * warmth, -0.5 * warmth], -1)
    cavity = 0.78 + 0.22 * ndimage.gaussian_filter(pebbles, 0.5 * scale + 0.2) - 0.12 * creases
    image = albedo * (shade * cavity)[..., None]
    image = image + rng.normal(0, 0.006, image.shape)
    return LeatherScene(image=np.clip(image, 0, 1).astype(np.float32))


def _wavy_path(rng: np.random.Generator, size: int, length: float, kinks: int) -> np.ndarray:
    """(kinks + 1, 2) vertices of a path of total length `length` that changes direction a little at each kink."""
    start = np.array(random_point_in(rng, size, margin=length / 2 + 2))
    heading = rng.uniform(0, 2 * math.pi)
    points = [start - 0.5 * length * np.array([math.sin(heading), math.cos(heading)])]
    for _ in range(kinks):
        heading += rng.normal(0, 0.35)
        points.append(points[-1] + length / kinks * np.array([math.sin(heading), math.cos(heading)]))
    return np.array(points, dtype=np.float32)


def cut(scene: LeatherScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A knife cut: a dark gap whose lips catch the light, along a slightly wavy path."""
    size = scene.image.shape[0]
    y, x = pixel_grid(size)
    length = max(4.0, 2.0 * extent * size)
    distance = polyline_distance(y, x, _wavy_path(rng, size, length, kinks=3))
    half_width = max(0.4, (0.3 + 1.2 * contrast) * size / 256 + 0.2 * rng.random())
    gap = coverage(distance, half_width)
    lips = coverage(distance, half_width + max(1.0, size / 256)) - gap
    image = lerp(scene.image, scene.image * (1.0 - 0.85 * contrast), gap)
    return lerp(image, np.minimum(1.0, scene.image * (1.0 + 0.45 * contrast) + 0.04), lips)


def color(scene: LeatherScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A stain that keeps the grain but shifts its colour: darker, bleached or reddish."""
    size = scene.image.shape[0]
    y, x = pixel_grid(size)
    radius = max(1.5, 0.5 * extent * size)
    alpha = irregular_blob(rng, y, x, random_point_in(rng, size, radius), radius)
    kind = rng.integers(3)
    if kind == 0:
        target = scene.image * (1.0 - 0.75 * contrast)
    elif kind == 1:
        target = scene.image + contrast * 0.7 * (np.array([0.85, 0.75, 0.62], np.float32) - scene.image)
    else:
        target = scene.image * (1.0 + contrast * np.array([0.5, -0.45, -0.55], np.float32))
    return np.clip(lerp(scene.image, target, alpha), 0, 1)


def fold(scene: LeatherScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A pressed fold: grain pulled towards a line, one flank lit and the other in shadow, tapering at the ends."""
    size = scene.image.shape[0]
    y, x = pixel_grid(size)
    length = max(6.0, 2.5 * extent * size)
    cy, cx = random_point_in(rng, size, length / 2)
    heading = rng.uniform(0, math.pi)
    ty, tx = math.sin(heading), math.cos(heading)
    along = ((y - cy) * ty + (x - cx) * tx) / length + 0.5  # 0..1 over the fold's length
    across = -(y - cy) * tx + (x - cx) * ty  # signed pixels from the fold line
    width = max(1.2, 0.12 * length * (0.5 + contrast))
    taper = np.sqrt(np.clip(np.sin(math.pi * np.clip(along, 0, 1)), 0, 1)) * ((along > 0) & (along < 1))
    bump = np.exp(-0.5 * (across / width) ** 2) * taper
    pull = 0.6 * contrast * across * bump  # sample from farther out: texture compressed into the fold
    image = warp(scene.image, pull * -tx, pull * ty)
    light = -across / width * bump * 1.2 * contrast * (1 if rng.random() < 0.5 else -1)
    # Zero the shading exactly where the fold has no effect, so untouched pixels stay bit-identical.
    effect = bump > 1e-3
    image = np.where(effect[..., None], image * (1.0 + light)[..., None], scene.image)
    return np.clip(image, 0, 1)


DEFECTS = {"cut": cut, "color": color, "fold": fold}
