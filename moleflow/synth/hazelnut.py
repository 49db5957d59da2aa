"""Synthetic `hazelnut`: one brown hazelnut on a near-black background, and its defects.

Normal look: a roughly round nut, pointed at its tip, lit softly from above (dome shading with a broad
highlight); glossy brown shell with fine darker stripes that run from the base to the tip as meridians do,
converging on the tip; a lighter, matte, rough greyish-tan cap at the base with a ragged edge. Any
rotation (the nuts lie at random angles, as in MVTec), a small shift, and small changes of size, shape,
colour, stripe pattern and lighting.
Defects edit the rendered nut in place, always on the shell: crack (a thin dark jagged line),
cut (a straight slice through the shell exposing the pale kernel, with a dark rim), hole (a dark
round bore with a worn lighter rim), print (a few dark printed glyphs, like a stamp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moleflow.synth.draw import (
    coverage,
    lerp,
    pixel_grid,
    polyline_distance,
    segment_distance,
    smooth_noise,
)
from moleflow.synth.window import fine_grain, pasted, rotate, square

SHELL = np.array([0.50, 0.30, 0.15], dtype=np.float32)
CAP = np.array([0.54, 0.45, 0.35], dtype=np.float32)
KERNEL = np.array([0.86, 0.74, 0.54], dtype=np.float32)


@dataclass(frozen=True)
class HazelnutScene:
    u: np.ndarray  # object frame: pixels along the base->tip axis from the nut centre
    v: np.ndarray  # pixels across it
    nut: np.ndarray  # anti-aliased coverage of the nut
    shade: np.ndarray  # dome shading of the nut's surface
    grain: np.ndarray  # unit-std fine noise (kernel fibres, ink texture)
    centre: tuple[float, float]  # (y, x) pixels
    angle: float  # direction of the tip, radians
    radius: float  # mean nut radius in pixels
    image: np.ndarray


def _outline_table(rng: np.random.Generator, n: int) -> np.ndarray:
    """Outline radius (in nut radii) as a function of the angle from the tip, sampled at n angles."""
    phi = np.linspace(-math.pi, math.pi, n, dtype=np.float32)
    # Round body, a cusp at the tip (phi = 0), a few gentle lobes so no two nuts match.
    outline = 1.0 + rng.uniform(0.14, 0.22) * np.exp(-np.abs(phi) / 0.22) + rng.uniform(-0.05, 0.02) * np.cos(2 * phi)
    for k in (2, 3, 4):
        outline = outline + rng.uniform(0.0, 0.025) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    return outline.astype(np.float32)


def render_hazelnut(rng: np.random.Generator, size: int) -> HazelnutScene:
    scale = size / 256
    y, x = pixel_grid(size)
    centre = (float((size - 1) / 2 + rng.uniform(-6, 6) * scale), float((size - 1) / 2 + rng.uniform(-6, 6) * scale))
    angle = float(rng.uniform(0, 2 * math.pi))
    dy, dx = y - centre[0], x - centre[1]
    v, u = rotate(dy, dx, angle)
    radius = float(0.3 * size * rng.uniform(0.95, 1.05))
    n_outline = 4 * size
    outline_table = _outline_table(rng, n_outline)
    box = square(size, centre[0], centre[1], 1.34 * radius)  # everything on the nut happens in here
    bu, bv = u[box], v[box]
    shape = bu.shape

    phi_index = ((np.arctan2(bv, bu) + math.pi) * ((n_outline - 1) / (2 * math.pi)) + 0.5).astype(np.int32)
    outline_px = outline_table[phi_index] * radius
    rho = np.hypot(bu, bv) / outline_px
    nut = coverage((rho - 1.0) * outline_px, 0.0)

    # Meridians: on a sphere with poles at base and tip, seen side-on, v / sqrt(1 - u^2) is the sine
    # of the longitude; stripes are evenly spaced in longitude and slightly wavy.
    un, vn = bu / outline_px, bv / outline_px
    longitude = np.arcsin(np.clip(vn / np.sqrt(np.maximum(1.0 - un * un, 0.02)), -1, 1))
    wave = smooth_noise(rng, shape, 6 * scale + 0.5)
    stripes = 0.5 + 0.5 * np.cos(float(rng.uniform(16, 24)) * longitude + float(rng.uniform(0, 2 * math.pi)) + 0.5 * wave)
    mottle = smooth_noise(rng, shape, 12 * scale + 0.5)
    grain = fine_grain(rng, shape)
    albedo = SHELL * rng.uniform(0.9, 1.1, 3).astype(np.float32) * np.float32(rng.uniform(0.9, 1.08))
    stripes2 = stripes * stripes
    tip_dark = 1.0 - 0.3 * np.clip((un - 0.75) / 0.4, 0, 1)  # the tip is darker and drier
    darkening = (1.0 - 0.32 * stripes2 * stripes2 - 0.06 * mottle + 0.03 * grain) * tip_dark

    # Base cap: matte and rough, its edge ragged.
    edge = float(rng.uniform(-0.6, -0.42)) + 0.06 * wave
    cap = coverage((un - edge) * radius, 0.0)
    cap_gain = np.float32(rng.uniform(0.92, 1.08)) * (1.0 + 0.1 * grain + 0.08 * wave)

    z = np.sqrt(np.clip(1.0 - rho * rho, 0, 1))
    hy, hx = (float(h) * radius for h in rng.uniform(-0.35, -0.15, 2))
    highlight = np.exp(((dy[box] - hy) ** 2 + (dx[box] - hx) ** 2) * (-0.5 / (0.35 * radius) ** 2)) * (1 - 0.7 * cap)
    shade = (0.35 + 0.75 * z**0.6) * np.float32(rng.uniform(0.93, 1.07))
    # Shell and cap blended per channel in one go: colour = shade * (shell (1 - cap) + cap colour cap).
    shell_weight = darkening * (1 - cap) * shade
    cap_weight = cap_gain * cap * shade
    nut_colour = shell_weight[..., None] * albedo + cap_weight[..., None] * CAP + (0.13 * highlight)[..., None]

    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = (0.035 + 0.012 * (rng.random((size, size), dtype=np.float32) - 0.5))[..., None]
    image[box] = lerp(image[box], nut_colour, nut)
    full = np.zeros((3, size, size), dtype=np.float32)
    for field, crop in zip(full, (nut, shade, grain)):
        field[box] = crop
    return HazelnutScene(u, v, full[0], full[1], full[2], centre, angle, radius, np.clip(image, 0, 1))


def _spot(rng: np.random.Generator, scene: HazelnutScene, reach: float) -> tuple[float, float]:
    """A random (u, v) point on the shell, far enough inside the outline to fit something `reach` px long."""
    limit = max(0.0, 0.8 - reach / scene.radius)
    r = limit * math.sqrt(rng.random())
    a = rng.uniform(0, 2 * math.pi)
    return r * scene.radius * math.cos(a), r * scene.radius * math.sin(a)


def _around(scene: HazelnutScene, cu: float, cv: float, reach: float) -> tuple[slice, slice]:
    """The image window within `reach` pixels of the object-frame point (cu, cv)."""
    cos, sin = math.cos(scene.angle), math.sin(scene.angle)
    cy, cx = scene.centre[0] + sin * cu + cos * cv, scene.centre[1] + cos * cu - sin * cv
    return square(scene.u.shape[0], cy, cx, reach)


def _on_nut(nut: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Keep an alpha on the nut (a defect drawn near the outline must not spill onto the background)."""
    return alpha * np.clip(nut * 1.5 - 0.5, 0, 1)


