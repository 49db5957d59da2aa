"""Synthetic `screw`: a small threaded metal screw lying on a light grey matte surface, and its defects.

Normal look: a mottled light grey background; a screw of random orientation (any angle) and position
(a few percent of the image), with a rounded head carrying a dark cross recess at one end, a round shaft
with slanted (helical) thread ridges that show as periodic bright/dark bands and a serrated outline, and a
pointed tip; metal shading with an off-centre highlight and a short soft shadow. Grayscale.
Defects re-render the same screw with an edit: manipulated_front (tip bent sideways or cut off blunt),
scratch_head (a bright or dark scratch across the head), thread_side (a dented stretch of thread on one
flank: ridges flattened, outline pushed in), thread_top (ridges worn flat along the crest over a stretch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import (
    coverage,
    pixel_grid,
    segment_distance,
)
from moleflow.synth.window import fine_noise, noise, rotate

# Object frame (fractions of the image side): the axis runs along ox, head at negative ox.
HEAD_START, HEAD_END, HEAD_HALF = -0.28, -0.185, 0.062
SHAFT_END, TIP_START, SHAFT_HALF = 0.27, 0.19, 0.03
PITCH = 0.026  # thread pitch
SLANT = 0.45  # helix: a ridge's position along the axis shifts with oy


@dataclass(frozen=True)
class ScrewEdit:
    """An edit of the screw, all lengths in pixels of the object frame."""

    tip_cut: float | None = None  # ox where the shaft ends in a blunt cut
    bend_knee: float | None = None  # ox of the bend, and the bend angle (radians)
    bend_angle: float = 0.0
    scratch: tuple[tuple[float, float], tuple[float, float]] | None = None  # segment on the head
    scratch_width: float = 0.0
    scratch_shift: float = 0.0  # brightness change along the scratch
    damage_span: tuple[float, float] | None = None  # ox stretch of damaged thread
    damage_side: int = 0  # +1 / -1: that flank (thread_side); 0: the crest (thread_top)
    damage_strength: float = 0.0


@dataclass(frozen=True)
class ScrewScene:
    centre: tuple[float, float]  # (y, x) of the object-frame origin in the image, pixels
    angle: float  # of the screw's axis, radians
    light: float  # highlight offset across the shaft (the light's direction relative to the screw)
    tone: float  # metal brightness
    background: np.ndarray  # (size, size), already lit
    grain: np.ndarray  # (size, size) fine noise: metal texture
    image: np.ndarray
    edit: ScrewEdit = ScrewEdit()


def _thread(ox: np.ndarray, oy: np.ndarray, size: int) -> np.ndarray:
    """Thread phase in [0, 1): 0 on a ridge crest, slanted across the shaft."""
    phase = (ox + SLANT * oy) / (PITCH * size)
    return phase - np.floor(phase)


def _shaft(scene: ScrewScene, oy: np.ndarray, ox: np.ndarray, end: float,
           grain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and shade of the shaft in the frame (oy, ox), ending at ox = end."""
    size = scene.background.shape[0]
    edit = scene.edit
    half = SHAFT_HALF * size
    taper = np.clip((SHAFT_END * size - ox) / ((SHAFT_END - TIP_START) * size), 0, 1)
    radius = half * np.sqrt(taper) * (0.15 + 0.85 * taper)  # ogive point
    phase = _thread(ox, oy, size)
    ridge = 1.0 - 2.0 * np.abs(phase - 0.5)  # triangle wave, 1 on a crest
    amplitude = np.full_like(ox, 1.0)
    dent = np.zeros_like(ox)
    if edit.damage_span is not None:
        a, b = edit.damage_span
        window = np.clip(np.minimum(ox - a, b - ox) / (0.25 * PITCH * size) + 0.5, 0, 1)
        if edit.damage_side:
            side = np.clip(edit.damage_side * oy / (0.3 * half) + 0.3, 0, 1)
        else:
            side = np.clip(1.2 - np.abs(oy) / (0.55 * half), 0, 1)
        amplitude = 1.0 - edit.damage_strength * window * side
        dent = edit.damage_strength * window * side
    edge = radius * (1.0 + 0.16 * (ridge - 0.5) * amplitude)
    if edit.damage_side:
        edge = edge - 0.3 * half * dent
    cover = coverage(np.abs(oy) - edge, 0) * coverage(ox - end, 0) * (ox >= HEAD_START * size)
    across = np.clip(oy / np.maximum(edge, 0.5), -1, 1)
    body = np.sqrt(1.0 - across * across)
    shine = np.exp(-(((across - scene.light) / 0.28) ** 2))
    bands = 0.55 + 0.45 * np.cos(2 * math.pi * phase) * amplitude
    shade = scene.tone * (0.45 + 0.45 * body) * (0.7 + 0.45 * bands) + 0.35 * shine * bands
    shade = shade + 0.25 * dent * (0.6 + 0.4 * grain) * (1 if edit.damage_side == 0 else -0.6)
    return cover, shade


