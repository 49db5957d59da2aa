"""Synthetic `capsule`: a horizontal two-tone hard gelatin capsule on a light background, and its defects.

Normal look: plain off-white background with a faint soft shadow below the part; a stadium-shaped
capsule, the left half (cap, a hair wider) glossy black and the right half (body) orange, a thin seam
where they meet, cylinder shading with a bright specular streak along the top, and a small "500"
printed in off-white on the black half. Small pose changes (a few pixels, a couple of degrees),
slight lighting and colour changes, print texture.
Defects re-render the same capsule with an edit: crack (a thin jagged line, dark on orange and pale
on black), faulty_imprint (part of the print missing or smeared), poke (a small dent: dark pit with
a lit rim), scratch (a long thin pale line), squeeze (one side of the outline pinched inward).

Speed: every field is computed per channel on 2-D arrays (broadcasting over a trailing colour axis is
several times slower), and defects redraw only a window around the edit (window.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import PosedScene, coverage, irregular_blob, lerp, polyline_distance
from moleflow.synth.window import (FULL, Window, box, dent, grid, jagged_path, noise, pasted, pose, rgb,
                                            stroke_distance, to_image, window)

RADIUS = 0.125  # capsule radius as a fraction of the image side
HALF_AXIS = 0.285  # half length of the straight part
JOIN_X = -0.03  # object x (fraction) where the black cap meets the orange body
BODY_RATIO = 0.965  # the body is slightly narrower: the cap slides over it
PRINT_CENTRE = (0.012, -0.2)  # (y, x) of the "500"
GLYPH = (0.066, 0.04, 0.054)  # glyph height, width and advance
# "5" as one stroke in glyph units ((y, x), y down): top bar, stem, bowl.
FIVE = np.array([[0.0, 0.92], [0.0, 0.1], [-0.02, 0.05], [0.46, 0.05], [0.37, 0.4], [0.42, 0.75], [0.6, 0.96],
                 [0.82, 0.92], [0.97, 0.62], [1.0, 0.35], [0.9, 0.05]], dtype=np.float32)
BACKGROUND_TINT = (1.0, 0.995, 0.975)
PRINT_COLOUR = (0.83, 0.8, 0.74)
SPECULAR = (1.0, 0.98, 0.95)


# ---- the capsule ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CapsuleScene(PosedScene):
    frame: tuple[float, float, float, float]  # the pose, for mapping object points to the image
    paper: np.ndarray  # (size, size) background brightness
    ink: np.ndarray  # (size, size) coverage of the print
    grain: np.ndarray  # fine surface noise
    cap_colour: tuple[float, float, float]
    body_colour: tuple[float, float, float]
    lighting: float
    image: np.ndarray


def _print_ink(rng: np.random.Generator, oy: np.ndarray, ox: np.ndarray, size: int) -> np.ndarray:
    """Coverage of "500": the 5 as a stroke, each 0 as an elliptic ring; computed only around the text."""
    height, width, advance = (g * size for g in GLYPH)
    cy = (PRINT_CENTRE[0] + rng.normal(0, 0.002)) * size
    cx = (PRINT_CENTRE[1] + rng.normal(0, 0.002)) * size
    rows, cols = window((np.abs(oy - cy) < 0.6 * height + 2) & (np.abs(ox - cx) < 1.5 * advance + 2))
    y, x = oy[rows, cols], ox[rows, cols]
    left = cx - advance - width / 2
    distance = polyline_distance(y, x, FIVE * np.float32([height, width]) + np.float32([cy - height / 2, left]))
    ay, ax = height / 2, width / 2
    for k in (1, 2):
        rho = np.sqrt(((y - cy) / ay) ** 2 + ((x - (left + k * advance + ax)) / ax) ** 2)
        distance = np.minimum(distance, np.abs(rho - 1.0) * min(ay, ax) * (0.6 + 0.4 * rho))
    ink = np.zeros(oy.shape, dtype=np.float32)
    ink[rows, cols] = coverage(distance, max(0.35, 0.0055 * size))
    return ink


def _geometry(oy: np.ndarray, ox: np.ndarray, size: int, pinch: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance to the capsule's axis, the local radius and the coverage of the capsule."""
    radius = np.float32(RADIUS * size) * (1.0 - np.float32(1.0 - BODY_RATIO) * (ox >= JOIN_X * size))
    if pinch is not None:
        radius = radius - pinch
    half_axis = HALF_AXIS * size
    dx = ox - np.clip(ox, -half_axis, half_axis)
    axis_distance = np.sqrt(oy * oy + dx * dx)
    return axis_distance, radius, np.clip(radius - axis_distance + 0.5, 0, 1)


