"""Synthetic `transistor`: a centred TO-220-style part (dark body, metal tab, three leads), and its defects.

Normal look: plain light background with a soft shadow of the part, a dark plastic body with a faint
top highlight, a metal tab with a mounting hole above it, three round metal leads below; small pose
changes (shift of a few pixels, rotation of a few degrees), small lead jitter, slight lighting changes.
Defects re-render the same part with an edit: bent_lead, cut_lead (a lead cut short or gone),
damaged_case (a chip broken off the body or a scuffed patch on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import (PosedScene, coverage, irregular_blob, lerp, pixel_grid, polyline_distance,
                                 smooth_noise)

BODY_HALF = (0.14, 0.19)  # (height, width) / 2 as fractions of the image side
BODY_CENTRE_Y = -0.06
TAB_HALF = (0.075, 0.17)
LEAD_X = (-0.1, 0.0, 0.1)
LEAD_TOP, LEAD_BOTTOM, LEAD_HALF_WIDTH = 0.07, 0.44, 0.017


@dataclass(frozen=True)
class TransistorScene(PosedScene):
    leads: tuple[np.ndarray, ...]  # polylines in object coordinates, (n, 2) of (y, x)
    body_colour: float
    background: np.ndarray  # (size, size, 3), already lit
    lighting: float
    body_grain: np.ndarray
    image: np.ndarray
    damage: np.ndarray | None = None  # alpha of the damaged region (pixels)
    chipped: bool = False  # True: material missing (background shows); False: scuffed surface
    damage_strength: float = 0.0


def _rounded_box(
    oy: np.ndarray, ox: np.ndarray, centre_y: float, half: tuple[float, float], radius: float
) -> np.ndarray:
    """Signed distance (pixels) to a rounded rectangle centred on (centre_y, 0)."""
    qy = np.abs(oy - centre_y) - half[0] + radius
    qx = np.abs(ox) - half[1] + radius
    outside = np.hypot(np.maximum(qy, 0), np.maximum(qx, 0))
    return outside + np.minimum(np.maximum(qy, qx), 0) - radius


def _compose(scene: TransistorScene) -> np.ndarray:
    size = scene.oy.shape[0]
    oy, ox = scene.oy, scene.ox
    body_half = (BODY_HALF[0] * size, BODY_HALF[1] * size)
    body = coverage(_rounded_box(oy, ox, BODY_CENTRE_Y * size, body_half, 0.015 * size), 0)
    tab_y = (BODY_CENTRE_Y - BODY_HALF[0] - TAB_HALF[0] + 0.01) * size
    hole = coverage(np.hypot(oy - tab_y, ox), 0.035 * size)
    tab = coverage(_rounded_box(oy, ox, tab_y, (TAB_HALF[0] * size, TAB_HALF[1] * size), 0.01 * size), 0) * (1 - hole)
    lead_width = LEAD_HALF_WIDTH * size
    lead_distance = np.minimum.reduce([polyline_distance(oy, ox, lead) for lead in scene.leads])
    leads = coverage(lead_distance, lead_width)

    if scene.damage is not None and scene.chipped:
        body = body * (1.0 - scene.damage)  # the chip is gone: what was behind it shows
    parts = np.clip(body + tab + leads, 0, 1)
    # Light from the upper left: a short, crisp shadow down and right. Kept tight so a moved lead changes
    # few pixels beyond the lead itself (the mask follows the changed pixels).
    offset = max(1, round(0.008 * size))
    shadow = np.zeros_like(parts)
    shadow[offset:, offset:] = ndimage.gaussian_filter(parts, 0.004 * size + 0.3)[:-offset, :-offset]
    image = scene.background * (1.0 - 0.3 * shadow)[..., None]

    tab_shade = 0.62 + 0.12 * (ox / (TAB_HALF[1] * size)) + 0.015 * scene.body_grain
    image = lerp(image, np.stack([tab_shade, tab_shade * 0.98, tab_shade * 0.95], -1), tab)
    # Round metal lead: dark flanks, bright crest with a narrow specular streak.
    profile = np.sqrt(np.clip(1 - (lead_distance / max(lead_width, 0.5)) ** 2, 0, 1))
    lead_shade = 0.3 + 0.45 * profile + 0.2 * profile**8
    image = lerp(image, np.stack([lead_shade, lead_shade * 0.98, lead_shade * 0.95], -1), leads)
    top = (oy - (BODY_CENTRE_Y - BODY_HALF[0]) * size) / (2 * BODY_HALF[0] * size)
    body_shade = scene.body_colour * (1.25 - 0.35 * np.clip(top, 0, 1)) + 0.01 * scene.body_grain
    if scene.damage is not None and not scene.chipped:
        # Scuffed plastic: lighter, rough; strength scales how far it departs from the body colour.
        body_shade = body_shade + scene.damage * scene.damage_strength * (0.35 + 0.1 * scene.body_grain)
    image = lerp(image, np.repeat(body_shade[..., None], 3, -1), body)
    return np.clip(image * scene.lighting, 0, 1).astype(np.float32)


def render_transistor(rng: np.random.Generator, size: int) -> TransistorScene:
    scale = size / 256
    y, x = pixel_grid(size)
    centre = (size - 1) / 2 + rng.uniform(-3, 3, 2) * scale
    angle = math.radians(rng.uniform(-3, 3))
    cos, sin = math.cos(angle), math.sin(angle)
    oy = cos * (y - centre[0]) - sin * (x - centre[1])
    ox = sin * (y - centre[0]) + cos * (x - centre[1])
    leads = tuple(
        np.array([[LEAD_TOP * size, (lead_x + rng.normal(0, 0.002)) * size],
                  [(LEAD_BOTTOM + rng.normal(0, 0.004)) * size, (lead_x + rng.normal(0, 0.003)) * size]],
                 dtype=np.float32)
        for lead_x in LEAD_X
    )
    gradient = rng.normal(0, 0.03, 2)
    shade = 1.0 + gradient[0] * (y / size - 0.5) + gradient[1] * (x / size - 0.5)
    paper = 0.78 + 0.015 * smooth_noise(rng, (size, size), 2 * scale + 0.5) + rng.normal(0, 0.008, (size, size))
    background = (paper * shade)[..., None] * np.array([1.0, 0.99, 0.955], dtype=np.float32)
    scene = TransistorScene(
        oy=oy.astype(np.float32), ox=ox.astype(np.float32), leads=leads,
        body_colour=float(rng.uniform(0.1, 0.14)), background=background.astype(np.float32),
        lighting=float(rng.uniform(0.95, 1.05)),
        body_grain=smooth_noise(rng, (size, size), 0.8 * scale + 0.3), image=np.empty(0),
    )
    return replace(scene, image=_compose(scene))


def _pick_lead(scene: TransistorScene, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    index = int(rng.integers(len(scene.leads)))
    return index, scene.leads[index]


def _with_lead(scene: TransistorScene, index: int, lead: np.ndarray) -> TransistorScene:
    leads = list(scene.leads)
    leads[index] = lead.astype(np.float32)
    return replace(scene, leads=tuple(leads))


def bent_lead(scene: TransistorScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A lead bent sideways at a knee; the tip moves by extent * (0.5 + contrast) of the image side."""
    size = scene.oy.shape[0]
    index, lead = _pick_lead(scene, rng)
    top, bottom = lead.astype(np.float64)
    knee = top + rng.uniform(0.25, 0.75) * (bottom - top)  # on the original line: the part above is untouched
    rest = float(np.hypot(*(bottom - knee)))
    shift = min(0.95 * rest, max(1.5, extent * (0.5 + contrast) * size))
    bend = math.asin(shift / rest) * (1 if rng.random() < 0.5 else -1)
    cos, sin = math.cos(bend), math.sin(bend)
    (dy, dx) = bottom - knee
    tip = knee + np.array([cos * dy - sin * dx, sin * dy + cos * dx])
    return _compose(_with_lead(scene, index, np.array([top, knee, tip])))


