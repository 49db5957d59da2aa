"""Synthetic `pill`: a white oval tablet with red speckles on a dark background, and its defects.

Normal look: near-black background; a horizontal oval tablet seen from above, cream-white, domed
(brighter face, a darker bevelled rim), a broad soft gloss towards the upper left, a few hundred
small red-brown speckles scattered over it, and a faint pressed "FF" in the middle. Small pose
changes (a few pixels, a couple of degrees), lighting, speckle layout and tint vary.
Defects re-render the same tablet with an edit: color (a tinted stain that keeps the speckles),
contamination (an opaque foreign blob), crack (a dark jagged line with a shadowed lip), faulty_imprint
(part of the "FF" filled in or missing), scratch (a thin grey line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import PosedScene, coverage, irregular_blob, lerp, polyline_distance
from moleflow.synth.window import (FULL, Window, box, grid, jagged_path, noise, pasted, pose, rgb,
                                            stroke_distance, to_image, window)

SEMI_AXES = (0.2, 0.38)  # (y, x) half sizes of the tablet as fractions of the image side
SHAPE_POWER = 2.5  # superellipse exponent: real tablets are oblong with flattened long sides
LETTER = (0.085, 0.05, 0.07)  # height, width and advance of each F
F_STROKES = (np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.9]], dtype=np.float32),  # stem and top bar, (y, x)
             np.array([[0.48, 0.0], [0.48, 0.7]], dtype=np.float32))
SPECKLES = 260
SPECKLE_COLOUR = (0.68, 0.24, 0.18)


@dataclass(frozen=True)
class PillScene(PosedScene):
    frame: tuple[float, float, float, float]  # the pose, for mapping object points to the image
    background: np.ndarray  # (size, size) brightness
    speckles: np.ndarray  # (size, size) coverage of the red speckles
    imprint: np.ndarray  # (size, size) depth of the pressed letters, 0..1
    grain: np.ndarray
    colour: tuple[float, float, float]  # tablet colour
    lighting: float
    image: np.ndarray


def _radial(oy: np.ndarray, ox: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised superelliptic radius (1 on the outline) and the approximate distance to the outline in pixels."""
    ay, ax = SEMI_AXES[0] * size, SEMI_AXES[1] * size
    uy, ux = np.abs(oy) * np.float32(1 / ay) + 1e-6, np.abs(ox) * np.float32(1 / ax) + 1e-6
    ty, tx = uy**SHAPE_POWER, ux**SHAPE_POWER
    rho = (ty + tx) ** (1.0 / SHAPE_POWER)
    gy, gx = ty / (uy * ay), tx / (ux * ax)
    gradient = np.sqrt(gy * gy + gx * gx) * rho ** (1.0 - SHAPE_POWER)
    return rho, (rho - 1.0) / np.maximum(gradient, 1e-6)


def _imprint(oy: np.ndarray, ox: np.ndarray, size: int) -> np.ndarray:
    """Depth of the pressed "FF": a groove with sloped walls, drawn only around the letters."""
    height, width, advance = (v * size for v in LETTER)
    rows, cols = window((np.abs(oy) < 0.6 * height + 2) & (np.abs(ox) < advance + width + 2))
    y, x = oy[rows, cols], ox[rows, cols]
    distance = np.full(y.shape, np.inf, dtype=np.float32)
    for k in (0, 1):
        origin = np.float32([-height / 2, -advance / 2 - width / 2 + k * advance + 0.1 * width])
        for stroke in F_STROKES:
            distance = np.minimum(distance, polyline_distance(y, x, stroke * np.float32([height, width]) + origin))
    depth = np.zeros(oy.shape, dtype=np.float32)
    depth[rows, cols] = coverage(distance, max(0.4, 0.008 * size)) * np.clip(1.2 - distance / (0.02 * size + 1), 0, 1)
    return depth


def _relief(imprint: np.ndarray, size: int) -> np.ndarray:
    """Shading factor of the pressed letters: a shadowed groove with a lit lower-right wall."""
    step = max(1, round(0.005 * size))
    lit = np.zeros_like(imprint)
    lit[step:, step:] = imprint[:-step, :-step]
    return 1.0 - 0.16 * imprint + 0.06 * np.clip(imprint - lit, 0, 1)


