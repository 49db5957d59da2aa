"""Read images and masks of any common PIL mode into fixed-size tensors.

Images become float32 (3, H, W) in [0, 1], not ImageNet-normalised (the extractor does that):
  - L / 1 / P / CMYK / YCbCr / LA / RGBA -> RGB through PIL; the alpha channel is DROPPED, not composited
    (industrial images with alpha are almost always opaque exports, and compositing on black would
    darken every semi-transparent pixel for no benefit);
  - 16-bit grayscale (I;16*) is divided by 65535, the maximum of its dtype, never clipped to 8 bits;
  - 32-bit integer (I) is divided by 2**31 - 1, except when it comes from a PNG (PNG holds at most
    16 bits, and older Pillows open 16-bit PNGs as I), where it is divided by 65535;
  - float (F) is clipped to [0, 1].
Masks become float32 (1, H, W) in {0, 1}: any non-zero pixel is defect (VisA masks store small
instance ids, MVTec masks 255). Images are resized bilinearly with antialiasing (on the float data,
so 16-bit precision survives), masks with nearest neighbour so they stay binary. A mask whose size
differs from its image's is an error, checked before either is resized.

Images are decoded with `Image.open(...).load()` inside a try, so truncated files raise a
`MoleflowError` naming the file; PIL's global LOAD_TRUNCATED_IMAGES is never touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from moleflow.errors import MoleflowError

_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _fail(path: str | Path, exc: BaseException) -> MoleflowError:
    reason = " ".join(str(exc).split()) or type(exc).__name__  # PIL messages may span lines
    return MoleflowError(f"cannot read image {path} ({reason}); replace or remove the file")


def open_image(path: str | Path) -> Image.Image:
    """Fully decoded PIL image (the file is closed on return)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise MoleflowError(f"image {path} not found; check the data path") from None
    except _PIL_ERRORS as exc:
        raise _fail(path, exc) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only: cheap enough to check every file before decoding any."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise MoleflowError(f"image {path} not found; check the data path") from None
    except _PIL_ERRORS as exc:
        raise _fail(path, exc) from None


def to_float_rgb(im: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a PIL image of any mode (see the module docstring)."""
    mode = im.mode
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":
        peak = 65535.0 if im.format == "PNG" else float(2**31 - 1)
        arr = np.clip(np.asarray(im).astype(np.float64) / peak, 0.0, 1.0).astype(np.float32)
    elif mode == "F":
        arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    elif mode in ("L", "1"):
        arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    else:
        if mode in ("P", "PA"):  # go through RGBA so palette transparency does not trigger a PIL warning
            im = im.convert("RGBA")
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def to_binary_mask(im: Image.Image) -> np.ndarray:
    """(H, W) bool: True where the mask is non-zero (alpha ignored, palette resolved to colours)."""
    if im.mode in ("P", "PA"):  # palette indices are not intensities
        im = im.convert("RGBA")
    if "A" in im.getbands():
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) float array -> (3, *size) tensor, bilinear with antialiasing."""
    t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    if tuple(t.shape[1:]) == tuple(size):
        return t
    out = F.interpolate(t.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.squeeze(0).clamp_(0.0, 1.0)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) bool -> (1, *size) float32 in {0, 1}, nearest neighbour."""
    if mask.shape != tuple(size):
        im = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
        mask = np.asarray(im) > 0
    return torch.from_numpy(mask.astype(np.float32)).unsqueeze(0)


def load_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """Image file -> float32 (3, H, W) in [0, 1] at `size` = (H, W)."""
    return resize_image(to_float_rgb(open_image(path)), size)


def load_pair(image_path: str | Path, mask_path: str | Path | None,
              size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (3, H, W) and mask (1, H, W) at `size`; no mask path -> all-zero mask."""
    im = open_image(image_path)
    if mask_path is None:
        return resize_image(to_float_rgb(im), size), torch.zeros(1, *size, dtype=torch.float32)
    mask_im = open_image(mask_path)
    check_same_size(image_path, im.size, mask_path, mask_im.size)
    return resize_image(to_float_rgb(im), size), resize_mask(to_binary_mask(mask_im), size)


def check_same_size(image_path: str | Path, image_wh: tuple[int, int],
                    mask_path: str | Path, mask_wh: tuple[int, int]) -> None:
    if tuple(image_wh) != tuple(mask_wh):
        raise MoleflowError(
            f"mask {mask_path} is {mask_wh[0]}x{mask_wh[1]} but its image {image_path} is "
            f"{image_wh[0]}x{image_wh[1]} (WxH); masks must have their image's size"
        )
