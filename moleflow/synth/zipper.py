"""Synthetic `zipper`: a closed zipper running vertically through the image centre, and its defects.

Normal look: woven fabric tape filling both sides (a fine twill of warp and weft threads with per-thread
brightness, fuzz and slow shading); a corded tape edge on each side of the centre, and two rows of moulded
teeth, one from each tape, alternating left/right and interlocking across the centre over a dark gap, each
tooth shaded as a rounded ridge with a highlight, casting a short shadow on the tape. Small pose changes
(a few pixels, about a degree), tooth phase and jitter, lighting changes. Grayscale.
Defects re-render the same zipper with an edit: broken_teeth (a tooth broken short or missing),
split_teeth (the two rows pulled apart over a stretch, no longer interlocked), squeezed_teeth (teeth
crushed together and skewed over a stretch), fabric_border (tape frayed next to the teeth, loose threads
over them), fabric_interior (a flaw in the weave away from the teeth: pulled threads, a hole or a stain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import Layer, PosedScene, coverage, irregular_blob, lerp, pixel_grid, polyline_distance
from moleflow.synth.window import fine_noise, noise, object_square, rotate

TOOTH_ROOT = 0.11  # |ox| of a tooth's root (the tape edge), fraction of the image side
TOOTH_REACH = 1.42  # a tooth spans this many TOOTH_ROOTs from its root, past the centre
PITCH = 0.062  # tooth spacing along one side
THREAD = 0.014  # weave period


@dataclass(frozen=True)
class ZipperScene(PosedScene):
    pose: tuple[float, float, float]  # image (y, x) of the object-frame origin and the rotation (radians)
    band: slice  # image columns the teeth and their shadows can reach
    phase: float  # y of the first left tooth, pixels
    n_teeth: int
    shift_y: np.ndarray  # (2, n) per-tooth offsets along the zipper (side 0 left, 1 right), pixels
    shift_x: np.ndarray  # (2, n) per-tooth offsets across (away from the centre), pixels
    length: np.ndarray  # (2, n) fraction of each tooth present
    tilt: np.ndarray  # (2, n) skew of each tooth
    warp_gain: np.ndarray  # (m,) per-thread brightness of vertical threads
    weft_gain: np.ndarray  # (m,) and horizontal ones
    fuzz: np.ndarray  # fine noise: fibre fuzz
    shading: np.ndarray  # slow lighting over the tape
    tone: float  # tape brightness
    tooth_tone: float
    fabric: np.ndarray  # the tape's texture over the whole image (under the teeth too)
    image: np.ndarray


def _fabric(scene: ZipperScene, box: tuple[slice, slice], du: np.ndarray | float = 0.0,
            dv: np.ndarray | float = 0.0) -> np.ndarray:
    """Twill brightness inside `box`; (du, dv) displaces the threads (in thread periods)."""
    period = THREAD * scene.oy.shape[0]
    u, v = scene.ox[box] / period + du, scene.oy[box] / period + dv  # across / along the zipper
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    iu, iv = iu.astype(np.intp), iv.astype(np.intp)
    m = scene.warp_gain.shape[0]
    warp_on_top = (iu - iv) % 3 != 0  # 2/1 twill: diagonal ribs
    warp = scene.warp_gain.take(iu % m) * (0.55 + 0.45 * np.sin(np.float32(math.pi) * fu))
    weft = scene.weft_gain.take(iv % m) * (0.55 + 0.45 * np.sin(np.float32(math.pi) * fv))
    return scene.tone * np.where(warp_on_top, warp, weft) * (1.0 + 0.08 * scene.fuzz[box])


def _teeth(scene: ZipperScene, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and shade of one row of teeth (side 0 from the left tape, 1 from the right)."""
    size = scene.oy.shape[0]
    pitch, root = PITCH * size, TOOTH_ROOT * size
    oy, ox = scene.oy[:, scene.band], scene.ox[:, scene.band]
    sign = -1.0 if side == 0 else 1.0
    base = scene.phase + 0.5 * pitch * side
    nearest = np.rint((oy - base) / pitch).astype(np.intp)
    cover = np.zeros_like(oy)
    shade = np.zeros_like(oy)
    half = 0.25 * pitch
    # Edited teeth may move into a neighbour's slot; unedited ones never leave their own.
    moved = bool(np.abs(scene.shift_y).max() > 0.1 * pitch or np.abs(scene.tilt).max() > 0.05)
    for k in (-1, 0, 1) if moved else (0,):
        index = np.clip(nearest + k, 0, scene.n_teeth - 1)
        along = root - sign * ox + scene.shift_x[side].take(index)  # 0 at the root, growing to the tip
        across = oy - (base + pitch * index.astype(np.float32)) - scene.shift_y[side].take(index)
        across = across - scene.tilt[side].take(index) * along
        end = TOOTH_REACH * root * scene.length[side].take(index)
        head = np.clip((along - 0.75 * root) / (0.3 * root), 0, 1)  # the interlocking head is a little wider
        height = half * (1.0 + 0.18 * head)
        qa = np.maximum(np.abs(along - 0.5 * end) - 0.5 * end + 0.35 * half, 0)
        qc = np.maximum(np.abs(across) - height + 0.35 * half, 0)
        distance = np.hypot(qa, qc) - 0.35 * half
        c = coverage(distance, 0) * (end > 0.5)
        n = np.clip(across / height, -1, 1)
        s = scene.tooth_tone * (0.5 + 0.4 * np.sqrt(1 - n * n)) + 0.28 * np.exp(-(((n + 0.35) / 0.3) ** 2))
        s = s * (0.8 + 0.2 * np.clip(along / (0.4 * root), 0, 1))  # darker where the root grips the cord
        newer = c > cover
        shade = np.where(newer, s, shade)
        cover = np.maximum(cover, c)
    return cover, shade


