"""Synthetic `cable`: the cut end of a three-core cable seen end-on, and its defects.

Normal look: a dark background; the round grey outer sheath fills most of the frame around a pale filler;
inside it three insulated cores in a triangle, always in the same order - green-yellow (earth) at the top,
blue at the lower right, brown at the lower left - each a rounded coloured ring around a bundle of
bright copper strands packed hexagonally, each core casting a soft shadow on the filler. Small changes of
position, rotation, strand twist, insulation tint and lighting.
Defects re-render the same cable with an edit: cable_swap (two cores' colours exchanged, geometry
unchanged: a logical anomaly no local patch reveals), missing_wire (copper strands gone from one core,
leaving a dark empty bore), poke_insulation (a dent pushed into one core's insulation from outside),
cut_inner_insulation (a slit cut through the insulation from the copper outwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from moleflow.synth.draw import coverage, lerp, pixel_grid
from moleflow.synth.window import fine_grain, noise, square

CABLE_R, SHEATH_IN = 0.465, 0.405  # outer and inner radius of the sheath, fractions of the image side
CORE_DIST, CORE_R, COPPER_R = 0.2, 0.163, 0.098
CORE_ANGLES = (-90.0, 30.0, 150.0)  # degrees; image y points down, so -90 is the top
COLOURS = np.array([[0.86, 0.78, 0.18], [0.16, 0.32, 0.72], [0.42, 0.25, 0.13]], dtype=np.float32)
EARTH_GREEN = np.array([0.22, 0.55, 0.25], dtype=np.float32)
HOLE = np.array([0.05, 0.04, 0.035], dtype=np.float32)


@dataclass(frozen=True)
class CoreEdit:
    """An edit of one core: a dent in its outer radius, a radial slit, or copper strands missing."""

    core: int
    angle: float  # where around the core (radians, in the core's own angle frame)
    width: float  # angular half-width (dent, slit) in radians
    depth: float = 0.0  # dent depth in pixels
    slit: float = 0.0  # fraction of the insulation's thickness the slit cuts through
    missing: np.ndarray | None = None  # alpha of the strands that are gone
    strength: float = 1.0


@dataclass(frozen=True)
class Core:
    """One core's geometry, on the window of the image it covers (its shadow included)."""

    window: tuple[slice, slice]
    dist: np.ndarray  # distance of every window pixel to the core centre, pixels
    angle: np.ndarray  # angle around the core centre (the cable's rotation removed)
    strands: np.ndarray  # distance to the nearest copper strand centre, pixels
    owner: np.ndarray  # (2, h, w) that strand's centre (dy, dx) relative to the core centre, pixels


@dataclass(frozen=True)
class CableScene:
    cores: tuple[Core, Core, Core]
    centre_dist: np.ndarray  # (H, W) distance to the cable centre, pixels
    size: int
    colour_order: tuple[int, int, int]  # which colour each core position wears
    stripe_phase: float  # where the green stripe sits on the earth core
    tints: np.ndarray  # (3, 3) per-colour gain
    noise: np.ndarray  # (H, W) unit-std fine noise (plastic texture)
    light: np.ndarray  # (H, W) slow lighting gain
    image: np.ndarray
    edit: CoreEdit | None = None


def _insulation(scene: CableScene, core: int, shade: np.ndarray) -> np.ndarray:
    colour_id = scene.colour_order[core]
    colour = shade[..., None] * (COLOURS[colour_id] * scene.tints[colour_id])
    if colour_id == 0:  # green-yellow earth: a green band on the yellow, as a helical stripe cuts it
        off = np.abs(np.mod(scene.cores[core].angle - scene.stripe_phase + math.pi, 2 * math.pi) - math.pi)
        band = coverage(off * 40, 22)
        colour = lerp(colour, shade[..., None] * (EARTH_GREEN * scene.tints[0]), band)
    return colour