def crack(scene: HazelnutScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A thin, dark, jagged crack; extent sets its length, contrast its width and darkness."""
    size = scene.u.shape[0]
    length = max(4.0, 2.0 * extent * size)
    start = np.array(_spot(rng, scene, length / 2))
    heading = rng.uniform(0, 2 * math.pi)
    points = [start - 0.5 * length * np.array([math.cos(heading), math.sin(heading)])]
    kinks = 7
    for _ in range(kinks):
        turn = heading + rng.normal(0, 0.7)  # jagged: each step turns a lot, the overall course does not
        points.append(points[-1] + length / kinks * np.array([math.cos(turn), math.sin(turn)]))
    half_width = max(0.35, (0.25 + 1.0 * contrast) * size / 256)
    lip_width = half_width + max(0.8, size / 256)
    window = _around(scene, *start, length + lip_width)
    distance = polyline_distance(scene.u[window], scene.v[window], np.array(points, dtype=np.float32))
    nut, patch = scene.nut[window], scene.image[window]
    core = _on_nut(nut, coverage(distance, half_width))
    lips = _on_nut(nut, coverage(distance, lip_width)) - core
    image = lerp(patch, patch * (1.0 - 0.85 * contrast), core)
    return pasted(scene.image, window, np.clip(lerp(image, patch * (1.0 + 0.3 * contrast), lips * 0.6), 0, 1))


def cut(scene: HazelnutScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A straight slice through the shell: an elongated pale kernel patch with a dark rim."""
    size = scene.u.shape[0]
    half_length = max(1.5, 0.8 * extent * size)
    half_width = max(1.0, half_length * rng.uniform(0.18, 0.32))
    cu, cv = _spot(rng, scene, half_length)
    heading = rng.uniform(0, math.pi)
    rim_width = max(0.8, 1.2 * size / 256)
    window = _around(scene, cu, cv, half_length + rim_width + 1)
    u, v = scene.u[window] - cu, scene.v[window] - cv
    along = u * math.cos(heading) + v * math.sin(heading)
    across = v * math.cos(heading) - u * math.sin(heading)
    # A long thin ellipse: a blade's slice is widest in the middle and tapers to both ends.
    distance = (np.hypot(along * (1 / half_length), across * (1 / half_width)) - 1.0) * half_width
    nut, patch = scene.nut[window], scene.image[window]
    face = _on_nut(nut, coverage(distance, 0.0))
    rim = _on_nut(nut, coverage(distance, rim_width)) - face
    # The kernel, shaded like the shell so it sits on the nut's surface.
    kernel = KERNEL * ((1.0 + 0.08 * scene.grain[window]) * scene.shade[window])[..., None]
    strength = 0.3 + 0.7 * contrast
    image = lerp(patch, kernel, face * strength)
    return pasted(scene.image, window, np.clip(lerp(image, patch * 0.45, rim * strength), 0, 1))


def hole(scene: HazelnutScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A round bore (a weevil's exit hole): dark inside, a worn lighter ring around it."""
    size = scene.u.shape[0]
    r = max(1.0, 0.5 * extent * size * rng.uniform(0.6, 1.0))
    cu, cv = _spot(rng, scene, r)
    ring_r = r + max(0.8, 0.35 * r)
    window = _around(scene, cu, cv, ring_r + 1)
    distance = np.hypot(scene.u[window] - cu, scene.v[window] - cv)
    nut, patch = scene.nut[window], scene.image[window]
    bore = _on_nut(nut, coverage(distance, r))
    ring = _on_nut(nut, coverage(distance, ring_r)) - bore
    depth = np.clip(1 - distance / r, 0, 1)  # darker towards the middle, the wall catches some light
    inside = np.array([0.12, 0.07, 0.035], np.float32) * (1.0 - 0.6 * depth)[..., None]
    strength = 0.35 + 0.65 * contrast
    image = lerp(patch, np.minimum(1.0, patch * 1.35 + 0.04), ring * strength)
    return pasted(scene.image, window, np.clip(lerp(image, inside, bore * strength), 0, 1))


def print_(scene: HazelnutScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A few printed glyphs in a row (ink stamped on the shell); extent sets the row's length."""
    size = scene.u.shape[0]
    n_glyphs = int(rng.integers(2, 5))
    length = max(4.0, 2.0 * extent * size)
    glyph = length / n_glyphs
    cu, cv = _spot(rng, scene, length / 2)
    heading = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(heading), math.sin(heading)
    window = _around(scene, cu, cv, length / 2 + glyph + 2)
    # Text frame (a along the row, b across it), so each glyph is a few strokes in its own box.
    u, v = scene.u[window] - cu, scene.v[window] - cv
    a, b = u * cos + v * sin, v * cos - u * sin
    distance = np.full(a.shape, np.inf, dtype=np.float32)
    for g in range(n_glyphs):
        left = -length / 2 + g * glyph + 0.12 * glyph
        corners = rng.uniform(0, 1, (int(rng.integers(2, 4)), 2, 2)) * [0.76 * glyph, 1.3 * glyph]
        for (a0, b0), (a1, b1) in corners:
            start, end = (left + a0, b0 - 0.65 * glyph), (left + a1, b1 - 0.65 * glyph)
            distance = np.minimum(distance, segment_distance(a, b, start, end))
    stroke = max(0.5, 0.09 * glyph)
    ink = _on_nut(scene.nut[window], coverage(distance, stroke))
    colour = np.array([[0.05, 0.04, 0.04], [0.35, 0.03, 0.04]][int(rng.integers(2))], np.float32)
    colour = colour * (1.0 + 0.2 * scene.grain[window][..., None])
    patch = lerp(scene.image[window], colour, ink * (0.35 + 0.65 * contrast))
    return pasted(scene.image, window, np.clip(patch, 0, 1))


DEFECTS = {"crack": crack, "cut": cut, "hole": hole, "print": print_}
