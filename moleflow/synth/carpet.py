"""Synthetic `carpet`: a knitted textile of small interlocking loops filling the frame, and its defects.

Normal look: columns of V-shaped stitches (two slanted yarn legs per stitch, each overlapping the stitch
below), yarn twist and fibre fuzz on every leg, dark gaps between loops, shading from a height map lit
from the upper left, a dull warm grey-beige colour with per-loop and slow colour variation. Stitch
size, rotation, phase, fabric distortion, colour and lighting vary per sample.
Defects (applied in image space to a rendered normal sample, touching only their region): color (a
stain of another colour, the weave still showing), cut (a straight-ish cut opening a dark gap with
frayed edges), hole (a round patch where the loops are gone, showing the dark backing and a few
threads), thread (a loose thread lying on top, with its shadow), metal_contamination (a small shiny
metal chip caught in the pile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import coverage, lerp, pixel_grid, polyline_distance
from moleflow.synth.window import grid, noise, pasted, points_box, random_blob, random_path, texture_noise

YARN = np.array([0.62, 0.56, 0.49], dtype=np.float32)
LEG_OFFSET, LEG_SLANT = 0.24, 0.42  # leg centre from the column centre, and sideways drift per row (columns)
LEG_HALF = (0.62, 0.21)  # (along, across) half axes of a leg, in stitch units: longer than a row, so they interlock


@dataclass(frozen=True)
class CarpetScene:
    image: np.ndarray  # (size, size, 3) float32 in [0, 1]
    albedo: np.ndarray  # (size, size, 3) yarn colour before shading
    fuzz: np.ndarray  # (size, size) zero-mean fibre noise: frays the edges of cuts and holes
    period: float  # stitch size in pixels


def _stitch_table(steps: int = 64) -> tuple[np.ndarray, ...]:
    """One stitch cell sampled on a steps x steps grid: height, winning leg and twist angle per sample.

    Each stitch has two legs leaning towards its bottom centre; legs reach into the rows above and below,
    so a sample takes the highest of the six candidate legs. The knit repeats exactly, so the image is a
    lookup into this table (fast at any size) plus per-leg randomness keyed by the winning leg.
    """
    fv, fu = np.meshgrid((np.arange(steps) + 0.5) / steps - 0.5, (np.arange(steps) + 0.5) / steps - 0.5,
                         indexing="ij")
    height = np.zeros(fu.shape)
    winner = np.zeros(fu.shape, dtype=np.int64)
    angle = np.zeros(fu.shape)
    norm = math.hypot(1.0, LEG_SLANT)
    for index, (row_shift, side) in enumerate(LEGS):
        rv = fv - row_shift  # position relative to the centre of the leg's own row
        du = fu - side * LEG_OFFSET + side * LEG_SLANT * rv
        along = (rv - side * LEG_SLANT * du) / norm
        across = (du + side * LEG_SLANT * rv) / norm
        leg = np.sqrt(np.clip(1.0 - (along / LEG_HALF[0]) ** 2 - (across / LEG_HALF[1]) ** 2, 0.0, 1.0))
        higher = leg > height
        height = np.where(higher, leg, height)
        winner = np.where(higher, index, winner)
        angle = np.where(higher, 2 * math.pi * (2.5 * along - 3.5 * side * across), angle)
    return (height.astype(np.float32).ravel(), winner.ravel(), np.sin(angle).astype(np.float32).ravel(),
            np.cos(angle).astype(np.float32).ravel())


LEGS = [(row_shift, side) for row_shift in (-1, 0, 1) for side in (-1, 1)]
TABLE_STEPS = 64
TABLE = _stitch_table(TABLE_STEPS)
N_KEYS = 4096  # per-leg random values, indexed by a hash of (row, column, side); a power of two


def _stitches(u: np.ndarray, v: np.ndarray, phases: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Height (0 in the gaps, 1 on a leg's crest) and yarn brightness; u counts stitch columns, v rows."""
    column, row = np.floor(u), np.floor(v)
    iu = np.minimum(((u - column) * TABLE_STEPS).astype(np.int32), TABLE_STEPS - 1)
    iv = np.minimum(((v - row) * TABLE_STEPS).astype(np.int32), TABLE_STEPS - 1)
    flat = iv * TABLE_STEPS + iu
    height, winner, sin, cos = (np.take(table, flat) for table in TABLE)
    row_shift = np.take(np.array([r for r, _ in LEGS]), winner)
    side = np.take(np.array([s > 0 for _, s in LEGS], dtype=np.int64), winner)
    key = ((row.astype(np.int64) + row_shift) * 7919 + column.astype(np.int64) * 2 + side) & (N_KEYS - 1)
    phase = np.take(phases, key)
    twist = 0.5 + 0.5 * (sin * np.cos(phase) + cos * np.sin(phase))  # sin(angle + phase)
    return height, np.take(gains, key) * (0.88 + 0.12 * twist)