def _compose(scene: CableScene) -> np.ndarray:
    s = scene.size
    cd = scene.centre_dist
    sheath = coverage(cd, CABLE_R * s)
    filler = coverage(cd, SHEATH_IN * s)
    sheath_shade = 0.36 + 0.05 * np.clip((cd - SHEATH_IN * s) * (1 / ((CABLE_R - SHEATH_IN) * s)), 0, 1)
    grey = 0.035 + sheath * (sheath_shade + 0.02 * scene.noise - 0.035)
    grey = grey + filler * (0.66 + 0.03 * scene.noise - grey)
    image = grey[..., None] * np.array([1.0, 1.0, 1.02], np.float32)
    edit = scene.edit
    radii = []
    for index, core in enumerate(scene.cores):
        outer = np.float32(CORE_R * s)
        if edit is not None and edit.core == index and edit.depth > 0:
            off = np.mod(core.angle - edit.angle + math.pi, 2 * math.pi) - math.pi
            outer = outer - edit.depth * np.exp(-0.5 * (off / edit.width) ** 2)
        radii.append(outer)
        # The core's soft shadow on the filler (all shadows before any core: windows overlap).
        gap = np.maximum(core.dist - outer, 0)
        image[core.window] *= (1 - 0.3 * np.exp(gap * (-1 / (0.012 * s))) * filler[core.window])[..., None]

    thick = (CORE_R - COPPER_R) * s
    copper_r = COPPER_R * s
    r_strand = 0.47 * copper_r / 3.2
    for index, core in enumerate(scene.cores):
        d, mine = core.dist, edit is not None and edit.core == index
        t = np.clip((d - copper_r) / np.maximum(radii[index] - copper_r, 1e-3), 0, 1)
        shade = 0.72 + 0.38 * np.sin(math.pi * (0.15 + 0.85 * t)) + 0.03 * scene.noise[core.window]
        if mine:
            off = np.mod(core.angle - edit.angle + math.pi, 2 * math.pi) - math.pi
            if edit.depth > 0:  # the pushed-in plastic is creased: darker in the dent
                crease = np.exp(-0.5 * (off / edit.width) ** 2) * np.clip(1 - (radii[index] - d) / (0.5 * thick), 0, 1)
                shade = shade * (1 - 0.45 * edit.strength * crease)
            if edit.slit > 0:
                reach = copper_r + edit.slit * thick
                slit = coverage(np.abs(off) * d, edit.width * CORE_R * s) * coverage(d - copper_r, reach - copper_r)
                shade = shade * (1 - 0.82 * slit * edit.strength)
        patch = lerp(image[core.window], _insulation(scene, index, shade), coverage(d, radii[index]))
        # Copper: round strands with a bright crest, dark gaps between them.
        profile = np.sqrt(np.clip(1 - (core.strands * (1 / r_strand)) ** 2, 0, 1))
        bright = coverage(core.strands, r_strand) * (0.45 + 0.6 * profile)
        copper = bright[..., None] * np.array([0.93, 0.6, 0.32], np.float32)
        copper += (1 - coverage(core.strands, r_strand))[..., None] * np.array([0.22, 0.11, 0.05], np.float32)
        if mine and edit.missing is not None:
            bore = HOLE * (0.8 + 0.6 * np.clip(d / copper_r, 0, 1))[..., None]  # lit wall at the rim
            copper = lerp(copper, bore, edit.missing * edit.strength)
        patch = lerp(patch, copper, coverage(d, copper_r))
        image[core.window] = patch
    return np.clip(image * scene.light[..., None], 0, 1)