def _speckles(rng: np.random.Generator, frame: tuple, size: int) -> np.ndarray:
    """Coverage of small red speckles scattered over the tablet's face (splatted, then blurred into dots)."""
    r = np.sqrt(rng.uniform(0, 0.93, SPECKLES))
    theta = rng.uniform(0, 2 * math.pi, SPECKLES)
    points = to_image(frame, np.stack([r * np.sin(theta) * SEMI_AXES[0], r * np.cos(theta) * SEMI_AXES[1]], 1) * size)
    sigma = 0.5 * size / 256 + 0.25
    win = box(points, 4 * sigma + 2, size)
    rows = np.clip(np.rint(points[:, 0]), 0, size - 1).astype(int) - win[0].start
    cols = np.clip(np.rint(points[:, 1]), 0, size - 1).astype(int) - win[1].start
    splat = np.zeros((win[0].stop - win[0].start, win[1].stop - win[1].start), dtype=np.float32)
    np.add.at(splat, (rows, cols), rng.uniform(0.5, 1.6, SPECKLES).astype(np.float32))
    speckles = np.zeros((size, size), dtype=np.float32)
    speckles[win] = np.clip(1.3 * (2 * math.pi * sigma * sigma) * ndimage.gaussian_filter(splat, sigma), 0, 1)
    return speckles


def _compose(scene: PillScene, win: Window, stain: tuple[np.ndarray, np.ndarray] | None = None,
             relief: np.ndarray | None = None) -> np.ndarray:
    """The tablet inside window `win`, optionally with a stain (tint, alpha) or edited imprint relief."""
    size = scene.oy.shape[0]
    oy, ox = scene.oy[win], scene.ox[win]
    rho, distance = _radial(oy, ox, size)
    inside = coverage(distance, 0)
    # Domed face, then a bevel that falls off towards the outline; lit from the upper left.
    bevel = np.clip((rho - 0.84) / 0.16, 0, 1)
    shade = (0.97 - 0.06 * rho * rho - 0.32 * bevel**1.5) * (1.0 - 0.05 * (oy + ox) / (SEMI_AXES[1] * size))
    gy, gx = (oy / (SEMI_AXES[0] * size) + 0.45) / 0.35, (ox / (SEMI_AXES[1] * size) + 0.3) / 0.45
    gloss = 0.07 * np.exp(-(gy * gy + gx * gx))
    shade = shade * (_relief(scene.imprint[win], size) if relief is None else relief)
    speckle_shade = 0.6 + 0.4 * shade
    speckles = scene.speckles[win] * (1.0 - 0.5 * bevel)
    shade = shade * (1.0 + 0.01 * scene.grain[win])
    channels = []
    for c in range(3):
        surface = lerp(scene.colour[c] * shade + gloss, SPECKLE_COLOUR[c] * speckle_shade, speckles)
        if stain is not None:
            surface = lerp(surface, surface * stain[0][c], stain[1])
        channels.append(lerp(scene.background[win], surface, inside))
    return rgb(channels, scene.lighting)


def render_pill(rng: np.random.Generator, size: int) -> PillScene:
    oy, ox, frame = pose(rng, size, shift=3, degrees=2)
    grain = (rng.random((size, size), dtype=np.float32) - 0.5) * 3.4  # ~unit variance
    dark = 0.11 + 0.01 * noise(rng, size, 20 * size / 256 + 1) + 0.006 * grain
    scene = PillScene(
        oy=oy, ox=ox, frame=frame, background=(dark * np.float32(1.01)).astype(np.float32),
        speckles=_speckles(rng, frame, size), imprint=_imprint(oy, ox, size), grain=grain,
        colour=tuple(float(v) for v in np.array([0.93, 0.9, 0.84]) + rng.normal(0, 0.01, 3)),
        lighting=float(rng.uniform(0.95, 1.04)), image=np.empty(0),
    )
    return replace(scene, image=_compose(scene, FULL))


def _face_point(scene: PillScene, rng: np.random.Generator, reach: float = 0.7) -> np.ndarray:
    """An image (row, col) point on the tablet's face."""
    size = scene.oy.shape[0]
    r, theta = reach * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    point = np.array([[r * math.sin(theta) * SEMI_AXES[0], r * math.cos(theta) * SEMI_AXES[1]]]) * size
    return to_image(scene.frame, point)[0]


def _on_face(scene: PillScene, win: Window, alpha: np.ndarray) -> np.ndarray:
    """Restrict a defect's alpha to the tablet, a pixel inside its outline."""
    return alpha * coverage(_radial(scene.oy[win], scene.ox[win], scene.oy.shape[0])[1] + 1.0, 0)


def _blob(scene: PillScene, rng: np.random.Generator, extent: float, scale: float) -> tuple[Window, np.ndarray, tuple]:
    centre = tuple(_face_point(scene, rng))
    radius = max(1.5, scale * extent * scene.oy.shape[0])
    win = box(np.array(centre), 2 * radius + 2, scene.oy.shape[0])
    return win, irregular_blob(rng, *grid(win), centre, radius), centre