def _box(scene: ScrewScene) -> tuple[slice, slice]:
    """Image rows and columns that the screw (edit included) and its shadow can touch."""
    size = scene.background.shape[0]
    edit = scene.edit
    across = max(HEAD_HALF, SHAFT_HALF) * size
    points = [(a, b * across) for a in (HEAD_START * size, SHAFT_END * size) for b in (-1, 1)]
    if edit.bend_knee is not None:  # the bent tip swings round the knee
        reach = SHAFT_END * size - edit.bend_knee + across
        points += [(edit.bend_knee + a * reach, b * reach) for a in (-1, 1) for b in (-1, 1)]
    cos, sin = math.cos(scene.angle), math.sin(scene.angle)
    ys = [scene.centre[0] + cos * oy + sin * ox for ox, oy in points]
    xs = [scene.centre[1] - sin * oy + cos * ox for ox, oy in points]
    margin = 0.01 * size + 4 * (0.006 * size + 0.3) + 3  # shadow offset + blur reach
    rows = slice(max(0, int(min(ys) - margin)), min(size, int(max(ys) + margin) + 1))
    cols = slice(max(0, int(min(xs) - margin)), min(size, int(max(xs) + margin) + 1))
    return rows, cols


def _compose(scene: ScrewScene) -> np.ndarray:
    """Background everywhere, the screw drawn only inside its box (objects are small: most pixels are plain)."""
    size = scene.background.shape[0]
    edit = scene.edit
    rows, cols = _box(scene)
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] - scene.centre[0]
    x = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] - scene.centre[1]
    oy, ox = rotate(y, x, scene.angle)
    grain = scene.grain[rows, cols]
    end = SHAFT_END * size if edit.tip_cut is None else edit.tip_cut
    cover, shade = _shaft(scene, oy, ox, end, grain)
    if edit.bend_knee is not None:
        k = edit.bend_knee
        cos, sin = math.cos(edit.bend_angle), math.sin(edit.bend_angle)
        by = cos * oy - sin * (ox - k)
        bx = sin * oy + cos * (ox - k) + k
        keep = coverage(ox - k, 0)
        bent_cover, bent_shade = _shaft(scene, by, bx, end, grain)
        bent_cover = bent_cover * coverage(k - bx, 0)
        shade = np.where(bent_cover > cover * keep, bent_shade, shade)
        cover = np.maximum(cover * keep, bent_cover)
    if edit.tip_cut is not None:  # freshly cut face: a bright flat end
        face = np.clip(1.0 - (end - ox) / (0.012 * size + 0.5), 0, 1)
        shade = shade + 0.25 * face
    # Head: a rounded dome, darker towards its rim, with a cross recess seen slightly from the side.
    head_centre = 0.5 * (HEAD_START + HEAD_END) * size
    head_len, head_half = 0.5 * (HEAD_END - HEAD_START) * size, HEAD_HALF * size
    hy, hx = oy / head_half, (ox - head_centre) / head_len
    radial = np.sqrt(hx * hx + np.abs(hy) ** 3)
    head = coverage((radial - 1.0) * head_len, 0)
    rim = np.clip(radial, 0, 1)
    highlight = np.exp(-((hy - scene.light) / 0.35) ** 2 - (hx / 0.6) ** 2)
    head_shade = scene.tone * (0.95 - 0.45 * rim**3) + 0.3 * highlight
    # The recess sits off-centre towards the outer end: the head is seen a little from its top.
    along, across = np.abs(ox - head_centre + 0.2 * head_len), np.abs(oy)
    recess = np.maximum(coverage(across, 0.012 * size) * coverage(along, 0.024 * size),
                        coverage(along, 0.008 * size) * coverage(across, 0.04 * size))
    head_shade = head_shade * (1.0 - 0.6 * recess)
    if edit.scratch is not None:
        line = coverage(segment_distance(oy, ox, *edit.scratch), edit.scratch_width)
        head_shade = head_shade + edit.scratch_shift * line * (0.85 + 0.15 * grain)
    head_shade = head_shade + 0.02 * grain
    parts = np.maximum(cover, head)
    offset = max(1, round(0.01 * size))
    shadow = np.zeros_like(parts)
    shadow[offset:, offset:] = ndimage.gaussian_filter(parts, 0.006 * size + 0.3)[:-offset, :-offset]
    part = scene.background[rows, cols] * (1.0 - 0.35 * shadow)
    shade = shade + 0.02 * grain
    part = part * (1 - cover) + shade * cover
    part = part * (1 - head) + head_shade * head
    image = scene.background.copy()
    image[rows, cols] = part
    return np.repeat(np.clip(image, 0, 1)[..., None], 3, -1)