def render_carpet(rng: np.random.Generator, size: int) -> CarpetScene:
    scale = size / 256
    shape = (size, size)
    y, x = pixel_grid(size)
    period = rng.uniform(8.5, 10.0) * scale
    angle = math.radians(rng.uniform(-3, 3))
    cos, sin = math.cos(angle), math.sin(angle)
    # Fabric is never perfectly regular: a gentle warp of the stitch lattice.
    stretch = 0.35 * period
    u = (cos * x + sin * y + stretch * noise(rng, shape, 6 * period)) / period + rng.uniform(0, 8)
    v = (-sin * x + cos * y + stretch * noise(rng, shape, 6 * period)) / (0.85 * period) + rng.uniform(0, 8)
    phases = rng.uniform(0, 2 * math.pi, N_KEYS).astype(np.float32)
    gains = rng.normal(1.0, 0.05, N_KEYS).astype(np.float32)
    height, bright = _stitches(u, v, phases, gains)
    fuzz = texture_noise(rng, shape, 0.45 * scale + 0.25)
    height = ndimage.gaussian_filter(height + 0.08 * fuzz, 0.35 * scale + 0.25, truncate=3.0)
    grad_y, grad_x = np.gradient(height)
    light = [float(v) for v in rng.normal([-0.6, -0.5], 0.08)]
    shade = np.clip(1.0 + 0.3 * period * (grad_y * light[0] + grad_x * light[1]), 0.6, 1.4)
    cavity = 0.45 + 0.55 * np.sqrt(np.clip(height, 0, 1))  # dark gaps between loops

    colour = (YARN * rng.uniform(0.9, 1.1) * (1 + rng.normal(0, 0.015, 3))).astype(np.float32)
    drift = 1.0 + 0.05 * noise(rng, shape, 45 * scale)
    albedo = colour * (drift * bright)[..., None]
    sensor = 0.012 * (rng.random(shape, dtype=np.float32) - 0.5)
    image = albedo * (shade * cavity * (1.0 + 0.06 * fuzz))[..., None] + sensor[..., None]
    return CarpetScene(image=np.clip(image, 0, 1).astype(np.float32), albedo=albedo.astype(np.float32),
                       fuzz=fuzz.astype(np.float32), period=float(period))


def _backing(scene: CarpetScene, box: tuple[slice, slice], strength: float) -> np.ndarray:
    """What shows where loops are missing: a near-black backing, darker for stronger defects."""
    return scene.albedo[box] * (0.3 - 0.22 * strength) * (1.0 + 0.1 * scene.fuzz[box])[..., None]


