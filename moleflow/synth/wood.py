"""Synthetic `wood`: a light brown, planed wooden board with vertical grain, and its defects.

Normal look: long, gently wavy grain lines running top to bottom (growth rings cut lengthwise: a soft
light earlywood band ending in a sharper darker latewood line), fine vertical fibre streaks, slow colour
drift across the board, and sometimes a knot the grain flows around. Grain period, waviness, phase,
colour and lighting vary per sample.
Defects (applied in image space to a rendered normal sample, touching only their region): color (a
discoloured patch that keeps the grain), hole (one to three small dark bored holes), liquid (a darker,
wet-looking stain with a darker dried rim), scratch (one to three thin bright or dark scratch lines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import coverage, lerp, pixel_grid, polyline_distance, random_point_in
from moleflow.synth.window import grid, noise, pasted, points_box, random_blob

EARLY = np.array([0.81, 0.65, 0.48], dtype=np.float32)  # light earlywood
LATE = np.array([0.59, 0.42, 0.28], dtype=np.float32)  # darker latewood lines


@dataclass(frozen=True)
class WoodScene:
    image: np.ndarray  # (size, size, 3) float32 in [0, 1]


def _streaks(rng: np.random.Generator, across: np.ndarray, stretch: float) -> np.ndarray:
    """Fibre streaks following the grain: fine across it, about `stretch` pixels long along it (rows)."""
    size = across.shape[0]
    offset = math.floor(float(across.min())) - 1
    cols = math.ceil(float(across.max())) - offset + 2
    table = ndimage.gaussian_filter(rng.random((math.ceil(size / stretch) + 2, cols), dtype=np.float32), (0.7, 0.6))
    table = (table - table.mean()) / (table.std() + 1e-8)
    # Along the rows: linear interpolation of the coarse table; across: a gather at the warped grain position.
    position = np.arange(size, dtype=np.float32) / stretch
    frac = position - np.floor(position)  # float32: subtracting an int array would promote to float64
    low = position.astype(int)
    frac = frac[:, None]
    table = table[low] * (1 - frac) + table[low + 1] * frac
    where = across - offset
    index = np.minimum(where.astype(int), cols - 2)
    frac = where - index.astype(np.float32)
    return np.take_along_axis(table, index, 1) * (1 - frac) + np.take_along_axis(table, index + 1, 1) * frac


def render_wood(rng: np.random.Generator, size: int) -> WoodScene:
    scale = size / 256
    shape = (size, size)
    y, x = pixel_grid(size)
    tilt = math.radians(rng.uniform(-3, 3))
    across = x * math.cos(tilt) + y * math.sin(tilt)
    # Grain waviness: slow sideways drift down the board, stronger at coarse scales.
    wave = noise(rng, shape, 50 * scale)
    across = across + rng.uniform(2, 6) * scale * wave + 0.7 * scale * noise(rng, shape, 12 * scale)
    if rng.random() < 0.25:  # a knot: grain parts around an elliptical core
        ky, kx = random_point_in(rng, size, 0.15 * size)
        radius = rng.uniform(0.03, 0.06) * size
        dy, dx = (y - ky) / (2.2 * radius), (x - kx) / radius
        bulge = np.exp(-(dx * dx + dy * dy) / 2.5)
        across = across + 1.6 * radius * np.tanh(dx) * bulge
        core = np.hypot(dx, dy)
    else:
        radius, core = 0.0, None
    period = rng.uniform(13, 20) * scale
    phase = across / period + rng.uniform(0, 1) + 0.4 * noise(rng, shape, 40 * scale)
    # Each ring gets its own latewood strength, so lines are not all alike.
    strength = rng.uniform(0.45, 1.0, int(size / period) + 16).astype(np.float32)
    ring_index = np.floor(phase)
    t = phase - ring_index
    # Earlywood fades slowly into latewood, which ends abruptly: asymmetric, like a real ring.
    ring = np.where(t < 0.92, (t * t) ** 2, (1.0 - t) / 0.08)
    ring = ring * np.take(strength, np.clip(ring_index.astype(int) + 4, 0, len(strength) - 1))
    streak = _streaks(rng, across, stretch=rng.uniform(25, 40) * scale)
    fine = _streaks(rng, across * 2.5, stretch=10 * scale)
    darkness = 0.65 * ring + 0.13 * streak + 0.1 * fine
    if core is not None:
        rings = 0.5 + 0.5 * np.cos(core * 9.0)
        darkness = np.where(core < 1.0, 0.55 + 0.35 * rings * core + 0.2 * (1 - core), darkness)
        darkness = darkness + 0.3 * coverage((core - 1.0) * radius, 0.0) * np.exp(-core)
    drift = 1.0 + 0.05 * wave  # slow brightness drift; reusing the waviness field saves a noise field
    colour = rng.uniform(0.96, 1.04) * (1 + rng.normal(0, 0.015, 3)).astype(np.float32)
    early, late = EARLY * colour, LATE * colour
    darkness = np.clip(darkness, -0.3, 1.3)[..., None]
    image = (early + (late - early) * darkness) * drift[..., None]
    image = image + 0.012 * (rng.random(shape, dtype=np.float32) - 0.5)[..., None]
    return WoodScene(image=np.clip(image, 0, 1).astype(np.float32))


def color(scene: WoodScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A discoloured patch: darker, greyish-bleached or reddish, the grain still showing through."""
    size = scene.image.shape[0]
    box, alpha, _ = random_blob(rng, size, max(2.0, 0.5 * extent * size))
    base = scene.image[box]
    kind = rng.integers(3)
    if kind == 0:
        target = base * (1.0 - 0.6 * contrast)
    elif kind == 1:
        target = base + 0.6 * contrast * (np.array([0.78, 0.76, 0.72], np.float32) - base)
    else:
        target = base * (1.0 + contrast * np.array([0.05, -0.35, -0.45], np.float32))
    return pasted(scene.image, box, np.clip(lerp(base, target, alpha), 0, 1))


