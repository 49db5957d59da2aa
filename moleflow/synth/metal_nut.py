"""Synthetic `metal_nut`: a silver four-lobed nut seen from above on black, and its defects.

Normal look: black background; a round metal nut (any rotation in the plane, centre jittered by a few
pixels) with a central threaded hole and four leaning, rounded tabs (a pinwheel, so the part has a
handedness); brushed-metal shading: a bright flat face with concentric brushing, a darker chamfer
ring around it, tabs whose brightness follows their direction to the light, a thin lit rim.
Defects re-render the same nut with an edit: bent (one tab swung sideways and tilted, its outline and
shading change), color (a bluish or reddish paint patch on the metal), scratch (one to three thin
bright or dark lines), flip (the underside: mirrored tabs, dull brassy shading, no face ring; the
whole part changes, so its mask is the whole part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from moleflow.synth.draw import coverage, irregular_blob, lerp
from moleflow.synth.window import (FULL, Window, box, grid, jagged_path, noise, pasted, pose, rgb,
                                            stroke_distance, to_image)

HOLE, THREAD, BODY, TAB_OUT = 0.1, 0.135, 0.29, 0.39  # radii as fractions of the image side
TAB_START, TAB_HALF_WIDTH, TAB_CORNER, TAB_SHEAR = 0.15, 0.11, 0.04, 0.3
FILLET = 0.03  # smooth union of tabs and body
TINT = (0.97, 0.99, 1.03)  # cool silver
UNDERSIDE_TINT = (1.0, 0.9, 0.74)  # the underside is duller and brassy


@dataclass(frozen=True)
class NutScene:
    oy: np.ndarray  # object-frame coordinates (rotation applied), pixels
    ox: np.ndarray
    frame: tuple[float, float, float, float]  # the pose, for mapping object points to the image
    angle: np.ndarray  # object-frame angle of every pixel around the centre, -pi..pi
    background: np.ndarray  # (size, size) brightness
    rings: np.ndarray  # 1-D concentric brushing profile, one sample per pixel of radius
    streaks: np.ndarray  # 1-D angular brushing profile over one turn
    grain: np.ndarray
    tabs: np.ndarray  # (4, 3): angle (rad), tip radius (px), brightness gain, per tab
    light: float  # image-frame angle the light comes from, relative to the part's rotation
    lighting: float
    image: np.ndarray


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two signed distances with a rounded fillet of about k pixels."""
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - h * h * (k * 0.25)


def _tab_corners(tab: np.ndarray, size: int, mirrored: bool) -> np.ndarray:
    """Object-frame (y, x) corners of a tab's (sheared) box, for its bounding window."""
    angle, tip = float(tab[0]), float(tab[1])
    start, half = TAB_START * size, TAB_HALF_WIDTH * size
    along = np.array([start, start, tip, tip])
    across = np.array([-half, half, -half, half]) + TAB_SHEAR * (along - start)
    y = along * math.sin(angle) + across * math.cos(angle)
    x = along * math.cos(angle) - across * math.sin(angle)
    return np.stack([y, -x if mirrored else x], axis=1)