def color(scene: CarpetScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A stain of another colour (reddish, bluish, ochre or purplish) that keeps the weave's shading."""
    size = scene.image.shape[0]
    box, alpha, _ = random_blob(rng, size, max(2.0, 0.5 * extent * size))
    tints = np.array([[1.3, 0.7, 0.6], [0.65, 0.85, 1.35], [1.25, 1.1, 0.55], [1.15, 0.6, 1.15]], np.float32)
    tint = tints[rng.integers(len(tints))]
    base = scene.image[box]
    return pasted(scene.image, box, np.clip(lerp(base, base * (1.0 + contrast * (tint - 1.0)), alpha), 0, 1))


def cut(scene: CarpetScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A straight-ish cut: the loops part along a line, a dark gap with frayed fibre ends on both lips."""
    size = scene.image.shape[0]
    scale = size / 256
    points = random_path(rng, size, max(6.0, 2.5 * extent * size), kinks=2, wobble=0.12)
    half_width = max(0.5, (0.5 + 1.8 * contrast) * scale)
    lip_width = half_width + max(1.0, 1.5 * scale)
    box = points_box(points, lip_width + 2 * scale + 2, size)
    y, x = grid(box)
    distance = polyline_distance(y, x, points) + 0.5 * scale * np.clip(scene.fuzz[box], -2, 2)
    gap = coverage(distance, half_width)
    lips = coverage(distance, lip_width) - gap
    base = scene.image[box]
    image = lerp(base, _backing(scene, box, contrast), gap * (0.5 + 0.5 * contrast))
    return pasted(scene.image, box, np.clip(lerp(image, base * (1.0 + 0.25 * contrast) + 0.02, lips), 0, 1))


def hole(scene: CarpetScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A roundish hole where the loops are gone: dark backing, a few stray threads, frayed rim."""
    size = scene.image.shape[0]
    box, alpha, centre = random_blob(rng, size, max(1.5, 0.5 * extent * size))
    frayed = np.clip(alpha + 0.35 * scene.fuzz[box] * alpha * (1.0 - alpha) * 4, 0, 1)
    y, x = grid(box)
    angle = rng.uniform(0, math.pi)
    along = (y - centre[0]) * math.cos(angle) + (x - centre[1]) * math.sin(angle)
    stray = 0.5 + 0.5 * np.cos(2 * math.pi * along / max(2.0, 0.6 * scene.period))
    inside = _backing(scene, box, contrast) * (1.0 + 0.8 * stray**6)[..., None]
    return pasted(scene.image, box, np.clip(lerp(scene.image[box], inside, frayed * (0.55 + 0.45 * contrast)), 0, 1))


def thread(scene: CarpetScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A loose thread lying across the pile: a round, twisted yarn on a wandering path, casting a soft shadow."""
    size = scene.image.shape[0]
    scale = size / 256
    points = random_path(rng, size, max(8.0, 3.5 * extent * size), kinks=8, wobble=0.45)
    half_width = max(0.9, (0.5 + 0.9 * contrast) * scale * rng.uniform(0.8, 1.3))
    offset = max(1.0, scale)
    box = points_box(points, half_width + offset + 3, size)
    y, x = grid(box)
    shadow = coverage(polyline_distance(y - offset, x - offset, points), half_width + 0.5)
    distance = polyline_distance(y, x, points)
    yarn = coverage(distance, half_width)
    profile = np.sqrt(np.clip(1.0 - (distance / (half_width + 0.5)) ** 2, 0, 1))
    # A pale, a dyed or a dark stray thread: contrast sets how far its colour departs from the pile's.
    kinds = np.array([[1.45, 1.45, 1.4], [1.35, 0.7, 0.55], [0.6, 0.75, 1.3], [0.3, 0.3, 0.35]], np.float32)
    colour = YARN * (1.0 + contrast * (kinds[rng.integers(len(kinds))] - 1.0))
    twist = 0.9 + 0.1 * np.sin(2 * math.pi * (x + y) / max(1.5, 1.2 * half_width))
    top = colour * ((0.55 + 0.55 * profile) * twist)[..., None]
    base = scene.image[box]
    image = lerp(base, base * (1.0 - 0.25 * contrast), shadow * (1 - yarn))
    return pasted(scene.image, box, np.clip(lerp(image, top, yarn * (0.6 + 0.4 * contrast)), 0, 1))


def metal_contamination(scene: CarpetScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A small metal chip in the pile: grey, with a bright specular streak across it."""
    size = scene.image.shape[0]
    radius = max(1.5, 0.3 * extent * size)
    box, alpha, centre = random_blob(rng, size, radius)
    y, x = grid(box)
    angle = rng.uniform(0, math.pi)
    across = ((y - centre[0]) * math.cos(angle) - (x - centre[1]) * math.sin(angle)) / radius
    metal = 0.42 + 0.12 * across + 0.45 * np.exp(-(((across - 0.2) / 0.25) ** 2))
    metal = np.stack([metal, metal * 0.99, metal * 1.02], -1)
    return pasted(scene.image, box, np.clip(lerp(scene.image[box], metal, alpha * (0.45 + 0.55 * contrast)), 0, 1))


DEFECTS = {"color": color, "cut": cut, "hole": hole, "metal_contamination": metal_contamination, "thread": thread}
