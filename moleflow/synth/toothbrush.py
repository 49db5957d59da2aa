"""Synthetic `toothbrush`: a toothbrush head seen from above, vertical in the image, and its defects.

Normal look: a light, slightly shaded background; a coloured plastic head (a long rounded outline with the
neck running off the bottom edge) carrying a dense grid of round bristle tufts (4 columns x 9 rows), each
a domed cluster of fibre tips with fine speckle and radial fibre streaks, white or light blue in one of a
few colour schemes; plastic shows darkened in the gaps. Small pose changes (a few pixels, a couple of
degrees), tuft jitter and lighting changes.
Defects: defective (one tuft splayed: spread wider, ragged, with stray fibres), missing_tuft (a tuft gone
or thinned out, its socket showing), contamination (a foreign particle or hair among the bristles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from moleflow.synth.draw import Layer, PosedScene, coverage, irregular_blob, lerp, pixel_grid, polyline_distance
from moleflow.synth.window import fine_noise, jagged_path, noise, object_square, rotate

HEAD_HALF = (0.40, 0.20)  # (height, width) / 2 of the head, fractions of the image side
HEAD_CENTRE_Y = -0.05
NECK_HALF_WIDTH = 0.085
ROWS, COLS = 9, 4
PITCH = (0.083, 0.093)  # tuft spacing (rows, columns)
TUFT_RADIUS = 0.041
PLASTICS = np.array([[0.16, 0.34, 0.74], [0.78, 0.16, 0.2], [0.2, 0.58, 0.36], [0.5, 0.28, 0.66],
                     [0.86, 0.86, 0.88]], dtype=np.float32)
WHITE, BLUE = np.array([0.95, 0.95, 0.94], np.float32), np.array([0.58, 0.78, 0.95], np.float32)


@dataclass(frozen=True)
class ToothbrushScene(PosedScene):
    pose: tuple[float, float, float]  # image (y, x) of the object-frame origin and the rotation (radians)
    box: tuple[slice, slice]  # image rows / columns the brush and its shadow can touch
    centres: np.ndarray  # (ROWS, COLS, 2) tuft centres (y, x) in object pixels
    colours: np.ndarray  # (ROWS, COLS, 3) bristle colour per tuft
    keep: np.ndarray  # (ROWS, COLS) fibre density per tuft (1 normal, lower: thinned / missing)
    plastic: np.ndarray  # (3,)
    background: np.ndarray  # (size, size, 3), already lit
    outline: np.ndarray  # signed distance to the head's outline (pixels), inside `box`
    shadow: np.ndarray  # the head's shadow on the background, inside `box`
    speckle: np.ndarray  # fine noise: fibre tips
    streaks: np.ndarray  # (1024,) smooth 1D noise indexed by angle: radial fibre streaks
    image: np.ndarray


def _nearest_tuft(oy: np.ndarray, ox: np.ndarray, centres: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Flat index of every pixel's tuft (the one of its grid cell) and the offset (dy, dx) from its centre.

    Centres are jittered by well under a pixel, so the grid cell is the nearest tuft up to a sliver.
    """
    flat_y, flat_x = centres[..., 0].ravel(), centres[..., 1].ravel()
    row = np.clip(np.rint((oy - flat_y[0]) / np.float32(PITCH[0] * size)), 0, ROWS - 1).astype(np.intp)
    col = np.clip(np.rint((ox - flat_x[0]) / np.float32(PITCH[1] * size)), 0, COLS - 1).astype(np.intp)
    index = row * COLS + col
    return index, oy - flat_y.take(index), ox - flat_x.take(index)


def _tuft_look(scene: ToothbrushScene, dy: np.ndarray, dx: np.ndarray, radius: np.ndarray | float,
               colour: np.ndarray, seed: np.ndarray | int, speckle: np.ndarray,
               streakiness: float = 1.0) -> np.ndarray:
    """Colour of bristle tips at offset (dy, dx) from a tuft centre: domed, speckled, radially streaked."""
    relative = np.clip(np.hypot(dy, dx) / np.maximum(radius, 1e-3), 0, 1)
    n = scene.streaks.shape[0]
    turn = np.arctan2(dy, dx) * np.float32(0.25 * n / (2 * math.pi)) + np.float32(0.125 * n)
    index = (turn.astype(np.intp) + 97 * seed) % n
    light = (1.0 - 0.22 * relative**3) * (0.97 + 0.07 * speckle + 0.06 * streakiness * relative * scene.streaks[index])
    return colour * light[..., None]