def color(scene: PillScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A stain that tints the face (speckles included): yellowish, brownish, pink or bluish."""
    win, alpha, _ = _blob(scene, rng, extent, 0.5)
    hue = np.float32([[1.0, 0.85, 0.4], [0.8, 0.6, 0.45], [1.0, 0.62, 0.72], [0.7, 0.8, 1.0]])[rng.integers(4)]
    tint = 1.0 + (0.25 + 0.75 * contrast) * (hue - 1.0)
    return pasted(scene.image, win, _compose(scene, win, stain=(tint.tolist(), _on_face(scene, win, alpha))))


def contamination(scene: PillScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A foreign particle lying on the tablet: an opaque brown-to-black blob, darker at its core."""
    win, alpha, centre = _blob(scene, rng, extent, 0.4)
    y, x = grid(win)
    radius = max(1.5, 0.4 * extent * scene.oy.shape[0])
    core = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (radius * radius))
    target = (np.float32([0.42, 0.3, 0.2]) * rng.uniform(0.4, 1.0)) * (1.0 - 0.4 * core)[..., None]
    patch = lerp(scene.image[win], target, alpha * (0.35 + 0.65 * contrast))
    return pasted(scene.image, win, np.clip(patch, 0, 1))


def crack(scene: PillScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A broken line across the face: a dark fissure with a thin shadowed lip."""
    size = scene.oy.shape[0]
    path = jagged_path(rng, _face_point(scene, rng, 0.6), max(5.0, 2.5 * extent * size), kinks=7, wobble=0.5)
    half_width = max(0.4, (0.4 + 0.8 * contrast) * size / 256)
    win = box(path, half_width + max(1.0, size / 256) + 2, size)
    distance = stroke_distance(*grid(win), path)
    gap = _on_face(scene, win, coverage(distance, half_width))
    lip = _on_face(scene, win, coverage(distance, half_width + max(1.0, size / 256))) - gap
    patch = lerp(scene.image[win], scene.image[win] * (1.0 - 0.8 * contrast), gap)
    return pasted(scene.image, win, np.clip(lerp(patch, patch * (1.0 - 0.25 * contrast), lip), 0, 1))


def scratch(scene: PillScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A long thin grey scratch, nearly straight."""
    size = scene.oy.shape[0]
    path = jagged_path(rng, _face_point(scene, rng), max(5.0, 3.0 * extent * size), kinks=2, wobble=0.15)
    half_width = max(0.4, 0.8 * size / 256)
    win = box(path, half_width + 2, size)
    alpha = _on_face(scene, win, coverage(stroke_distance(*grid(win), path), half_width))
    patch = scene.image[win]
    return pasted(scene.image, win, np.clip(lerp(patch, patch * (1.0 - 0.6 * contrast) + 0.03, alpha), 0, 1))


def faulty_imprint(scene: PillScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """Part of the "FF" filled in (the groove gone) or pressed too deep and smudged."""
    size = scene.oy.shape[0]
    pressed = np.flatnonzero(scene.imprint.ravel() > 0.5)
    centre = np.array(divmod(int(pressed[rng.integers(len(pressed))]), size), dtype=np.float64)
    radius = max(1.5, 0.35 * extent * size)
    sigma = 0.3 * radius + 0.5
    # The edit reaches ~2 radii; the smudge and the relief's lit wall read a few pixels beyond it.
    win = box(centre, 2 * radius + 2 + max(1, round(0.005 * size)), size)
    wide = box(centre, 2 * radius + 4 + 4 * sigma + max(1, round(0.005 * size)), size)
    inner = (slice(win[0].start - wide[0].start, win[0].stop - wide[0].start),
             slice(win[1].start - wide[1].start, win[1].stop - wide[1].start))
    y, x = grid(wide)
    blob = irregular_blob(rng, y, x, tuple(centre), radius)
    strength = 0.4 + 0.6 * contrast
    imprint = scene.imprint[wide]
    if rng.random() < 0.5:
        edited = imprint * (1.0 - strength * blob)
    else:
        smudge = np.clip(2.0 * ndimage.gaussian_filter(imprint, sigma), 0, 1.6)
        edited = lerp(imprint, smudge * (1.0 + contrast), strength * blob)
    relief = _relief(edited.astype(np.float32), size)[inner]
    return pasted(scene.image, win, _compose(scene, win, relief=relief))


DEFECTS = {"color": color, "contamination": contamination, "crack": crack, "faulty_imprint": faulty_imprint,
           "scratch": scratch}