def cut_lead(scene: TransistorScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A lead cut short; the missing length grows with extent and contrast, up to the whole lead."""
    size = scene.oy.shape[0]
    index, lead = _pick_lead(scene, rng)
    (top_y, top_x), (bottom_y, bottom_x) = lead
    length = bottom_y - top_y
    missing = min(length, max(2.0, extent * (1.0 + 2.0 * contrast) * size))
    end = (bottom_y - missing, top_x + (bottom_x - top_x) * (1 - missing / length))
    if missing >= length - 1:  # gone entirely: a zero-length stub hidden under the body
        end = (top_y, top_x)
    return _compose(_with_lead(scene, index, np.array([[top_y, top_x], end])))


def damaged_case(scene: TransistorScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A chip broken off the body's edge or a scuffed patch on its face."""
    size = scene.oy.shape[0]
    half_h, half_w = BODY_HALF[0] * size, BODY_HALF[1] * size
    radius = max(1.5, 0.5 * extent * size)
    chipped = bool(rng.random() < 0.5)
    if chipped:  # centre on the outline so part of the blob bites into the body
        side = rng.integers(4)
        t = rng.uniform(-0.8, 0.8)
        offsets = [(-half_h, t * half_w), (half_h, t * half_w), (t * half_h, -half_w), (t * half_h, half_w)]
        centre = offsets[side]
    else:
        centre = (rng.uniform(-0.7, 0.7) * half_h, rng.uniform(-0.7, 0.7) * half_w)
    oy_centre = BODY_CENTRE_Y * size + centre[0]
    damage = irregular_blob(rng, scene.oy, scene.ox, (oy_centre, centre[1]), radius)
    edited = replace(scene, damage=damage, chipped=chipped, damage_strength=float(0.25 + 0.75 * contrast))
    return _compose(edited)


DEFECTS = {"bent_lead": bent_lead, "cut_lead": cut_lead, "damaged_case": damaged_case}