def render_screw(rng: np.random.Generator, size: int) -> ScrewScene:
    scale = size / 256
    y, x = pixel_grid(size)
    centre = (size - 1) / 2 + rng.uniform(-0.08, 0.08, 2) * size
    angle = rng.uniform(0, 2 * math.pi)
    # The light comes from the upper left: where the highlight sits across the shaft depends on the angle.
    light = 0.45 * math.cos(angle + math.pi / 4) + rng.normal(0, 0.05)
    gradient = rng.normal(0, 0.04, 2).astype(np.float32)
    lit = np.float32(rng.uniform(0.7, 0.8)) * (1.0 + gradient[0] * (y / size - 0.5) + gradient[1] * (x / size - 0.5))
    grain = fine_noise(rng, size, 0.6 * scale + 0.3)
    # Matte paper-like surface: faint broad mottling and fine grit (the metal's grain field, hidden under the
    # screw, doubles as grit and sensor noise).
    background = lit * (1.0 + 0.012 * noise(rng, size, 16 * scale) + 0.016 * grain)
    scene = ScrewScene(
        centre=(float(centre[0]), float(centre[1])), angle=float(angle), light=float(light),
        tone=float(rng.uniform(0.5, 0.62)), background=background.astype(np.float32, copy=False), grain=grain,
        image=np.empty(0),
    )
    return replace(scene, image=_compose(scene))


def manipulated_front(scene: ScrewScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """The tip bent sideways at a knee or cut off blunt; more of the tip is affected at higher extent/contrast."""
    size = scene.background.shape[0]
    length = (SHAFT_END - TIP_START) * size
    if rng.random() < 0.5:
        missing = min(1.6 * length, max(1.5, (0.3 + 0.7 * contrast) * extent * 1.5 * size))
        return _compose(replace(scene, edit=ScrewEdit(tip_cut=SHAFT_END * size - missing)))
    knee = SHAFT_END * size - min(2.0 * length, max(3.0, extent * 2.0 * size))
    angle = (0.25 + 0.9 * contrast) * (1 if rng.random() < 0.5 else -1)
    return _compose(replace(scene, edit=ScrewEdit(bend_knee=knee, bend_angle=angle)))


def scratch_head(scene: ScrewScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A straight scratch across the head, bright (bare metal) or dark (groove)."""
    size = scene.background.shape[0]
    head_centre = 0.5 * (HEAD_START + HEAD_END) * size
    length = min(1.8 * HEAD_HALF * size, max(3.0, 1.5 * extent * size))
    direction = rng.uniform(0, math.pi)
    head_len = 0.5 * (HEAD_END - HEAD_START) * size
    mid = (rng.uniform(-0.4, 0.4) * HEAD_HALF * size, head_centre + rng.uniform(-0.3, 0.3) * head_len)
    half = 0.5 * length * np.array([math.sin(direction), math.cos(direction)])
    segment = (tuple(mid - half), tuple(mid + half))
    shift = (0.2 + 0.5 * contrast) * (1 if rng.random() < 0.6 else -1)
    edit = ScrewEdit(scratch=segment, scratch_width=max(0.3, 0.004 * size * (0.5 + contrast)), scratch_shift=shift)
    return _compose(replace(scene, edit=edit))


def _thread_damage(scene: ScrewScene, rng: np.random.Generator, extent: float, contrast: float,
                   side: int) -> np.ndarray:
    """Damaged thread over a stretch of the shaft: on flank `side` (+1 / -1) or along the crest (0)."""
    size = scene.background.shape[0]
    length = min((TIP_START - HEAD_END) * size * 0.8, max(PITCH * size, 1.2 * extent * size))
    start = rng.uniform(HEAD_END * size + 2, TIP_START * size - length)
    edit = ScrewEdit(damage_span=(float(start), float(start + length)), damage_side=side,
                     damage_strength=float(0.3 + 0.7 * contrast))
    return _compose(replace(scene, edit=edit))


def thread_side(scene: ScrewScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A stretch of thread on one flank dented: ridges flattened and the outline pushed in."""
    return _thread_damage(scene, rng, extent, contrast, 1 if rng.random() < 0.5 else -1)


def thread_top(scene: ScrewScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A stretch of thread worn flat along the crest: the bands fade into a bright smooth strip."""
    return _thread_damage(scene, rng, extent, contrast, 0)


GRAYSCALE = True  # stored single-channel, as real MVTec stores screw
DEFECTS = {"manipulated_front": manipulated_front, "scratch_head": scratch_head, "thread_side": thread_side,
           "thread_top": thread_top}