def _compose(scene: ZipperScene, fabric: np.ndarray | None = None, overlay: Layer | None = None) -> np.ndarray:
    """The zipper; `fabric` replaces the tape texture, `overlay` is drawn over everything (defects)."""
    size = scene.oy.shape[0]
    root = TOOTH_ROOT * size
    image = (scene.fabric if fabric is None else fabric).copy()
    # Only the band round the centre holds more than tape: the gap, the corded edges and the teeth.
    distance = np.abs(scene.ox[:, scene.band])
    fuzz = scene.fuzz[:, scene.band]
    tape = coverage(0.86 * root - distance, 0)
    cord_n = np.clip((distance - 0.95 * root) / (0.1 * root), -1, 1)
    cord = coverage(np.abs(distance - 0.95 * root), 0.1 * root)
    band = (0.07 + 0.03 * fuzz) * (1 - tape) + image[:, scene.band] * tape
    band = lerp(band, scene.tone * (0.7 + 0.5 * np.sqrt(1 - cord_n * cord_n)) * (1 + 0.1 * fuzz), cord)
    left, left_shade = _teeth(scene, 0)
    right, right_shade = _teeth(scene, 1)
    teeth = np.maximum(left, right)
    offset = max(1, round(0.008 * size))
    shadow = np.zeros_like(teeth)
    shadow[offset:, offset:] = ndimage.gaussian_filter(teeth, 0.006 * size + 0.3)[:-offset, :-offset]
    band = band * (1.0 - 0.45 * shadow)
    band = lerp(band, left_shade, left)
    image[:, scene.band] = lerp(band, right_shade, right)
    if overlay is not None:
        image[overlay.box] = lerp(image[overlay.box], overlay.paint, overlay.alpha)
    image = image * scene.shading
    return np.repeat(np.clip(image, 0, 1)[..., None], 3, -1)