def _shape(scene: NutScene, win: Window, tabs: np.ndarray, mirrored: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distance to the part (negative inside), radius, and the tab brightness gain, inside `win`.

    Each tab's box is evaluated only in its own bounding window: most pixels are far from every tab.
    """
    size = scene.oy.shape[0]
    oy, ox = scene.oy[win], scene.ox[win]
    rows0, cols0 = win[0].start or 0, win[1].start or 0
    r = np.sqrt(oy * oy + ox * ox)
    sdf = r - np.float32(BODY * size)
    gain = np.ones_like(r)
    corner, half_width, start = TAB_CORNER * size, TAB_HALF_WIDTH * size, TAB_START * size
    for tab in tabs:
        tab_win = box(to_image(scene.frame, _tab_corners(tab, size, mirrored)), FILLET * size + 2, size)
        local = (slice(max(tab_win[0].start - rows0, 0), max(tab_win[0].stop - rows0, 0)),
                 slice(max(tab_win[1].start - cols0, 0), max(tab_win[1].stop - cols0, 0)))
        ty, tx = oy[local], (-ox[local] if mirrored else ox[local])
        if not ty.size:
            continue
        cos, sin = np.float32(math.cos(tab[0])), np.float32(math.sin(tab[0]))
        along = tx * cos + ty * sin
        # Lean: the tab's centre line drifts sideways with distance from the centre (pinwheel).
        across = ty * cos - tx * sin - np.float32(TAB_SHEAR) * (along - np.float32(start))
        half_length = 0.5 * (float(tab[1]) - start)
        qy = np.abs(along - np.float32(start + half_length)) - np.float32(half_length - corner)
        qx = np.abs(across) - np.float32(half_width - corner)
        my, mx = np.maximum(qy, 0), np.maximum(qx, 0)
        tab_sdf = np.sqrt(my * my + mx * mx) + np.minimum(np.maximum(qy, qx), 0) - np.float32(corner)
        sdf[local] = _smooth_min(sdf[local], tab_sdf, FILLET * size)
        gain[local] = np.where(tab_sdf < FILLET * size, np.float32(tab[2]), gain[local])
    return np.maximum(sdf, np.float32(HOLE * size) - r), r, gain


def _compose(scene: NutScene, win: Window, tabs: np.ndarray | None = None, flipped: bool = False) -> np.ndarray:
    """The nut inside window `win`, optionally with edited tabs or seen from the underside (mirrored)."""
    size = scene.oy.shape[0]
    tabs = scene.tabs if tabs is None else tabs
    sdf, r, gain = _shape(scene, win, tabs, flipped)
    part = coverage(sdf, 0)
    angle = scene.angle[win]
    facing = np.cos(angle - np.float32(scene.light))  # 1 where the surface tilts towards the light
    if flipped:  # the mirror image: the brushing's angle around the centre runs the other way
        angle = np.float32(math.pi) - angle - np.float32(2 * math.pi) * (angle < 0)
    rings = scene.rings[r.astype(np.intp)]
    turn = ((angle + np.float32(math.pi)) * np.float32(len(scene.streaks) / (2 * math.pi))).astype(np.intp)
    streaks = scene.streaks[np.clip(turn, 0, len(scene.streaks) - 1)]
    brushed = 0.035 * rings + 0.012 * streaks + 0.01 * scene.grain[win]
    thread_t = np.clip((r - HOLE * size) / ((THREAD - HOLE) * size), 0, 1)
    thread = 0.3 + 0.12 * np.sin(r * np.float32(2 * math.pi / (0.012 * size + 1.0))) - 0.2 * facing * (1 - thread_t)
    # Starts just outside the body's outline, so a tab's gain never touches the body's edge pixels.
    on_tab = np.clip((r - BODY * size - 0.5) / (0.01 * size + 1.0), 0, 1)
    outward = np.clip((r - BODY * size) / ((TAB_OUT - BODY) * size), 0, 1)
    if flipped:
        chamfer = np.clip(1 - np.abs(r - (THREAD + 0.03) * size) / (0.03 * size + 0.5), 0, 1)
        face = 0.44 + 0.05 * facing + 0.6 * brushed + chamfer * (0.12 + 0.12 * facing)
        tab = 0.42 + 0.06 * facing + 0.6 * brushed
    else:
        # A chamfer ring towards the body's edge faces outward: dark away from the light.
        ring = np.clip(1 - np.abs(r - 0.9 * BODY * size) / (0.045 * size + 0.5), 0, 1)
        face = (0.66 + 0.1 * facing + brushed) * (1 - 0.45 * ring) + ring * 0.18 * facing
        tab = gain * (0.5 + 0.22 * facing - 0.12 * outward) + brushed
    inner = r < THREAD * size
    bright = inner * thread + ~inner * (face + (tab - face) * on_tab)
    rim = coverage(np.abs(sdf + 1.0 + 0.003 * size), 0.4 + 0.002 * size) * (r > 0.2 * size)
    bright = bright + 0.12 * rim * (0.6 + 0.4 * facing)
    tint = UNDERSIDE_TINT if flipped else TINT
    return rgb([lerp(scene.background[win], bright * tint[c], part) for c in range(3)], scene.lighting)


def render_metal_nut(rng: np.random.Generator, size: int) -> NutScene:
    oy, ox, frame = pose(rng, size, shift=3, degrees=180)
    rings = np.convolve(rng.standard_normal(size + 8), np.ones(3) / 3, mode="same")[4:-4]
    streaks = np.convolve(rng.standard_normal(2048 + 8), np.ones(5) / 5, mode="same")[4:-4]
    tabs = np.stack([np.arange(4) * math.pi / 2 + rng.normal(0, 0.015, 4),
                     (TAB_OUT + rng.normal(0, 0.003, 4)) * size, rng.uniform(0.9, 1.1, 4)], axis=1)
    grain = (rng.random((size, size), dtype=np.float32) - 0.5) * 3.4  # ~unit variance
    black = 0.035 + 0.006 * noise(rng, size, 16 * size / 256 + 1) + 0.004 * grain
    # The light is fixed in the image; in the part's frame it turns with the part.
    rotation = math.atan2(frame[3], frame[2])
    scene = NutScene(
        oy=oy, ox=ox, frame=frame, angle=np.arctan2(oy, ox), background=black.astype(np.float32),
        rings=(rings / rings.std()).astype(np.float32), streaks=(streaks / streaks.std()).astype(np.float32),
        grain=grain, tabs=tabs, light=float(rng.normal(-0.75 * math.pi, 0.1) - rotation),
        lighting=float(rng.uniform(0.94, 1.05)), image=np.empty(0),
    )
    return replace(scene, image=_compose(scene, FULL))


def _inside(scene: NutScene, win: Window, inset: float = 1.0) -> np.ndarray:
    """Coverage of the part shrunk by `inset` pixels, so surface defects stay on the metal."""
    return coverage(_shape(scene, win, scene.tabs, False)[0] + inset, 0)


def _point_on_part(scene: NutScene, rng: np.random.Generator) -> np.ndarray:
    """An image (row, col) point on the metal: the face annulus or a tab."""
    size = scene.oy.shape[0]
    while True:  # rejection sampling in the object frame; the part covers a good share of its disc
        r, a = math.sqrt(rng.uniform(THREAD**2, TAB_OUT**2)) * size, rng.uniform(-math.pi, math.pi)
        point = to_image(scene.frame, np.array([[r * math.sin(a), r * math.cos(a)]]))[0]
        row, col = int(np.clip(round(float(point[0])), 0, size - 1)), int(np.clip(round(float(point[1])), 0, size - 1))
        if _inside(scene, (slice(row, row + 1), slice(col, col + 1)), 0.02 * size + 1)[0, 0] > 0.5:
            return point


def bent(scene: NutScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """One tab swung sideways (its tip moves by about extent * (0.4 + 0.8 contrast) of the image side) and tilted."""
    size = scene.oy.shape[0]
    tabs = scene.tabs.copy()
    k = int(rng.integers(4))
    swing = max(1.5, extent * (0.4 + 0.8 * contrast) * size) / tabs[k, 1]
    tabs[k, 0] += min(swing, 0.35) * (1 if rng.random() < 0.5 else -1)
    tabs[k, 1] *= 1.0 - rng.uniform(0.0, 0.12) * contrast  # bent out of plane: looks shorter from above
    tabs[k, 2] *= 1.0 + (0.2 + 0.4 * contrast) * (1 if rng.random() < 0.5 else -1)
    corners = np.concatenate([_tab_corners(tab, size, False) for tab in (scene.tabs[k], tabs[k])])
    win = box(to_image(scene.frame, corners), FILLET * size + 3, size)
    return pasted(scene.image, win, _compose(scene, win, tabs=tabs))


def color(scene: NutScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A paint patch: the metal tinted blue or red, its shading kept."""
    size = scene.oy.shape[0]
    radius = max(1.5, 0.5 * extent * size)
    centre = _point_on_part(scene, rng)
    win = box(centre, 2 * radius + 2, size)
    alpha = (irregular_blob(rng, *grid(win), tuple(centre), radius) * _inside(scene, win))[..., None]
    paint = np.float32([0.35, 0.55, 1.2]) if rng.random() < 0.5 else np.float32([1.2, 0.45, 0.4])
    patch = scene.image[win]
    target = patch * (1.0 + (0.3 + 0.7 * contrast) * (paint - 1.0)) + 0.05 * contrast * paint
    return pasted(scene.image, win, np.clip(lerp(patch, target, alpha), 0, 1))


def scratch(scene: NutScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """One to three thin, nearly parallel lines, bright (fresh metal) or dark (gouge)."""
    size = scene.oy.shape[0]
    path = jagged_path(rng, tuple(_point_on_part(scene, rng)), max(4.0, 2.0 * extent * size), kinks=2, wobble=0.15)
    direction = path[-1] - path[0]
    normal = np.array([-direction[1], direction[0]]) / (np.hypot(*direction) + 1e-6)
    paths = [path] + [(path + normal * rng.uniform(2.0, 6.0) * size / 256 * rng.choice([-1, 1])).astype(np.float32)
                      for _ in range(int(rng.integers(0, 3)))]
    half_width = max(0.35, 0.5 * size / 256)
    win = box(np.concatenate(paths), half_width + 2, size)
    y, x = grid(win)
    distance = np.minimum.reduce([stroke_distance(y, x, p) for p in paths])
    alpha = (coverage(distance, half_width) * _inside(scene, win))[..., None]
    patch = scene.image[win]
    target = 0.95 if rng.random() < 0.5 else patch * 0.25
    return pasted(scene.image, win, np.clip(lerp(patch, patch + (0.3 + 0.7 * contrast) * (target - patch), alpha), 0, 1))


def flip(scene: NutScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """The nut upside down: the whole part changes (mirrored tabs, dull underside shading)."""
    return _compose(scene, FULL, flipped=True)


DEFECTS = {"bent": bent, "color": color, "flip": flip, "scratch": scratch}