def _hex_lattice(a: np.ndarray, b: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance to the nearest point of a hexagonal lattice (union of two offset rectangular lattices), and
    that point's (a, b) coordinates."""
    h = spacing * math.sqrt(3)
    a1, b1 = spacing * np.round(a * (1 / spacing)), h * np.round(b * (1 / h))
    a2 = spacing * np.round((a - spacing / 2) * (1 / spacing)) + spacing / 2
    b2 = h * np.round((b - h / 2) * (1 / h)) + h / 2
    d1, d2 = np.hypot(a - a1, b - b1), np.hypot(a - a2, b - b2)
    first = d1 <= d2
    return np.where(first, d1, d2), np.where(first, a1, a2), np.where(first, b1, b2)


def render_cable(rng: np.random.Generator, size: int) -> CableScene:
    scale = size / 256
    y, x = pixel_grid(size)
    centre = [float((size - 1) / 2 + rng.uniform(-3, 3) * scale) for _ in range(2)]
    turn = math.radians(rng.uniform(-4, 4))
    cores = []
    for base in CORE_ANGLES:
        a = math.radians(base) + turn
        r = float(CORE_DIST + rng.normal(0, 0.003)) * size
        cy, cx = centre[0] + r * math.sin(a), centre[1] + r * math.cos(a)
        window = square(size, cy, cx, (CORE_R + 0.05) * size)
        dy, dx = y[window] - cy, x[window] - cx
        twist = float(rng.uniform(0, math.pi / 3))
        cos, sin = math.cos(twist), math.sin(twist)
        ja, jb = (float(j) for j in rng.normal(0, 0.02 * COPPER_R * size, 2))
        d, pa, pb = _hex_lattice(cos * dy + sin * dx + ja, cos * dx - sin * dy + jb, COPPER_R * size / 3.2)
        pa, pb = pa - ja, pb - jb  # the owning strand's centre, back in image axes
        owner = np.stack([cos * pa - sin * pb, sin * pa + cos * pb])
        cores.append(Core(window, np.hypot(dy, dx), np.arctan2(dy, dx) - np.float32(turn), d, owner))
    gy, gx = (float(g) for g in rng.normal(0, 0.04, 2))
    light = (float(rng.uniform(0.94, 1.06)) + gy * (y * (1 / size) - 0.5) + gx * (x * (1 / size) - 0.5)
             + 0.03 * noise(rng, size, 40 * scale))
    scene = CableScene(
        cores=tuple(cores), centre_dist=np.hypot(y - centre[0], x - centre[1]), size=size, colour_order=(0, 1, 2),
        stripe_phase=float(rng.uniform(-math.pi, math.pi)), tints=rng.uniform(0.93, 1.07, (3, 3)).astype(np.float32),
        noise=fine_grain(rng, (size, size)), light=light, image=np.empty(0),
    )
    return replace(scene, image=_compose(scene))


def cable_swap(scene: CableScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """Two cores wear each other's colours; the geometry is untouched (extent and contrast unused)."""
    first, second = rng.choice(3, 2, replace=False)
    order = list(scene.colour_order)
    order[first], order[second] = order[second], order[first]
    return _compose(replace(scene, colour_order=tuple(order)))


def missing_wire(scene: CableScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """Copper strands gone from one core: a dark bore; extent sets how many strands go (at 0.1+: all)."""
    core = int(rng.integers(3))
    s = scene.size
    reach = max(1.5, 1.6 * extent * s)
    # Whole strands go, from one side inwards, as a wire pulled out leaves a crescent first.
    side = rng.uniform(-math.pi, math.pi)
    owner = scene.cores[core].owner
    along = owner[0] * math.sin(side) + owner[1] * math.cos(side)
    missing = (along >= COPPER_R * s - reach).astype(np.float32)
    edit = CoreEdit(core, side, 0.0, missing=missing.astype(np.float32), strength=float(0.55 + 0.45 * contrast))
    return _compose(replace(scene, edit=edit))


def poke_insulation(scene: CableScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A dent pushed into one core's insulation from outside."""
    core = int(rng.integers(3))
    s = scene.size
    thick = (CORE_R - COPPER_R) * s
    depth = min(0.85 * thick, max(1.2, (0.25 + 0.75 * contrast) * 0.8 * extent * s))
    width = min(0.5, max(0.08, 0.35 * extent / CORE_R))
    edit = CoreEdit(core, float(rng.uniform(-math.pi, math.pi)), width, depth=depth, strength=float(contrast))
    return _compose(replace(scene, edit=edit))


def cut_inner_insulation(scene: CableScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
    """A slit cut into one core's insulation from the copper outwards; extent sets its width and reach."""
    core = int(rng.integers(3))
    width = float(np.clip(0.12 * extent / 0.05, 0.03, 0.35) * 0.5)
    slit = float(np.clip(0.3 + 6 * extent, 0.3, 0.95))
    edit = CoreEdit(core, float(rng.uniform(-math.pi, math.pi)), width, slit=slit, strength=float(0.4 + 0.6 * contrast))
    return _compose(replace(scene, edit=edit))


DEFECTS = {"cable_swap": cable_swap, "missing_wire": missing_wire, "poke_insulation": poke_insulation,
           "cut_inner_insulation": cut_inner_insulation}