def render_zipper(rng: np.random.Generator, size: int) -> ZipperScene:
    scale = size / 256
    y, x = pixel_grid(size)
    cy, cx = (size - 1) / 2, (size - 1) / 2 + float(rng.uniform(-0.015, 0.015)) * size
    angle = math.radians(rng.uniform(-1.2, 1.2))
    oy, ox = rotate(y - np.float32(cy), x - np.float32(cx), angle)
    pitch = PITCH * size
    # Teeth reach 1.42 roots from their root at |ox| = root; split teeth move out 0.4 root more.
    reach = 1.5 * TOOTH_ROOT * size + abs(math.sin(angle)) * size / 2 + 0.008 * size + 4 * (0.006 * size + 0.3) + 2
    band = slice(max(0, int(cx - reach)), min(size, int(cx + reach) + 1))
    n = int(size / pitch * 1.5) + 6
    phase = -0.5 * n * pitch + rng.uniform(0, pitch)
    m = 257
    scene = ZipperScene(
        oy=oy.astype(np.float32, copy=False), ox=ox.astype(np.float32, copy=False),
        pose=(float(cy), float(cx), angle), band=band, phase=float(phase), n_teeth=n,
        shift_y=rng.normal(0, 0.012 * pitch, (2, n)).astype(np.float32),
        shift_x=rng.normal(0, 0.01 * pitch, (2, n)).astype(np.float32),
        length=np.ones((2, n), np.float32), tilt=rng.normal(0, 0.01, (2, n)).astype(np.float32),
        warp_gain=rng.normal(1.0, 0.07, m).astype(np.float32), weft_gain=rng.normal(0.92, 0.07, m).astype(np.float32),
        fuzz=fine_noise(rng, size, 0.5 * scale + 0.25),
        shading=np.float32(rng.uniform(0.92, 1.08)) * (1.0 + 0.06 * noise(rng, size, 50 * scale)),
        tone=float(rng.uniform(0.36, 0.44)), tooth_tone=float(rng.uniform(0.5, 0.6)), fabric=np.empty(0),
        image=np.empty(0),
    )
    scene = replace(scene, fabric=_fabric(scene, (slice(None), slice(None))))
    return replace(scene, image=_compose(scene))


def _tooth_at(scene: ZipperScene, rng: np.random.Generator) -> tuple[int, int]:
    """(side, index) of a random tooth at least one pitch inside the image."""
    size = scene.oy.shape[0]
    pitch = PITCH * size
    half = 0.5 * size - pitch
    side = int(rng.integers(2))
    y = rng.uniform(-half, half) if half > 0 else 0.0
    index = int(np.clip(round((y - scene.phase - 0.5 * pitch * side) / pitch), 0, scene.n_teeth - 1))
    return side, index


def _window(scene: ZipperScene, centre: int, span: float) -> np.ndarray:
    """Weight in [0, 1] of each tooth of a row: 1 at tooth `centre`, falling to 0 `span` teeth away."""
    k = np.arange(scene.n_teeth) - centre
    return np.clip(1.0 - (np.abs(k) / max(span, 0.5)) ** 2, 0, 1).astype(np.float32)


