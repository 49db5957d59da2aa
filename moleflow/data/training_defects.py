"""Synthetic defects for self-supervised training (used by the AE and FIRM plugins).

Every method takes an image (C,H,W) float in [0,1] and a torch.Generator (or an int seed) and returns
(changed image, mask (1,H,W) float32 in {0,1}). The mask is exact: it is the set of pixels whose value
actually changed, so every pixel outside it is bitwise the input. A draw that would change nothing is
redrawn, so the mask is never empty. With `foreground` (bool (1,H,W)) defects stay on the object.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from scipy import ndimage
from skimage.filters import threshold_otsu

from moleflow.errors import MoleflowError

Range = tuple[float, float]
Draw = Callable[[torch.Generator, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
MAX_ATTEMPTS = 20
FILLS = ("noise", "mean", "zero")
FOREGROUND_METHODS = ("otsu", "border")


def as_generator(generator: torch.Generator | int) -> torch.Generator:
    """A torch.Generator as is, or a fresh CPU generator seeded with an int."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise MoleflowError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}; "
                        "pass e.g. generator=0")


def _uniform(g: torch.Generator, bounds: Range) -> float:
    low, high = bounds
    return float(low + (high - low) * torch.rand((), generator=g))


def _log_uniform(g: torch.Generator, bounds: Range) -> float:
    return math.exp(_uniform(g, (math.log(bounds[0]), math.log(bounds[1]))))


def _randint(g: torch.Generator, low: float, high: float) -> int:
    """Integer in [low, high], both inclusive."""
    return int(torch.randint(int(low), int(high) + 1, (), generator=g))


def _pick_pixel(g: torch.Generator, allowed: torch.Tensor) -> tuple[int, int]:
    """(row, col) of a uniformly chosen allowed pixel: a defect centred there always touches `allowed`."""
    flat = torch.nonzero(allowed.flatten().cpu()).squeeze(1)
    return divmod(int(flat[torch.randint(len(flat), (), generator=g)]), allowed.shape[1])


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or not image.is_floating_point():
        got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise MoleflowError(f"expected a float image tensor (C,H,W) in [0,1], got {got}; "
                            "convert with torch.as_tensor(array, dtype=torch.float32).permute(2, 0, 1) / 255")