def _outline(size: int, oy: np.ndarray, ox: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, roughly) to the outline of head and neck: an ellipse-capped head narrowing
    into the neck towards the bottom."""
    ny = (oy - HEAD_CENTRE_Y * size) / (HEAD_HALF[0] * size)
    below, above = np.clip(ny, 0, None), np.clip(-ny, 0, None)
    profile = 1.0 - (below * below) ** 2 - above * above * np.sqrt(above)  # blunter towards the neck
    # Past the rounded end the outline is far away (negative width), so nothing is drawn there.
    head_width = np.where(profile > 0, HEAD_HALF[1] * size * np.sqrt(np.clip(profile, 0, 1)), -size)
    neck = np.where(oy > HEAD_CENTRE_Y * size, np.float32(NECK_HALF_WIDTH * size), np.float32(-size))
    return np.abs(ox) - np.maximum(head_width, neck)


def _compose(scene: ToothbrushScene, region: tuple[slice, slice] | None = None) -> np.ndarray:
    """The brush over the background; with `region` (image rows, columns) only that part is redrawn
    over the normal image (defects that change nothing else)."""
    size = scene.oy.shape[0]
    box = scene.box
    if region is not None:  # clip to the box, keep it non-empty
        region = tuple(slice(min(max(r.start, b.start), b.stop - 1), max(min(r.stop, b.stop), b.start + 1))
                       for r, b in zip(region, box))
    area = box if region is None else region
    oy, ox = scene.oy[area], scene.ox[area]
    speckle = scene.speckle[area]
    inside_box = (slice(area[0].start - box[0].start, area[0].stop - box[0].start),
                  slice(area[1].start - box[1].start, area[1].stop - box[1].start))
    outside = scene.outline[inside_box]
    head = coverage(outside, 0)
    inner = coverage(outside + 0.012 * size, 0)  # bristles stop just inside the outline
    rim = np.clip(outside / (0.03 * size) + 1.0, 0, 1)
    plastic = 1.0 - 0.12 * ox / (HEAD_HALF[1] * size) * (1 - rim) + 0.25 * rim * (ox < 0) - 0.3 * rim * (ox > 0)

    index, dy, dx = _nearest_tuft(oy, ox, scene.centres, size)
    radius = TUFT_RADIUS * size * (1.0 + 0.05 * speckle)  # fibre ends make the outline ragged
    distance = np.hypot(dy, dx)
    density = scene.keep.ravel().take(index)
    socket = coverage(distance, 0.75 * TUFT_RADIUS * size)
    # Plastic in the gaps is shaded by the bristles around it; an emptied socket is a dark hole.
    gap = np.clip((distance - radius) / (0.02 * size + 0.5), 0, 1)
    plastic = plastic * (0.55 + 0.45 * gap) * (1.0 - 0.45 * socket * (1.0 - density))
    tips = coverage(distance - radius, 0) * np.clip(density * 1.6 - 0.6 + 0.5 * speckle * (1 - density), 0, 1)
    tuft = _tuft_look(scene, dy, dx, radius, scene.colours.reshape(-1, 3)[index], index, speckle)

    part = scene.background[area] * (1.0 - 0.3 * scene.shadow[inside_box])[..., None]
    part += (plastic[..., None] * scene.plastic - part) * head[..., None]
    part += (tuft - part) * (tips * inner)[..., None]
    image = (scene.background if region is None else scene.image).copy()
    image[area] = np.clip(part, 0, 1)
    return image


def _with_layer(scene: ToothbrushScene, layer: Layer) -> np.ndarray:
    """The normal image with `layer` drawn over it."""
    image = scene.image.copy()
    image[layer.box] = np.clip(lerp(image[layer.box], layer.paint, layer.alpha), 0, 1)
    return image


def render_toothbrush(rng: np.random.Generator, size: int) -> ToothbrushScene:
    scale = size / 256
    y, x = pixel_grid(size)
    centre = (size - 1) / 2 + rng.uniform(-0.015, 0.015, 2) * size
    angle = math.radians(rng.uniform(-2.5, 2.5))
    oy, ox = rotate(y - np.float32(centre[0]), x - np.float32(centre[1]), angle)
    tilt = abs(float(np.float32(math.sin(angle))))  # |sin| as rotate rounds it
    # The head spans |ox| <= HEAD_HALF[1] and reaches down off the image; tilt and shadow widen that a little.
    reach = HEAD_HALF[1] * size + tilt * size + 0.01 * size + 4 * (0.008 * size + 0.3) + 2
    top = centre[0] + (HEAD_CENTRE_Y - HEAD_HALF[0]) * size - reach
    box = (slice(max(0, int(top)), size),
           slice(max(0, int(centre[1] - reach)), min(size, int(centre[1] + reach) + 1)))
    grid_y = (np.arange(ROWS) - (ROWS - 1) / 2) * PITCH[0] + HEAD_CENTRE_Y - 0.012
    grid_x = (np.arange(COLS) - (COLS - 1) / 2) * PITCH[1]
    centres = np.stack(np.meshgrid(grid_y, grid_x, indexing="ij"), -1) * size
    centres = (centres + rng.normal(0, 0.0025, centres.shape) * size).astype(np.float32)
    scheme = rng.integers(4)
    rows, cols = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    blue = [np.zeros_like(rows, bool), (cols == 1) | (cols == 2), rows % 3 == 1, (cols == 0) | (cols == 3)][scheme]
    colours = np.where(blue[..., None], BLUE, WHITE) * rng.uniform(0.96, 1.02, (ROWS, COLS, 1))
    lighting = rng.uniform(0.95, 1.04)
    plastic = PLASTICS[rng.integers(len(PLASTICS))] * rng.uniform(0.9, 1.08, 3) * lighting
    gradient = rng.normal(0, 0.04, 2).astype(np.float32)
    paper = np.float32(rng.uniform(0.82, 0.9) * lighting) * (1.0 + gradient[0] * (y / size - 0.5)
                                                             + gradient[1] * (x / size - 0.5))
    # Fibre speckle doubles as the paper's grain: it is hidden under the bristles where it serves them.
    speckle = fine_noise(rng, size, 0.5 * scale + 0.25)
    paper = paper + 0.005 * noise(rng, size, 24 * scale) + 0.008 * speckle
    background = paper[..., None] * np.array([1.0, 0.995, 0.985], np.float32)
    streaks = ndimage.gaussian_filter1d(rng.standard_normal(1024), 1.2, mode="wrap")
    outline = _outline(size, oy[box], ox[box])
    head = coverage(outline, 0)
    offset = max(1, round(0.01 * size))
    shadow = np.zeros_like(head)
    shadow[offset:, offset:] = ndimage.gaussian_filter(head, 0.008 * size + 0.3)[:-offset, :-offset]
    scene = ToothbrushScene(
        oy=oy, ox=ox, pose=(float(centre[0]), float(centre[1]), angle), box=box, outline=outline, shadow=shadow,
        centres=centres, colours=(colours * lighting).astype(np.float32),
        keep=np.ones((ROWS, COLS), np.float32), plastic=plastic.astype(np.float32),
        background=background.astype(np.float32, copy=False), speckle=speckle,
        streaks=(streaks / streaks.std()).astype(np.float32),
        image=np.empty(0),
    )
    return replace(scene, image=_compose(scene))


def _random_tuft(scene: ToothbrushScene, rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(ROWS)), int(rng.integers(COLS))


def defective(scene: ToothbrushScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """One tuft splayed: its fibres spread wider and raggedly, stray fibres poking out over its neighbours."""
    size = scene.oy.shape[0]
    r, c = _random_tuft(scene, rng)
    cy, cx = (float(v) for v in scene.centres[r, c])
    radius = TUFT_RADIUS * size * (1.1 + 0.5 * contrast + 2.0 * extent)
    reach = radius * (1.2 + 0.6 * contrast)  # loose fibres stick out this far
    box = object_square(scene.pose, size, (cy, cx), 1.5 * reach + 2)
    oy, ox = scene.oy[box], scene.ox[box]
    alpha = irregular_blob(rng, oy, ox, (cy, cx), radius)
    dy, dx = oy - cy, ox - cx
    # Loose fibres: thin strands from inside the tuft outwards; more and longer when stronger / bigger.
    strands = []
    for _ in range(2 + int(6 * contrast)):
        heading = rng.uniform(0, 2 * math.pi)
        bend = rng.normal(0, 0.25)
        start = 0.4 * radius * np.array([math.sin(heading), math.cos(heading)])
        middle = 0.8 * reach * np.array([math.sin(heading + bend), math.cos(heading + bend)])
        end = reach * np.array([math.sin(heading + 2 * bend), math.cos(heading + 2 * bend)])
        strands.append(np.array([start, middle, end], np.float32))
    width = max(0.35, 0.004 * size)
    fibres = np.max([coverage(polyline_distance(dy, dx, s), width) for s in strands], axis=0)
    speckle = scene.speckle[box]
    alpha = np.maximum(alpha * (0.75 + 0.25 * np.clip(speckle, -1, 1)), 0.9 * fibres)
    look = _tuft_look(scene, dy, dx, radius, scene.colours[r, c], r * COLS + c + 5, speckle, streakiness=3.0)
    return _with_layer(scene, Layer(box, np.clip(alpha, 0, 1), look))


def missing_tuft(scene: ToothbrushScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A tuft pulled out (its socket shows) or thinned; a larger extent takes a neighbour too."""
    r, c = _random_tuft(scene, rng)
    keep = scene.keep.copy()
    keep[r, c] = 1.0 - (0.45 + 0.55 * contrast)
    r2 = r
    if extent > 0.08:
        r2 = r + 1 if r + 1 < ROWS else r - 1
        keep[r2, c] = keep[r, c]
    # Only pixels whose nearest tuft changed can change: redraw round the two centres.
    size = scene.oy.shape[0]
    a, b = (object_square(scene.pose, size, tuple(scene.centres[row, c]), PITCH[1] * size + 2)
            for row in (r, r2))
    region = tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b))
    return _compose(replace(scene, keep=keep), region)