def broken_teeth(scene: ZipperScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A tooth broken short (low contrast: a chip off its head) or gone; a larger extent breaks a neighbour too."""
    side, index = _tooth_at(scene, rng)
    length = scene.length.copy()
    length[side, index] = 1.0 - (0.15 + 0.85 * contrast)
    if extent > 0.08 and index + 1 < scene.n_teeth:
        length[side, index + 1] = 1.0 - (0.15 + 0.85 * contrast) * rng.uniform(0.5, 1.0)
    return _compose(replace(scene, length=length))


def split_teeth(scene: ZipperScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """The two rows pulled apart over a stretch so the heads no longer interlock; the dark gap shows."""
    size = scene.oy.shape[0]
    _, index = _tooth_at(scene, rng)  # the rng draws the side too: both rows move
    span = max(1.0, 0.8 * extent / PITCH)  # teeth either side of the centre: the stretch is ~1.6 extent long
    gap = (0.1 + 0.3 * contrast) * TOOTH_ROOT * size
    shift_x = scene.shift_x.copy()
    shift_x += gap * _window(scene, index, span)  # both rows: the facing teeth share (nearly) the index
    return _compose(replace(scene, shift_x=shift_x))


def squeezed_teeth(scene: ZipperScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """Teeth crushed together over a stretch: pushed towards one point, skewed and squashed short."""
    size = scene.oy.shape[0]
    pitch = PITCH * size
    side, index = _tooth_at(scene, rng)
    span = max(1.0, 0.8 * extent / PITCH)
    weight = _window(scene, index, span)
    k = np.arange(scene.n_teeth) - index
    strength = 0.15 + 0.6 * contrast
    shift_y, tilt, length = scene.shift_y.copy(), scene.tilt.copy(), scene.length.copy()
    shift_y[side] -= strength * 0.35 * pitch * np.clip(k, -1.5, 1.5) * weight
    tilt[side] += strength * 0.35 * np.sign(k) * weight * (1 if rng.random() < 0.5 else -1)
    length[side] -= 0.15 * strength * weight
    return _compose(replace(scene, shift_y=shift_y, tilt=tilt, length=length))


def fabric_border(scene: ZipperScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """The tape frayed right beside the teeth: weave broken up into fuzz, loose threads lying over the teeth."""
    size = scene.oy.shape[0]
    root = TOOTH_ROOT * size
    sign = -1.0 if rng.random() < 0.5 else 1.0
    radius = max(1.5, 0.5 * extent * size)
    centre = (float(rng.uniform(-0.35, 0.35) * size), float(sign * (root + 0.6 * radius)))
    box = object_square(scene.pose, size, centre, 1.6 * radius + 0.4 * root + 2)
    oy, ox = scene.oy[box], scene.ox[box]
    alpha = irregular_blob(rng, oy, ox, centre, radius)
    alpha = alpha * np.clip((sign * ox - 0.8 * root) / (0.1 * root), 0, 1)  # on the tape side only
    fuzz = scene.fuzz[box]
    fuzzy = scene.tone * (0.85 + 0.3 * fuzz) * (0.75 + 0.25 * np.sin(0.7 * ox / (THREAD * size) + 1.3 * fuzz))
    fabric = scene.fabric.copy()
    fabric[box] = lerp(fabric[box], fuzzy * (0.6 + 0.6 * contrast), alpha * (0.4 + 0.6 * contrast))
    threads = []
    for _ in range(1 + int(4 * contrast)):  # loose threads reach across the cord onto the teeth
        start = np.array(centre) + rng.normal(0, 0.4 * radius, 2)
        heading = math.atan2(0, -sign) + rng.normal(0, 0.5)
        reach = rng.uniform(0.4, 1.0) * (radius + 0.3 * root)
        mid = start + 0.5 * reach * np.array([math.sin(heading), math.cos(heading)])
        heading += rng.normal(0, 0.5)
        threads.append(np.array([start, mid, mid + 0.5 * reach * np.array([math.sin(heading), math.cos(heading)])]))
    width = max(0.35, 0.0035 * size)
    loose = np.max([coverage(polyline_distance(oy, ox, t.astype(np.float32)), width) for t in threads], 0)
    return _compose(scene, fabric, Layer(box, loose * (0.5 + 0.5 * contrast), scene.tone * 1.25 * (1 + 0.1 * fuzz)))


def fabric_interior(scene: ZipperScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A flaw in the weave away from the teeth: threads pulled aside, a worn hole, or a stain."""
    size = scene.oy.shape[0]
    root = TOOTH_ROOT * size
    radius = max(1.5, 0.5 * extent * size)
    side = -1.0 if rng.random() < 0.5 else 1.0
    low = 1.25 * root + radius
    high = max(low, 0.5 * size - radius - 1)
    centre = (float(rng.uniform(-0.4, 0.4) * size), float(side * rng.uniform(low, high)))
    box = object_square(scene.pose, size, centre, 1.6 * radius + 2)
    alpha = irregular_blob(rng, scene.oy[box], scene.ox[box], centre, radius)
    fabric = scene.fabric.copy()
    kind = rng.integers(3)
    if kind == 0:  # pulled threads: the weave pushed sideways and its ribs lit differently
        push = (0.6 + 1.8 * contrast) * alpha
        fabric[box] = _fabric(scene, box, push * rng.choice([-1, 1]), 0.5 * push) * (1.0 + 0.25 * contrast * alpha)
    elif kind == 1:  # worn through: dark hole with a fuzzy rim
        fabric[box] *= 1.0 - (0.35 + 0.55 * contrast) * alpha
    else:  # stain: lighter or darker, weave still visible
        fabric[box] *= 1.0 + (0.25 + 0.5 * contrast) * (1 if rng.random() < 0.5 else -1) * alpha
    return _compose(scene, fabric)


GRAYSCALE = True  # stored single-channel, as real MVTec stores zipper
DEFECTS = {"broken_teeth": broken_teeth, "split_teeth": split_teeth, "squeezed_teeth": squeezed_teeth,
           "fabric_border": fabric_border, "fabric_interior": fabric_interior}
