"""Synthetic `bottle`: a brown glass bottle seen from directly above on black, and its defects.

Normal look: a black background; the bottle's round shoulder fills most of the frame, dark amber glass
with bright curved reflections that vary around the circle (light from one side, uneven highlights);
a dark neck band; the pale, rough lip ring of the mouth; the dark mouth in the centre with a faint
brown glow of the bottle's bottom far below. Small changes of position, size, rotation of the
highlights, glass tint and lighting.
Defects edit the rendered bottle in place: broken_large and broken_small (a piece missing from the lip:
the pale ring is interrupted by a dark, glinting fracture), contamination (a foreign blob - dirt, a
fibre of lint or a rust-coloured speck - lying on the inner ring around the mouth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import coverage, lerp, pixel_grid
from moleflow.synth.window import fine_grain, square

# Radial colour profile, radius as a fraction of the bottle's radius. The lip is the bright ring at
# 0.33-0.5; the shoulder's highlights sit at 0.7-0.8 and at the rim.
PROFILE_R = np.array([0.0, 0.16, 0.27, 0.31, 0.35, 0.40, 0.46, 0.50, 0.54, 0.60, 0.70, 0.77, 0.84, 0.92, 0.965,
                      0.99, 1.0, 1.02], dtype=np.float32)
PROFILE_RGB = np.array([
    [0.16, 0.10, 0.05], [0.08, 0.05, 0.025], [0.03, 0.02, 0.012], [0.10, 0.08, 0.06], [0.72, 0.68, 0.62],
    [0.82, 0.78, 0.72], [0.68, 0.64, 0.58], [0.30, 0.22, 0.14], [0.09, 0.055, 0.025], [0.16, 0.095, 0.04],
    [0.32, 0.20, 0.08], [0.50, 0.34, 0.15], [0.26, 0.16, 0.06], [0.20, 0.12, 0.05], [0.42, 0.30, 0.16],
    [0.18, 0.12, 0.07], [0.04, 0.035, 0.03], [0.025, 0.025, 0.025]], dtype=np.float32)
LIP = (0.32, 0.51)  # inner and outer edge of the lip ring
HIGHLIGHT = (0.55, 1.0)  # the part of the profile whose brightness varies around the circle


@dataclass(frozen=True)
class BottleScene:
    rn: np.ndarray  # radius of every pixel as a fraction of the bottle radius
    theta: np.ndarray  # angle of every pixel around the bottle centre
    centre: tuple[float, float]  # (y, x) pixels
    radius: float  # bottle radius in pixels
    grain: np.ndarray  # fine unit-std noise, the rough glass of the lip
    image: np.ndarray


def _polar_gain(rng: np.random.Generator, rn: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Brightness gain of every pixel: the highlight arcs of the shoulder and the lip's sheen.

    Built on a small (radius, angle) table and interpolated per pixel: arcs smooth along the circle and
    sharp across it cost a fraction of the same noise drawn in image space, at any image size.
    """
    nr, nt = 96, 256
    r = (np.arange(nr, dtype=np.float32) + 0.5) * (1.1 / nr)
    t = (np.arange(nt, dtype=np.float32) + 0.5) * (2 * math.pi / nt) - math.pi
    phase = float(rng.uniform(0, 2 * math.pi))
    lobes = 0.45 * np.cos(t - phase)  # light from one side plus random lobes: the arcs differ between bottles
    for k in (2, 3, 5):
        lobes = lobes + float(rng.uniform(0.05, 0.18)) * np.cos(k * t + float(rng.uniform(0, 2 * math.pi)))
    noise = rng.standard_normal((nr, nt), dtype=np.float32)
    streaks = ndimage.gaussian_filter(noise, (0.016 * nr / 1.1, 0.1 * nt / (2 * math.pi)), mode="wrap")
    streaks = 0.25 * (streaks - streaks.mean()) / (streaks.std() + 1e-8)
    in_shoulder = np.clip((r - HIGHLIGHT[0]) / 0.06, 0, 1) * np.clip((HIGHLIGHT[1] - r) / 0.03, 0, 1)
    in_lip = np.clip(1 - np.abs(r - sum(LIP) / 2) / ((LIP[1] - LIP[0]) / 2), 0, 1)
    gain = (1.0 + in_shoulder[:, None] * (lobes[None] + streaks)) * (1.0 + 0.08 * in_lip[:, None] * np.cos(t - phase)[None])
    # Bilinear lookup (angle wraps around).
    fr = np.clip(rn * (nr / 1.1) - 0.5, 0, nr - 1.001)
    ft = np.mod((theta + math.pi) * (nt / (2 * math.pi)) - 0.5, nt)
    i0, j0 = fr.astype(np.int32), ft.astype(np.int32)
    wr, wt = fr - np.floor(fr), ft - np.floor(ft)  # (float32 - int32 would promote to float64)
    flat = gain.astype(np.float32).ravel()
    row0, row1, j1 = i0 * nt, (i0 + 1) * nt, np.where(j0 == nt - 1, 0, j0 + 1)
    near = flat[row0 + j0] + wt * (flat[row0 + j1] - flat[row0 + j0])
    far = flat[row1 + j0] + wt * (flat[row1 + j1] - flat[row1 + j0])
    return near + wr * (far - near)


