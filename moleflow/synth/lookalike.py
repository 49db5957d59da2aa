"""Look-alike lots: the embedded benchmark's routing stress test (`moleflow synth --classes lookalike`).

Two lots of one product look the same but for one subtle property of the whole image, here a colour cast of a
few percent (as two production lots, or a product before and after a supplier change, do). A router that
compares one pooled feature per image with one prototype per task tells the lots' normal images apart by that
small shift; a defect large or contrasting enough moves the pooled feature further than the lots lie apart,
and the image goes to the other lot's expert. MVTec's classes are too unlike each other to show this, so the
harness needs these. (A lot that differs in texture instead, 50 % more speckles on the pill or a 20 % coarser
leather grain, was tried: at 128 px even the normal images of such lots are not told apart reliably by any
router here, so it measured the features, not the router.)

A lot is a base class of the benchmark rendered as usual, then its colours multiplied by the lot's per-channel
gains; its defects are the base class's, drawn larger and stronger than the benchmark's defaults (`EXTENT`,
`CONTRAST`), and cast the same way. Each lot has its own seed index, so no lot shares an image with its base
class or with the other lot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

#: defect size (fraction of the image side) and strength of the lots' defects: large and contrasting
EXTENT = (0.15, 0.3)
CONTRAST = (0.6, 1.0)
#: lot name -> (base class, per-channel RGB gains); lot 1 is the base look, lot 2 a warmer cast. The leather's cast
#: is twice the pill's: its hides already vary by +-2 % per channel and +-3 % in brightness from image to image,
#: and a cast inside that spread left the lots' normal images indistinguishable (routing 0.40 with the default
#: router at a +4 % / -5 % cast)
LOTS: Mapping[str, tuple[str, tuple[float, float, float]]] = {
    "pill_lot1": ("pill", (1.0, 1.0, 1.0)),
    "pill_lot2": ("pill", (1.04, 1.0, 0.95)),
    "leather_lot1": ("leather", (1.0, 1.0, 1.0)),
    "leather_lot2": ("leather", (1.08, 1.0, 0.9)),
}


@dataclass(frozen=True)
class LotScene:
    """The base class's scene (its defects re-render from it) and the lot's cast image."""
    base: Any
    image: np.ndarray


def _cast(image: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(image * np.asarray(gains, dtype=np.float32), 0.0, 1.0)


def lot_renderer(render: Callable[[np.random.Generator, int], Any], gains: tuple[float, float, float]
                 ) -> Callable[[np.random.Generator, int], LotScene]:
    def render_lot(rng: np.random.Generator, size: int) -> LotScene:
        scene = render(rng, size)
        return LotScene(scene, _cast(scene.image, gains))
    return render_lot


def lot_defect(defect: Callable[..., np.ndarray], gains: tuple[float, float, float]) -> Callable[..., np.ndarray]:
    def defect_of_lot(scene: LotScene, rng: np.random.Generator, extent: float, contrast: float) -> np.ndarray:
        return _cast(defect(scene.base, rng, extent, contrast), gains)
    return defect_of_lot
