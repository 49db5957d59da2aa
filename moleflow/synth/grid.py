"""Synthetic `grid`: a woven metal wire mesh on a dark background, and its defects.

Normal look: two families of round wires (slightly rotated, jittered spacing, phase and per-wire
brightness) that alternate over/under at every crossing; a wire is darker where it dips under another,
the background darkens next to wires, and lighting varies slowly. Grayscale, stored as RGB.
Defects re-render the same mesh with an edit: broken (a wire thinned to nothing over a stretch),
bent (a stretch pushed sideways out of the weave), contamination (a glue, dirt or metal-chip blob).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import coverage, irregular_blob, lerp, pixel_grid, random_point_in, smooth_noise


@dataclass(frozen=True)
class WireEdit:
    """A stretch [start, end] (pixels along the wire) of wire `index` in family `family` (0 = along v, 1 = along u)."""

    family: int
    index: int
    start: float
    end: float
    keep: float = 1.0  # width factor inside the stretch (broken wires)
    offset: float = 0.0  # peak sideways displacement inside the stretch (bent wires)


@dataclass(frozen=True)
class GridScene:
    u: np.ndarray  # coordinate across the family-0 wires (pixels, rotated + jittered)
    v: np.ndarray  # coordinate across the family-1 wires
    period: float
    half_width: float
    gains: np.ndarray  # (2, n) per-wire brightness, indexed by family and wire index + offset
    background: np.ndarray
    lighting: np.ndarray
    grain: np.ndarray
    image: np.ndarray  # the normal render, (size, size, 3)
    edit: WireEdit | None = None


def _cylinder(across: np.ndarray, half_width: np.ndarray | float) -> np.ndarray:
    """Brightness across a round wire: bright crest, darker flanks."""
    n = np.clip(np.abs(across) / np.maximum(half_width, 1e-3), 0, 1)
    return 0.35 + 0.65 * np.sqrt(1.0 - n * n)


def _family(scene: GridScene, family: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage, brightness and height of one wire family (0: wires of constant u, 1: constant v)."""
    cross, along = (scene.u, scene.v) if family == 0 else (scene.v, scene.u)
    p = scene.period
    index = np.rint(cross / p)
    across = cross - index * p
    # Weave: at crossing (i, j) family 0 is on top when i + j is even, family 1 otherwise.
    sign = 1.0 if family == 0 else -1.0
    height = sign * np.cos(math.pi * (along / p + index))
    half_width = np.full(cross.shape, scene.half_width, dtype=np.float32)
    edit = scene.edit
    if edit is not None and edit.family == family:
        in_stretch = (index == edit.index) & (along >= edit.start) & (along <= edit.end)
        half_width = np.where(in_stretch, scene.half_width * edit.keep, half_width)
    gains = scene.gains[family][(index.astype(int) + scene.gains.shape[1] // 2) % scene.gains.shape[1]]
    cover = coverage(np.abs(across), half_width) * np.clip(half_width / scene.half_width * 3, 0, 1)
    bright = gains * _cylinder(across, half_width) * (0.5 + 0.25 * (height + 1))
    return cover.astype(np.float32), bright.astype(np.float32), height


def _bent_wire(scene: GridScene) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and brightness of the displaced stretch of a bent wire (drawn above the weave)."""
    edit = scene.edit
    cross, along = (scene.u, scene.v) if edit.family == 0 else (scene.v, scene.u)
    t = np.clip((along - edit.start) / (edit.end - edit.start), 0, 1)
    centre = edit.index * scene.period + edit.offset * np.sin(math.pi * t) ** 2
    across = cross - centre
    inside = (along >= edit.start) & (along <= edit.end)
    cover = coverage(np.abs(across), scene.half_width) * inside
    gain = scene.gains[edit.family][(edit.index + scene.gains.shape[1] // 2) % scene.gains.shape[1]]
    return cover.astype(np.float32), (gain * 0.95 * _cylinder(across, scene.half_width)).astype(np.float32)


def _compose(scene: GridScene) -> np.ndarray:
    cover0, bright0, height0 = _family(scene, 0)
    cover1, bright1, height1 = _family(scene, 1)
    top0 = height0 >= height1
    low_cover, low_bright = np.where(top0, cover1, cover0), np.where(top0, bright1, bright0)
    high_cover, high_bright = np.where(top0, cover0, cover1), np.where(top0, bright0, bright1)
    extra_cover = np.zeros_like(cover0)
    if scene.edit is not None and scene.edit.offset != 0.0:
        extra_cover, extra_bright = _bent_wire(scene)
    occlusion = ndimage.gaussian_filter(np.clip(cover0 + cover1 + extra_cover, 0, 1), scene.half_width)
    image = scene.background * (1.0 - 0.6 * occlusion)
    image = lerp(image, low_bright, low_cover)
    image = lerp(image, high_bright, high_cover)
    if scene.edit is not None and scene.edit.offset != 0.0:
        image = lerp(image, extra_bright, extra_cover)
    image = np.clip(image * scene.lighting + scene.grain, 0, 1)
    return np.repeat(image[..., None], 3, axis=-1).astype(np.float32)


def render_grid(rng: np.random.Generator, size: int) -> GridScene:
    scale = size / 256
    shape = (size, size)
    y, x = pixel_grid(size)
    period = size / 11 * rng.uniform(0.97, 1.03)
    angle = math.radians(rng.uniform(-4, 4))
    cos, sin = math.cos(angle), math.sin(angle)
    jitter = 0.04 * period  # wires are not perfectly straight or evenly spaced
    u = cos * x + sin * y + rng.uniform(0, 2 * period) + jitter * smooth_noise(rng, shape, period)
    v = -sin * x + cos * y + rng.uniform(0, 2 * period) + jitter * smooth_noise(rng, shape, period)
    n_wires = int(2 * size / period) + 8
    gains = rng.normal(0.85, 0.05, (2, n_wires)).astype(np.float32)
    background = 0.10 + 0.03 * smooth_noise(rng, shape, 6 * scale)
    lighting = rng.uniform(0.9, 1.1) * (1.0 + 0.12 * smooth_noise(rng, shape, 70 * scale))
    grain = rng.normal(0, 0.012, shape).astype(np.float32)
    scene = GridScene(u.astype(np.float32), v.astype(np.float32), period, 0.15 * period, gains,
                      background.astype(np.float32), lighting.astype(np.float32), grain, image=np.empty(0))
    return replace(scene, image=_compose(scene))


def _stretch(rng: np.random.Generator, scene: GridScene, length: float) -> WireEdit:
    """A random stretch of a wire that is visible in the image."""
    size = scene.image.shape[0]
    cy, cx = random_point_in(rng, size, margin=length / 2 + scene.period / 2)
    family = int(rng.integers(2))
    cross, along = (scene.u, scene.v) if family == 0 else (scene.v, scene.u)
    index = int(np.rint(cross[int(cy), int(cx)] / scene.period))
    mid = float(along[int(cy), int(cx)])
    return WireEdit(family, index, mid - length / 2, mid + length / 2)


def broken(scene: GridScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A wire worn thin or snapped over a stretch (contrast 1: gone; 0.15: slightly thinner)."""
    length = max(2.0, extent * scene.image.shape[0])
    edit = replace(_stretch(rng, scene, length), keep=float(1.0 - contrast))
    return _compose(replace(scene, edit=edit))


def bent(scene: GridScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A stretch of wire pushed sideways out of the weave."""
    length = max(scene.period, 1.5 * extent * scene.image.shape[0])
    offset = (0.12 + 0.4 * contrast) * scene.period * (1 if rng.random() < 0.5 else -1)
    edit = replace(_stretch(rng, scene, length), keep=0.0, offset=float(offset))
    return _compose(replace(scene, edit=edit))


def contamination(scene: GridScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A blob on the mesh: translucent glue, dark dirt, or a bright metal chip, with its own texture."""
    size = scene.image.shape[0]
    y, x = pixel_grid(size)
    radius = max(1.5, 0.5 * extent * size)
    alpha = irregular_blob(rng, y, x, random_point_in(rng, size, radius), radius)
    texture = smooth_noise(rng, alpha.shape, max(0.7, radius / 4))[..., None]
    kind = rng.integers(3)
    if kind == 0:  # glue: milky, lets the mesh show through
        target, alpha = 0.75 + 0.05 * texture, alpha * (0.25 + 0.6 * contrast)
    elif kind == 1:  # dirt: dark and opaque-ish
        target, alpha = 0.05 + 0.04 * texture, alpha * (0.3 + 0.7 * contrast)
    else:  # metal chip: bright, speckled
        target, alpha = 0.65 + 0.25 * texture, alpha * (0.3 + 0.7 * contrast)
    return np.clip(lerp(scene.image, np.broadcast_to(target, scene.image.shape), alpha), 0, 1).astype(np.float32)


GRAYSCALE = True  # stored single-channel, as real MVTec stores grid
DEFECTS = {"broken": broken, "bent": bent, "contamination": contamination}