def render_bottle(rng: np.random.Generator, size: int) -> BottleScene:
    scale = size / 256
    y, x = pixel_grid(size)
    centre = (float((size - 1) / 2 + rng.uniform(-5, 5) * scale), float((size - 1) / 2 + rng.uniform(-5, 5) * scale))
    radius = float(0.455 * size * rng.uniform(0.97, 1.03))
    dy, dx = y - centre[0], x - centre[1]
    rn = np.hypot(dy, dx) * (1 / radius)
    theta = np.arctan2(dy, dx)
    # The radial profile through a fine lookup table: one gather instead of an interpolation per channel.
    n_profile = 4 * size
    samples = np.linspace(0, 1.1, n_profile, dtype=np.float32)
    profile = np.stack([np.interp(samples, PROFILE_R, PROFILE_RGB[:, c]) for c in range(3)], -1).astype(np.float32)
    profile_index = np.minimum((rn * ((n_profile - 1) / 1.1) + 0.5).astype(np.int32), n_profile - 1)

    gain = _polar_gain(rng, rn, theta)
    grain = fine_grain(rng, (size, size))
    lip_profile = np.clip(1 - np.abs(samples - sum(LIP) / 2) / ((LIP[1] - LIP[0]) / 2), 0, 1)
    # Rough glass on the lip; its sheen varies from bottle to bottle.
    gain = gain * (1.0 + lip_profile[profile_index] * (0.07 * grain + float(rng.uniform(-0.08, 0.08))))
    tint = np.array([1.0, rng.uniform(0.94, 1.06), rng.uniform(0.9, 1.1)], dtype=np.float32)
    tint = tint * np.float32(rng.uniform(0.93, 1.07))
    image = profile[profile_index] * (gain[..., None] * tint)
    image += (0.006 * rng.standard_normal((size, size), dtype=np.float32))[..., None]
    return BottleScene(rn, theta, centre, radius, grain, np.clip(image, 0, 1))


def _blob(rng: np.random.Generator, scene: BottleScene, rn0: float, theta0: float,
          half_along: float, half_across: float) -> tuple[tuple[slice, slice], np.ndarray]:
    """The window around a wobbly ellipse lying along the ring, and the approximate signed distance to its
    outline there (pixels, negative inside): in the bottle's polar frame, so a chip follows the lip's curve."""
    cy = scene.centre[0] + rn0 * scene.radius * math.sin(theta0)
    cx = scene.centre[1] + rn0 * scene.radius * math.cos(theta0)
    window = square(scene.rn.shape[0], cy, cx, 1.3 * max(half_along, half_across) + 3)
    theta, rn = scene.theta[window], scene.rn[window]
    along = (np.mod(theta - theta0 + math.pi, 2 * math.pi) - math.pi) * (rn0 * scene.radius)
    across = (rn - rn0) * scene.radius
    a, b = along * (1 / half_along), across * (1 / half_across)
    angle = np.arctan2(b, a)
    wobble = sum(float(rng.uniform(0.04, 0.12)) * np.cos(k * angle + float(rng.uniform(0, 2 * math.pi)))
                 for k in (2, 3, 5))
    return window, (np.hypot(a, b) * (1.0 + wobble) - 1.0) * min(half_along, half_across)


def _broken(scene: BottleScene, rng: np.random.Generator, extent: float, contrast: float, grow: float) -> np.ndarray:
    """A chip knocked out of the lip: dark glass where the lip was, a glinting fracture edge around it."""
    size = scene.rn.shape[0]
    half_along = max(1.5, grow * extent * size)
    lip_width = (LIP[1] - LIP[0]) * scene.radius
    half_across = max(1.2, min(0.5 * lip_width + 0.4 * half_along, 0.6 * half_along + 1))
    rn0 = LIP[0] + rng.uniform(0.1, 0.45) * (LIP[1] - LIP[0])  # chips bite in from the mouth side
    window, distance = _blob(rng, scene, rn0, rng.uniform(-math.pi, math.pi), half_along, half_across)
    hole = coverage(distance, 0.0)
    edge = coverage(np.abs(distance), max(0.6, 1.2 * size / 256)) * (1 - hole)
    # The fracture shows what lies below the lip: dark amber glass, rough.
    below = np.array([0.10, 0.06, 0.03], dtype=np.float32) * (1.0 + 0.4 * scene.grain[window][..., None])
    strength = 0.15 + 0.85 * contrast
    patch = scene.image[window]
    glint = np.minimum(1.0, patch * (1.0 + 0.5 * contrast) + 0.06)
    image = scene.image.copy()
    image[window] = lerp(lerp(patch, below, hole * strength), glint, edge * strength)
    return np.clip(image, 0, 1)


def broken_large(scene: BottleScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A large piece missing from the lip (along the ring: about 1.5 x extent of the image side)."""
    return _broken(scene, rng, extent, contrast, grow=0.75 + 0.5 * contrast)


def broken_small(scene: BottleScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A small nick in the lip (about half of extent along the ring)."""
    return _broken(scene, rng, extent, contrast, grow=0.25)


def contamination(scene: BottleScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A foreign blob on the inner ring: dark dirt, pale lint or a rust-coloured speck."""
    size = scene.rn.shape[0]
    half = max(1.5, 0.5 * extent * size)
    rn0 = rng.uniform(0.2, LIP[1])
    aspect = rng.uniform(0.4, 1.0)
    window, distance = _blob(rng, scene, rn0, rng.uniform(-math.pi, math.pi), half, half * aspect)
    alpha = coverage(distance, 0.0)
    kind = int(rng.integers(3))
    colour = np.array([[0.06, 0.06, 0.05], [0.78, 0.76, 0.70], [0.55, 0.25, 0.10]][kind], dtype=np.float32)
    texture = colour * (1.0 + 0.25 * scene.grain[window][..., None])
    # Dirt on the pale lip must be dark, on the dark mouth pale, so contrast stays meaningful.
    if kind == 0 and rn0 < LIP[0]:
        texture = texture + 0.45
    image = scene.image.copy()
    image[window] = lerp(scene.image[window], texture, alpha * (0.15 + 0.85 * contrast))
    return np.clip(image, 0, 1)


DEFECTS = {"broken_large": broken_large, "broken_small": broken_small, "contamination": contamination}
