"""Synthetic `tile`: a light grey-white terrazzo ceramic tile, and its defects.

Normal look: a pale grey binder with slow lighting drift and a fine pore grain, densely scattered with
irregular granules of many sizes, mostly dark grey to black with a few mid-grey and milky-white chips;
granule layout, density, tint and lighting change from sample to sample.
Defects (applied in image space to a rendered normal sample, touching only their region): crack (a thin
dark jagged line), glue_strip (a translucent, slightly glossy strip that softens what lies beneath),
gray_stroke (a streaky grey smear), oil (a darker glossy stain with a sheen), rough (an abraded patch:
granules dulled, binder pitted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import coverage, lerp, polyline_distance, smooth_noise
from moleflow.synth.window import grid, noise, pasted, points_box, random_blob, random_path, texture_noise

BINDER = np.array([0.80, 0.80, 0.78], dtype=np.float32)


@dataclass(frozen=True)
class TileScene:
    image: np.ndarray  # (size, size, 3) float32 in [0, 1]


def _tails(field: np.ndarray, share: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft (0..1) irregular blobs where `field` is in its top and in its bottom `share`.

    Two unrelated granule populations from one field; the ramp is steeper for wider fields, so every
    granule gets about a one-pixel edge.
    """
    step = max(1, field.shape[0] // 64)
    low, high = (float(q) for q in np.quantile(field[::step, ::step], [share, 1.0 - share]))
    ramp = max(1.0, 1.6 * sigma)
    return np.clip((field - high) * ramp, 0.0, 1.0), np.clip((low - field) * ramp, 0.0, 1.0)


def render_tile(rng: np.random.Generator, size: int) -> TileScene:
    scale = size / 256
    shape = (size, size)
    # Composed in grey first (the tile is nearly achromatic), tinted once at the end.
    pores = texture_noise(rng, shape, 0.5 * scale + 0.3)
    value = 1.0 + 0.025 * pores
    tone = noise(rng, shape, 6 * scale)  # granule darkness: nearly constant across one granule
    density = rng.uniform(0.8, 1.2)
    for sigma, share, depth in ((0.7, 0.11, 0.85), (1.6, 0.08, 0.9), (3.2, 0.05, 0.95)):
        sigma = sigma * scale + 0.2
        dark, light = _tails(texture_noise(rng, shape, sigma), share * density, sigma)
        granule = (0.05 + np.clip(0.35 + 0.3 * tone, 0, 0.7) + 0.04 * pores) * (depth / 0.8)
        value = lerp(value, granule, dark)
        if sigma < 1.5 * scale + 0.2:  # the other tail: a sprinkle of small milky-white chips
            value = lerp(value, np.float32(1.15), 0.6 * light)
    lighting = rng.uniform(0.96, 1.04) * (1.0 + 0.03 * noise(rng, shape, 50 * scale))
    value = value * lighting + 0.012 * (rng.random(shape, dtype=np.float32) - 0.5)
    binder = BINDER * (1 + rng.normal(0, 0.01, 3)).astype(np.float32)
    return TileScene(image=np.clip(value[..., None] * binder, 0, 1).astype(np.float32))


def crack(scene: TileScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A hairline crack: a thin, dark, jagged line, sometimes with a short branch."""
    size = scene.image.shape[0]
    length = max(6.0, 2.5 * extent * size)
    trunk = random_path(rng, size, length, kinks=max(4, int(length / (4 * size / 256 + 1))), wobble=0.6)
    paths = [trunk]
    if rng.random() < 0.5:
        branch = random_path(rng, size, 0.4 * length, kinks=4, wobble=0.6)
        paths.append(branch - branch[0] + trunk[len(trunk) // 2])
    half_width = max(0.35, (0.2 + 0.6 * contrast) * size / 256)
    box = points_box(np.concatenate(paths), half_width + 2, size)
    y, x = grid(box)
    distance = np.minimum.reduce([polyline_distance(y, x, points) for points in paths])
    base = scene.image[box]
    alpha = coverage(distance, half_width) * (0.35 + 0.6 * contrast)
    return pasted(scene.image, box, np.clip(lerp(base, base * 0.15, alpha), 0, 1))


def glue_strip(scene: TileScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A translucent strip of dried glue: a faint milky film that softens the granules, with a glossy edge."""
    size = scene.image.shape[0]
    length = max(6.0, 3.5 * extent * size)
    points = random_path(rng, size, length, kinks=2, wobble=0.1)
    half_width = max(1.5, length * rng.uniform(0.1, 0.18))
    blur = 0.6 + 1.2 * contrast * size / 256
    box = points_box(points, 1.5 * half_width + 3 * blur + 3, size)  # room for the wobble and the blur's reach
    y, x = grid(box)
    wobble = 0.2 * half_width * np.clip(smooth_noise(rng, y.shape, max(1.0, 0.5 * half_width)), -2, 2)
    distance = polyline_distance(y, x, points) + wobble
    strip = coverage(distance, half_width)
    base = scene.image[box]
    # Dried glue yellows: a hue no clean tile has, even where the film is thin.
    film = lerp(ndimage.gaussian_filter(base, (blur, blur, 0)), np.array([0.93, 0.86, 0.62], np.float32),
                np.float32(0.2 + 0.35 * contrast))
    rim = np.exp(-0.5 * ((distance - half_width + 1.0) / max(0.7, 0.06 * half_width)) ** 2) * 0.12 * contrast
    return pasted(scene.image, box, np.clip(lerp(base, film + rim[..., None], strip), 0, 1))


def gray_stroke(scene: TileScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A grey smear along a short stroke, streaky along its direction and fading at its edges."""
    size = scene.image.shape[0]
    length = max(6.0, 2.5 * extent * size)
    points = random_path(rng, size, length, kinks=2, wobble=0.25)
    half_width = max(1.5, length * rng.uniform(0.1, 0.2))
    box = points_box(points, half_width + 2, size)
    y, x = grid(box)
    (y0, x0), (y1, x1) = points[0], points[-1]
    norm = math.hypot(y1 - y0, x1 - x0) + 1e-6
    across = ((y - y0) * (x1 - x0) - (x - x0) * (y1 - y0)) / norm
    # Bristle streaks: 1-D noise across the stroke, so streaks run along it.
    ticks = np.arange(math.floor(across.min()) - 1, math.ceil(across.max()) + 2)
    streaks = np.interp(across, ticks, rng.uniform(0.4, 1.0, len(ticks))).astype(np.float32)
    alpha = coverage(polyline_distance(y, x, points), half_width) * streaks * (0.25 + 0.65 * contrast)
    return pasted(scene.image, box, np.clip(lerp(scene.image[box], np.float32(rng.uniform(0.45, 0.6)), alpha), 0, 1))


def oil(scene: TileScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """An oil stain: darker and brownish, with a soft sheen towards one side."""
    size = scene.image.shape[0]
    radius = max(2.0, 0.6 * extent * size)
    box, alpha, centre = random_blob(rng, size, radius)
    y, x = grid(box)
    base = scene.image[box]
    stained = base * (1.0 - contrast * np.array([0.4, 0.5, 0.65], np.float32))
    direction = rng.uniform(0, 2 * math.pi)
    sy, sx = centre[0] + 0.4 * radius * math.sin(direction), centre[1] + 0.4 * radius * math.cos(direction)
    sheen = np.exp(-((y - sy) ** 2 + (x - sx) ** 2) / (2 * (0.35 * radius) ** 2)) * 0.18 * contrast
    return pasted(scene.image, box, np.clip(lerp(base, stained + sheen[..., None], alpha), 0, 1))


def rough(scene: TileScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """An abraded patch: granules scuffed towards the binder tone, the surface pitted and grainy."""
    size = scene.image.shape[0]
    box, alpha, _ = random_blob(rng, size, max(2.0, 0.5 * extent * size))
    pits = texture_noise(rng, alpha.shape, 0.5 * size / 256 + 0.3)
    scuffed = lerp(scene.image[box], np.float32(0.68), np.float32(0.5 * contrast))
    scuffed = scuffed * (1.0 + (0.12 + 0.25 * contrast) * pits)[..., None]
    return pasted(scene.image, box, np.clip(lerp(scene.image[box], scuffed, alpha), 0, 1))


DEFECTS = {"crack": crack, "glue_strip": glue_strip, "gray_stroke": gray_stroke, "oil": oil, "rough": rough}