def _check_foreground(foreground: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
    """(H,W) bool mask on the image's device; all True when no foreground is given."""
    height, width = image.shape[-2:]
    if foreground is None:
        return torch.ones(height, width, dtype=torch.bool, device=image.device)
    fg = torch.as_tensor(foreground, device=image.device)
    if fg.ndim == 3 and fg.shape[0] == 1:
        fg = fg[0]
    if tuple(fg.shape) != (height, width):
        raise MoleflowError(f"foreground mask has shape {tuple(torch.as_tensor(foreground).shape)}, the image is "
                            f"{tuple(image.shape)}; pass a (1,{height},{width}) bool mask")
    fg = fg > 0.5 if fg.is_floating_point() else fg.bool()
    if not fg.any():
        raise MoleflowError("foreground mask is empty, so there is no pixel to put a defect on; pass "
                            "foreground=None or a mask that marks the object")
    return fg


def _synthesize(image: torch.Tensor, generator: torch.Generator | int, foreground: torch.Tensor | None,
                draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `draw(g, fg, attempt) -> (candidate (C,H,W), region (H,W) bool)` until some pixel changes.

    Pixels are taken from the candidate only inside region ∩ foreground (torch.where keeps the rest
    bitwise), and the mask is what really changed: a fill equal to the old value is not a defect."""
    _check_image(image)
    g = as_generator(generator)
    fg = _check_foreground(foreground, image)
    for attempt in range(MAX_ATTEMPTS):
        candidate, region = draw(g, fg, attempt)
        candidate = candidate.to(image).clamp(0.0, 1.0)
        out = torch.where(region & fg, candidate, image)
        changed = (out != image).any(dim=0, keepdim=True)
        if changed.any():
            return out, changed.float()
    raise MoleflowError(f"no pixel changed in {MAX_ATTEMPTS} draws on an image {tuple(image.shape)} with values in "
                        f"[{float(image.min()):.3g}, {float(image.max()):.3g}]; the image is probably constant at "
                        "the fill value: use another method or fill")


def _pixel_grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    axes = (torch.arange(n, dtype=torch.float32, device=device) for n in (height, width))
    return torch.meshgrid(*axes, indexing="ij")


def _rectangle(shape: tuple[int, int], centre: tuple[int, int], size: tuple[int, int], device) -> torch.Tensor:
    region = torch.zeros(shape, dtype=torch.bool, device=device)
    top, left = centre[0] - size[0] // 2, centre[1] - size[1] // 2
    region[max(top, 0): top + size[0], max(left, 0): left + size[1]] = True
    return region


def _ellipse(g: torch.Generator, shape: tuple[int, int], centre: tuple[int, int], area: float, device) -> torch.Tensor:
    """Randomly oriented ellipse of about `area` pixels (axis ratio 1/2..2); always contains its centre."""
    ratio, angle = _log_uniform(g, (0.5, 2.0)), _uniform(g, (0.0, math.pi))
    semi_a, semi_b = math.sqrt(area * ratio / math.pi), math.sqrt(area / (ratio * math.pi))
    rows, cols = _pixel_grid(*shape, device)
    dy, dx = rows - centre[0], cols - centre[1]
    along = dy * math.cos(angle) + dx * math.sin(angle)
    across = -dy * math.sin(angle) + dx * math.cos(angle)
    return (along / semi_a) ** 2 + (across / semi_b) ** 2 <= 1.0


# ----------------------------------------------------------------------------------------- methods
def random_masking(image: torch.Tensor, *, generator: torch.Generator | int, num_patches: Range = (1, 4),
                   patch_frac: Range = (0.05, 0.2), fill: str = "noise",
                   foreground: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Blank out 1..N rectangles (height, width each a `patch_frac` of the image side) with noise/mean/zero."""
    if fill not in FILLS:
        raise MoleflowError(f"unknown fill {fill!r} for random_masking; use one of {', '.join(FILLS)}")
    shape = tuple(image.shape[-2:])

    def draw(g: torch.Generator, fg: torch.Tensor, attempt: int) -> tuple[torch.Tensor, torch.Tensor]:
        region = torch.zeros(shape, dtype=torch.bool, device=image.device)
        for _ in range(_randint(g, *num_patches)):
            size = tuple(max(1, round(_uniform(g, patch_frac) * side)) for side in shape)
            region |= _rectangle(shape, _pick_pixel(g, fg), size, image.device)
        if fill == "noise":
            return torch.rand(image.shape, generator=g), region
        if fill == "mean":
            return image.mean(dim=(1, 2), keepdim=True).expand_as(image), region
        return torch.zeros_like(image), region

    return _synthesize(image, generator, foreground, draw)


def noise_injection(image: torch.Tensor, *, generator: torch.Generator | int, sigma: Range = (0.05, 0.3),
                    region_frac: Range = (0.05, 0.3),
                    foreground: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Add Gaussian noise (std drawn from `sigma`) inside an ellipse covering `region_frac` of the image."""
    shape = tuple(image.shape[-2:])

    def draw(g: torch.Generator, fg: torch.Tensor, attempt: int) -> tuple[torch.Tensor, torch.Tensor]:
        area = _uniform(g, region_frac) * shape[0] * shape[1]
        region = _ellipse(g, shape, _pick_pixel(g, fg), area, image.device)
        noise = _uniform(g, sigma) * torch.randn(image.shape, generator=g)
        return image + noise.to(image), region

    return _synthesize(image, generator, foreground, draw)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _colour_jitter(patch: torch.Tensor, g: torch.Generator, strength: float) -> torch.Tensor:
    """Brightness, contrast, and for RGB saturation and hue, each by up to `strength` (torchvision's ColorJitter)."""
    if strength <= 0:
        return patch
    factors = [_uniform(g, (1 - strength, 1 + strength)) for _ in range(3)]
    out = patch * factors[0]
    out = ((out - out.mean()) * factors[1] + out.mean()).clamp(0, 1)
    if patch.shape[0] == 3:
        rgb_to_yiq = _RGB_TO_YIQ.to(patch)
        grey = torch.einsum("c,chw->hw", rgb_to_yiq[0], out)
        out = (out - grey) * factors[2] + grey
        turn = 2 * math.pi * _uniform(g, (-strength, strength))  # hue = rotation of the chroma plane (I, Q)
        rotate = torch.tensor([[1, 0, 0], [0, math.cos(turn), -math.sin(turn)], [0, math.sin(turn), math.cos(turn)]])
        matrix = torch.linalg.inv(rgb_to_yiq) @ rotate.to(patch) @ rgb_to_yiq
        out = torch.einsum("dc,chw->dhw", matrix, out)
    return out.clamp(0, 1)


def cutpaste(image: torch.Tensor, *, generator: torch.Generator | int, area_frac: Range = (0.02, 0.15),
             aspect: Range = (0.3, 3.3), scar: bool = False, jitter: float = 0.1,
             foreground: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste (Li et al. 2021): cut a rectangle, colour-jitter it, paste it elsewhere.

    Rectangle: `area_frac` of the image, width/height log-uniform in `aspect`. Scar: a thin strip
    (width 2..16, length 10..25 pixels at 256 px, scaled to the image) pasted rotated by -45..45 deg."""
    channels, height, width = image.shape
    rows, cols = _pixel_grid(height, width, image.device)

    def draw(g: torch.Generator, fg: torch.Tensor, attempt: int) -> tuple[torch.Tensor, torch.Tensor]:
        if scar:
            scale = min(height, width) / 256
            size_w = max(1, round(_uniform(g, (2, 16)) * scale))
            size_h = max(3, round(_uniform(g, (10, 25)) * scale))
            angle = math.radians(_uniform(g, (-45, 45)))
        else:
            area, ratio = _uniform(g, area_frac) * height * width, _log_uniform(g, aspect)
            size_h, size_w = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
            angle = 0.0
        size_h, size_w = min(max(size_h, 1), height), min(max(size_w, 1), width)
        top, left = _randint(g, 0, height - size_h), _randint(g, 0, width - size_w)
        patch = _colour_jitter(image[:, top: top + size_h, left: left + size_w], g, jitter)
        centre = _pick_pixel(g, fg)
        # Each target pixel looks up its source through the inverse rotation (nearest neighbour).
        dy, dx = rows - centre[0], cols - centre[1]
        src_row = torch.round(dy * math.cos(angle) + dx * math.sin(angle)).long() + size_h // 2
        src_col = torch.round(-dy * math.sin(angle) + dx * math.cos(angle)).long() + size_w // 2
        region = (src_row >= 0) & (src_row < size_h) & (src_col >= 0) & (src_col < size_w)
        candidate = image.clone()
        candidate[:, region] = patch[:, src_row[region], src_col[region]]
        return candidate, region

    return _synthesize(image, generator, foreground, draw)


def perlin_noise(shape: tuple[int, int], cells: tuple[float, float], *, generator: torch.Generator | int,
                 angle: float = 0.0) -> torch.Tensor:
    """2-D gradient (Perlin) noise (H,W) in about [-1, 1], with `cells` lattice periods along (H, W).

    The lattice is rotated by `angle` and randomly offset; each pixel gathers its cell's four gradients
    at once. Scaled by sqrt(2) like DRAEM's rand_perlin_2d, so 0.5 is a comparable threshold. The maths
    runs in numpy: torch's threaded element-wise kernels thrash on a busy 2-core machine (~50x slower)."""
    g = as_generator(generator)
    height, width = shape
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5 - height / 2,
                             np.arange(width, dtype=np.float32) + 0.5 - width / 2, indexing="ij")
    lat_y = (rows * math.cos(angle) - cols * math.sin(angle)) * (cells[0] / height)
    lat_x = (rows * math.sin(angle) + cols * math.cos(angle)) * (cells[1] / width)
    offset = torch.rand(2, generator=g).numpy()
    lat_y += offset[0] - np.floor(lat_y.min())
    lat_x += offset[1] - np.floor(lat_x.min())
    frac_y, frac_x = lat_y - np.floor(lat_y), lat_x - np.floor(lat_x)
    cell_y, cell_x = lat_y.astype(np.int64), lat_x.astype(np.int64)  # truncation == floor: coords are >= 0
    theta = 2 * math.pi * torch.rand(int(cell_y.max()) + 2, int(cell_x.max()) + 2, generator=g).numpy()
    grad_y, grad_x = np.sin(theta), np.cos(theta)

    def corner(off_y: int, off_x: int) -> np.ndarray:
        iy, ix = cell_y + off_y, cell_x + off_x
        return grad_y[iy, ix] * (frac_y - off_y) + grad_x[iy, ix] * (frac_x - off_x)

    fade_y, fade_x = (t * t * t * (t * (6 * t - 15) + 10) for t in (frac_y, frac_x))
    top, bottom = corner(0, 0), corner(1, 0)
    top += fade_x * (corner(0, 1) - top)
    bottom += fade_x * (corner(1, 1) - bottom)
    return torch.from_numpy(math.sqrt(2) * (top + fade_y * (bottom - top)))


def _noise_texture(g: torch.Generator, channels: int, shape: tuple[int, int]) -> torch.Tensor:
    """Fractal Perlin texture (4 octaves) per channel, stretched to [0,1]: stands in for DRAEM's DTD images."""
    base = _randint(g, 2, 8)
    layers = []
    for _ in range(channels):
        field = sum(0.5**octave * perlin_noise(shape, (base * 2**octave,) * 2, generator=g,
                                               angle=_uniform(g, (0, math.pi))) for octave in range(4))
        layers.append((field - field.min()) / (field.max() - field.min() + 1e-8))
    return torch.stack(layers)


def _fit_texture(texture: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Resize a texture image to the image (bilinear) and match its channel count."""
    _check_image(texture)
    fitted = F.interpolate(texture[None].float(), size=tuple(image.shape[-2:]), mode="bilinear",
                           align_corners=False)[0].to(image)
    if fitted.shape[0] == image.shape[0]:
        return fitted
    if fitted.shape[0] == 1:
        return fitted.expand_as(image)
    return fitted.mean(dim=0, keepdim=True).expand_as(image)


def perlin_texture(image: torch.Tensor, *, generator: torch.Generator | int, texture: torch.Tensor | None = None,
                   scale: tuple[int, int] = (2, 6), threshold: float = 0.5, beta: Range = (0.2, 0.8),
                   foreground: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM-style: where Perlin noise > threshold, blend in a texture with opacity beta.

    `scale`: noise cells along the shorter side, drawn per axis (the longer side gets proportionally
    more so blobs are not stretched by the image aspect). `texture`: another image (any size, 1 or 3
    channels), or None for a generated fractal-noise texture."""
    _check_image(image)
    channels, height, width = image.shape
    fitted = None if texture is None else _fit_texture(texture, image)
    shorter = min(height, width)

    def draw(g: torch.Generator, fg: torch.Tensor, attempt: int) -> tuple[torch.Tensor, torch.Tensor]:
        cells = (_randint(g, *scale) * height / shorter, _randint(g, *scale) * width / shorter)
        noise = perlin_noise((height, width), cells, generator=g, angle=_uniform(g, (0, 2 * math.pi))).to(image.device)
        region = noise > threshold
        if not (region & fg).any():
            if attempt < MAX_ATTEMPTS // 2:
                return image, region  # redraw, as DRAEM does
            region = noise >= torch.quantile(noise[fg], 0.9)  # enlarge: the strongest noise on the foreground
        blend = _uniform(g, beta)
        source = fitted if fitted is not None else _noise_texture(g, channels, (height, width)).to(image)
        return (1 - blend) * image + blend * source, region

    return _synthesize(image, generator, foreground, draw)


# ----------------------------------------------------------------------------------------- foreground
def foreground_mask(image: torch.Tensor, *, method: str = "otsu", border_width: int = 4, tolerance: float = 0.1,
                    fill_holes: bool = True) -> torch.Tensor:
    """(1,H,W) bool estimate of the object, so defects can be kept on it.

    "otsu": Otsu threshold on grey levels; the side that covers most of the image border is background.
    "border": background colour = median of a `border_width` frame; foreground differs by > `tolerance`.
    One-pixel specks are removed and holes filled. No distinct object (constant image, texture filling
    the frame) -> everything is foreground."""
    _check_image(image)
    if method not in FOREGROUND_METHODS:
        raise MoleflowError(f"unknown foreground method {method!r}; use one of {', '.join(FOREGROUND_METHODS)}")
    pixels = image.detach().float().cpu().numpy()
    height, width = pixels.shape[1:]
    frame = max(1, min(border_width, height // 2, width // 2))
    border = np.ones((height, width), dtype=bool)
    border[frame:-frame, frame:-frame] = False
    if method == "otsu":
        grey = pixels.mean(axis=0)
        if np.ptp(grey) < 1e-6:
            return torch.ones(1, height, width, dtype=torch.bool, device=image.device)
        above = grey > threshold_otsu(grey)
        fg = above if above[border].mean() < 0.5 else ~above
    else:
        background = np.median(pixels[:, border], axis=1)
        fg = np.abs(pixels - background[:, None, None]).max(axis=0) > tolerance
    fg = ndimage.binary_opening(fg)
    if fill_holes:
        fg = ndimage.binary_fill_holes(fg)
    if not fg.any():
        fg[:] = True
    return torch.from_numpy(fg)[None].to(image.device)


# ----------------------------------------------------------------------------------------- synthesizer
METHODS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "masking": random_masking,
    "noise": noise_injection,
    "cutpaste": cutpaste,
    "scar": functools.partial(cutpaste, scar=True),
    "perlin": perlin_texture,
}


class AnomalySynthesizer:
    """Applies one method, picked uniformly at random, per call; deterministic from `seed`.

    Per-method options go in keyword dicts: AnomalySynthesizer(cutpaste={"jitter": 0.2}, masking={"fill": "zero"}).
    Inside DataLoader workers the generator is re-seeded once per worker from (seed, worker seed), so
    workers do not repeat each other; seed the DataLoader (generator=...) for reproducible runs."""

    def __init__(self, methods: tuple[str, ...] | list[str] = ("masking", "noise", "cutpaste", "perlin"),
                 keep_on_foreground: bool = False, seed: int = 0, foreground_method: str = "otsu",
                 **method_options: dict) -> None:
        unknown = [name for name in methods if name not in METHODS]
        if not methods or unknown:
            raise MoleflowError(f"unknown anomaly method(s) {unknown or '(none given)'}; "
                                f"choose from {', '.join(METHODS)}")
        if foreground_method not in FOREGROUND_METHODS:
            raise MoleflowError(f"unknown foreground method {foreground_method!r}; "
                                f"use one of {', '.join(FOREGROUND_METHODS)}")
        for name, options in method_options.items():
            if name not in methods:
                raise MoleflowError(f"options given for {name!r}, which is not in methods {tuple(methods)}; add it "
                                    "to methods or drop the argument")
            allowed = set(inspect.signature(METHODS[name]).parameters) - {"image", "generator", "foreground"}
            bad = sorted(set(options) - allowed)
            if bad:
                raise MoleflowError(f"unknown option(s) {bad} for anomaly method {name!r}; valid: {sorted(allowed)}")
        self.methods = tuple(methods)
        self.method_options = {name: dict(options) for name, options in method_options.items()}
        self.keep_on_foreground = keep_on_foreground
        self.foreground_method = foreground_method
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker_id: int | None = None

    def _generator_for_this_process(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.id != self._worker_id:
            self._worker_id = info.id
            self.generator.manual_seed(hash((self.seed, info.seed)) % 2**63)
        return self.generator

    def __call__(self, image: torch.Tensor, *,
                 generator: torch.Generator | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(changed image, mask); pass `generator` to draw from it instead of the synthesizer's own."""
        g = self._generator_for_this_process() if generator is None else as_generator(generator)
        name = self.methods[_randint(g, 0, len(self.methods) - 1)]
        fg = foreground_mask(image, method=self.foreground_method) if self.keep_on_foreground else None
        return METHODS[name](image, generator=g, foreground=fg, **self.method_options.get(name, {}))