def hole(scene: WoodScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """One to three small bored holes: a dark, shadowed inside and a slightly lighter torn rim."""
    size = scene.image.shape[0]
    spread = max(2.0, extent * size)
    centre = np.array(random_point_in(rng, size, spread))
    holes = []
    for _ in range(int(rng.integers(1, 4))):
        radius = max(0.8, rng.uniform(0.1, 0.22) * extent * size * (0.6 + 0.6 * contrast))
        holes.append((centre + rng.uniform(-0.7, 0.7, 2) * spread, radius, rng.uniform(0.8, 1.0)))
    box = points_box(np.array([h[0] for h in holes]), max(h[1] for h in holes) * 1.6 + 3, size)
    y, x = grid(box)
    image = scene.image[box]
    for (hy, hx), radius, squash in holes:
        distance = np.hypot(y - hy, (x - hx) * squash)
        inside = coverage(distance, radius)
        rim = coverage(distance, radius + max(1.0, 0.4 * radius)) - inside
        # Shadow on the upper-left inner wall: the light comes from there.
        shadow = 0.15 + 0.2 * np.clip(((y - hy) + (x - hx)) / (2 * radius) + 0.5, 0, 1)
        image = lerp(image, np.minimum(1.0, image * (1.0 + 0.2 * contrast)), rim)
        image = lerp(image, image * shadow[..., None], inside * (0.4 + 0.6 * contrast))
    return pasted(scene.image, box, np.clip(image, 0, 1))


def liquid(scene: WoodScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A wet stain: darker and more saturated, soft-edged, with a slightly darker rim where it dries."""
    size = scene.image.shape[0]
    radius = max(2.5, 0.9 * extent * size)
    box, alpha, _ = random_blob(rng, size, radius)
    alpha = ndimage.gaussian_filter(alpha, max(0.6, 0.08 * radius))  # liquid wicks out along the fibres
    edge = np.clip(alpha * (1 - alpha) * 4, 0, 1)  # peaks on the outline
    base = scene.image[box]
    # Soaked wood deepens in colour (the weaker channels drop most) rather than just greying.
    relative = base / (base.max(-1, keepdims=True) + 1e-6)
    wet = base * (1.0 - 0.28 * contrast) * (1.0 - 0.3 * contrast * (1.0 - relative))
    wet = wet * (1.0 - 0.15 * contrast * edge)[..., None]
    return pasted(scene.image, box, np.clip(lerp(base, wet, alpha), 0, 1))


def scratch(scene: WoodScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """One to three thin, nearly parallel scratches: bright where fibres are torn up, or dark where dirt settled."""
    size = scene.image.shape[0]
    length = max(6.0, 3.0 * extent * size)
    heading = rng.uniform(0, math.pi)
    cy, cx = random_point_in(rng, size, length / 2 + 2)
    bright = rng.random() < 0.6
    lines = []
    for _ in range(int(rng.integers(1, 4))):
        h = heading + rng.normal(0, 0.05)
        offset = rng.normal(0, 0.08 * length)
        my, mx = cy + offset * math.cos(h), cx - offset * math.sin(h)
        half = 0.5 * length * rng.uniform(0.6, 1.0)
        bow = rng.normal(0, 0.04 * length)
        lines.append(np.array([[my - half * math.sin(h), mx - half * math.cos(h)],
                               [my + bow * math.cos(h), mx - bow * math.sin(h)],
                               [my + half * math.sin(h), mx + half * math.cos(h)]], dtype=np.float32))
    half_width = max(0.35, 0.5 * size / 256)
    box = points_box(np.concatenate(lines), half_width + 2, size)
    y, x = grid(box)
    image = scene.image[box]
    for points in lines:
        alpha = coverage(polyline_distance(y, x, points), half_width) * (0.3 + 0.7 * contrast)
        image = lerp(image, np.minimum(1.0, image * 1.25 + 0.08) if bright else image * 0.55, alpha)
    return pasted(scene.image, box, np.clip(image, 0, 1))


DEFECTS = {"color": color, "hole": hole, "liquid": liquid, "scratch": scratch}