def contamination(scene: ToothbrushScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A foreign particle among the bristles (dark crumb, coloured fleck) or a stray hair lying across them."""
    size = scene.oy.shape[0]
    r, c = _random_tuft(scene, rng)
    cy, cx = (float(v) for v in scene.centres[r, c] + rng.uniform(-0.5, 0.5, 2) * np.array(PITCH) * size)
    colour = np.array([[0.12, 0.09, 0.07], [0.45, 0.3, 0.15], [0.7, 0.15, 0.12], [0.3, 0.5, 0.2]],
                      np.float32)[rng.integers(4)]
    strength = 0.35 + 0.65 * contrast
    if rng.random() < 0.3:  # a hair: a long thin curve
        length = max(4.0, 2.5 * extent * size)
        box = object_square(scene.pose, size, (cy, cx), length + 2)
        points = jagged_path(rng, (cy, cx), length, kinks=4, wobble=0.4)
        distance = polyline_distance(scene.oy[box], scene.ox[box], points)
        alpha = coverage(distance, max(0.4, 0.004 * size))
    else:
        radius = max(1.5, 0.5 * extent * size)
        box = object_square(scene.pose, size, (cy, cx), 1.6 * radius + 2)
        alpha = irregular_blob(rng, scene.oy[box], scene.ox[box], (cy, cx), radius)
    look = colour * (1.0 + 0.15 * scene.speckle[box])[..., None]
    return _with_layer(scene, Layer(box, alpha * strength, look))


DEFECTS = {"defective": defective, "missing_tuft": missing_tuft, "contamination": contamination}