def _compose(scene: CapsuleScene, win: Window, pinch: np.ndarray | None = None,
             ink: np.ndarray | None = None) -> np.ndarray:
    """The capsule inside window `win`, optionally with a pinched outline or an edited print."""
    size = scene.oy.shape[0]
    oy, ox = scene.oy[win], scene.ox[win]
    ink = scene.ink[win] if ink is None else ink
    axis_distance, radius, inside = _geometry(oy, ox, size, pinch)
    # Soft, short shadow below the part (light from above): the silhouette's distance, moved down, as a ramp.
    shadow_distance, shadow_radius, _ = _geometry(oy - np.float32(0.012 * size), ox, size, pinch)
    paper = scene.paper[win] * (1 - 0.22 * np.clip((shadow_radius - shadow_distance) / (0.02 * size + 1) + 0.5, 0, 1))
    across = np.minimum(axis_distance / radius, 1)
    signed = np.clip(oy / radius, -1, 1)
    diffuse = (0.3 + 0.7 * (1.0 - across * across) ** 0.35) * (1.0 - 0.18 * signed)
    taper = np.clip((HALF_AXIS * size + 0.55 * RADIUS * size - np.abs(ox)) / (0.35 * RADIUS * size), 0, 1)
    highlight = taper * (0.62 * np.exp(-(((signed + 0.5) / 0.12) ** 2))  # the glossy streak along the top
                         + 0.05 * np.exp(-(((signed - 0.55) / 0.25) ** 2)))  # reflected light along the bottom
    if pinch is not None:  # a crease: the pinched wall turns away from the light, the axis does not
        diffuse = diffuse * (1.0 - 4.0 * pinch / (RADIUS * size) * signed * signed)
    join = JOIN_X * size
    to_body = np.clip(ox - join + 0.5, 0, 1)
    seam = np.exp(-(((ox - join) / (0.004 * size + 0.4)) ** 2))
    shade = diffuse * (1.0 + 0.012 * scene.grain[win]) * (1.0 - 0.4 * seam)
    printed = 0.55 + 0.45 * diffuse
    channels = []
    for c in range(3):
        surface = (scene.cap_colour[c] + (scene.body_colour[c] - scene.cap_colour[c]) * to_body) * shade
        surface = lerp(surface + SPECULAR[c] * highlight, PRINT_COLOUR[c] * printed, ink)
        channels.append(lerp(paper * BACKGROUND_TINT[c], surface, inside))
    return rgb(channels, scene.lighting)


def render_capsule(rng: np.random.Generator, size: int) -> CapsuleScene:
    scale = size / 256
    oy, ox, frame = pose(rng, size, shift=3, degrees=2)
    y = np.arange(size, dtype=np.float32)[:, None] / size - 0.5
    x = np.arange(size, dtype=np.float32)[None, :] / size - 0.5
    gradient = rng.normal(0, 0.03, 2).astype(np.float32)
    smooth = noise(rng, size, 12 * scale + 1)
    grain = (rng.random((size, size), dtype=np.float32) - 0.5) * 3.4  # ~unit variance
    paper = (0.86 + 0.005 * smooth + 0.005 * grain) * (1.0 + gradient[0] * y + gradient[1] * x)
    ink = _print_ink(rng, oy, ox, size)
    # Printing is never perfectly even: the ink thins in places.
    ink = ink * np.clip(0.85 + 0.2 * smooth + 0.06 * grain, 0.4, 1.0)
    cap = 0.075 * rng.uniform(0.9, 1.1)
    scene = CapsuleScene(
        oy=oy, ox=ox, frame=frame, paper=paper.astype(np.float32), ink=ink.astype(np.float32), grain=grain,
        cap_colour=(cap, cap * 0.93, cap * 0.93),
        body_colour=tuple(float(v) for v in np.array([0.86, 0.45, 0.13]) * rng.uniform(0.96, 1.04, 3)),
        lighting=float(rng.uniform(0.96, 1.04)), image=np.empty(0),
    )
    return replace(scene, image=_compose(scene, FULL))


def _surface_point(scene: CapsuleScene, rng: np.random.Generator, spread: float = 0.55) -> np.ndarray:
    """An image (row, col) point on the capsule's face (away from the outline)."""
    size = scene.oy.shape[0]
    point = np.array([[rng.uniform(-spread, spread) * RADIUS, rng.uniform(-1, 1) * (HALF_AXIS + 0.3 * RADIUS)]])
    return to_image(scene.frame, point * size)[0]


def _on_surface(scene: CapsuleScene, win: Window, alpha: np.ndarray) -> np.ndarray:
    """Restrict a defect's alpha to the capsule, a pixel inside its outline."""
    axis_distance, radius, _ = _geometry(scene.oy[win], scene.ox[win], scene.oy.shape[0])
    return alpha * np.clip(radius - axis_distance - 0.5, 0, 1)


