"""Why moleflow keeps its own PNG encoder (evaluation/visualize.py `encode_png`) instead of PIL: both encode
the same realistic overlays (a textured image half-blended with a smooth jet map, as in heatmaps/) in one
process, best of 3; both are checked lossless. Run: `python benchmarks/png_encode.py`.
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image

from moleflow.evaluation.visualize import blend_map, encode_png


def pil_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def overlays(n: int, side: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        base = torch.rand(1, 3, side // 8, side // 8, generator=generator)
        img = torch.nn.functional.interpolate(base, size=(side, side), mode="bilinear", align_corners=False)[0]
        img = (img.permute(1, 2, 0).numpy() * 180 + rng.normal(0, 12, (side, side, 3)) + 30).clip(0, 255)
        coarse = torch.rand(1, 1, side // 16, side // 16, generator=generator)
        amap = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        out.append(blend_map(img.astype(np.uint8), amap[0, 0].numpy(), 0.0, 1.0))
    return out


def best_of_3(encode, images: list[np.ndarray]) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(3):
        start = time.perf_counter()
        size = sum(len(encode(im)) for im in images)
        times.append(time.perf_counter() - start)
    return min(times), size


def main() -> None:
    for side in (256, 128):
        images = overlays(50, side, side)
        for im in images:
            for encode in (encode_png, pil_png):
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode(im)))), im), "not lossless"
        own, own_size = best_of_3(encode_png, images)
        pil, pil_size = best_of_3(pil_png, images)
        print(f"50 overlays {side}x{side}: moleflow {own / 50 * 1e3:.2f} ms/img ({own_size / 50 / 1024:.0f} KiB), "
              f"PIL compress_level=1 {pil / 50 * 1e3:.2f} ms/img ({pil_size / 50 / 1024:.0f} KiB): "
              f"moleflow {pil / own:.1f}x faster")


if __name__ == "__main__":
    main()