def _line(scene: CapsuleScene, path: np.ndarray, half_width: float) -> tuple[Window, np.ndarray]:
    win = box(path, half_width + 2, scene.oy.shape[0])
    return win, _on_surface(scene, win, coverage(stroke_distance(*grid(win), path), half_width))


def crack(scene: CapsuleScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A thin jagged crack; dark on the orange half, pale on the black one."""
    size = scene.oy.shape[0]
    path = jagged_path(rng, _surface_point(scene, rng), max(4.0, 2.2 * extent * size), kinks=7, wobble=0.7)
    win, alpha = _line(scene, path, max(0.35, (0.35 + 0.7 * contrast) * size / 256))
    patch = scene.image[win]
    pale = np.clip(1.0 - 4.0 * (patch @ np.float32([0.3, 0.59, 0.11])), 0, 1)[..., None]  # 1 on black
    target = patch + contrast * (0.5 * pale - 0.85 * patch * (1 - pale))
    return pasted(scene.image, win, np.clip(lerp(patch, target, alpha), 0, 1))


def scratch(scene: CapsuleScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A long, nearly straight thin scratch that catches the light."""
    size = scene.oy.shape[0]
    path = jagged_path(rng, _surface_point(scene, rng), max(5.0, 2.5 * extent * size), kinks=2, wobble=0.12)
    win, alpha = _line(scene, path, max(0.3, 0.45 * size / 256))
    patch = scene.image[win]
    return pasted(scene.image, win, np.clip(lerp(patch, patch + (0.2 + 0.45 * contrast) * (0.9 - patch), alpha), 0, 1))


def poke(scene: CapsuleScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A small dent: a dark pit whose lower-right wall catches the light."""
    size = scene.oy.shape[0]
    radius = max(1.0, 0.45 * extent * size)
    centre = _surface_point(scene, rng, 0.5)
    win = box(centre, 2.2 * radius + 2, size)
    depth, rim = dent(*grid(win), tuple(centre), radius)
    depth, rim = _on_surface(scene, win, depth)[..., None], _on_surface(scene, win, rim)[..., None]
    patch = scene.image[win] * (1.0 - 0.7 * contrast * depth)
    patch = patch + 0.5 * contrast * rim * (0.9 - patch)
    return pasted(scene.image, win, np.clip(patch, 0, 1))


def squeeze(scene: CapsuleScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """One side of the outline pressed inward over a stretch, with the crease shading that goes with it."""
    size = scene.oy.shape[0]
    radius = RADIUS * size
    centre_x = rng.uniform(-0.75, 0.75) * HALF_AXIS * size
    width = max(2.0, 1.1 * extent * size)
    depth = min(0.5 * radius, max(1.2, extent * size * (0.2 + 0.6 * contrast)))
    side = 1.0 if rng.random() < 0.5 else -1.0
    win = window((np.abs(scene.ox - centre_x) < 2.2 * width) & (scene.oy * side > -1))
    bump = np.exp(-(((scene.ox[win] - centre_x) / width) ** 2))
    pinch = (depth * bump * ((scene.oy[win] * side > 0) & (bump > 0.01))).astype(np.float32)
    return pasted(scene.image, win, _compose(scene, win, pinch=pinch))


def faulty_imprint(scene: CapsuleScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """Part of the "500" missing (rubbed off) or smeared sideways."""
    size = scene.oy.shape[0]
    inked = np.flatnonzero(scene.ink.ravel() > 0.5)
    if not len(inked):
        return scene.image
    centre = np.array(divmod(int(inked[rng.integers(len(inked))]), size), dtype=np.float64)
    radius = max(1.5, 0.35 * extent * size)
    win = box(centre, 2 * radius + 2, size)
    blob = irregular_blob(rng, *grid(win), tuple(centre), radius)
    strength = 0.35 + 0.65 * contrast
    if rng.random() < 0.5:
        ink = scene.ink[win] * (1.0 - strength * blob)
    else:
        sigma = 0.4 * radius + 0.5
        wide = box(centre, 2 * radius + 2 + 4 * sigma, size)
        smear = np.clip(1.6 * ndimage.gaussian_filter1d(scene.ink[wide], sigma, axis=1), 0, 1)
        smear = smear[win[0].start - wide[0].start:, win[1].start - wide[1].start:][: blob.shape[0], : blob.shape[1]]
        ink = lerp(scene.ink[win], np.maximum(scene.ink[win] * 0.6, smear), strength * blob)
    return pasted(scene.image, win, _compose(scene, win, ink=ink.astype(np.float32)))


DEFECTS = {"crack": crack, "faulty_imprint": faulty_imprint, "poke": poke, "scratch": scratch, "squeeze": squeeze}
