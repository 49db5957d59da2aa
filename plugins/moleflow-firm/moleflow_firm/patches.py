"""Training patches for FIRM: normal patches of the clean images, outlier patches of synthetic defects,
and the two noisy views of a batch.

Design (the simplest one that is correct on features):
* normal patches (label 0) come only from the clean training images: patches of a defect image
  outside the mask still see the defect through the backbone's receptive field, so they are not
  clean negatives of it;
* each training image gets `synth_per_image` defect copies from moleflow.data.training_defects, drawn once
  per task (a backbone pass per copy; redrawing every epoch would multiply the backbone cost);
* a patch of a copy is an outlier (label -1) when at least `outlier_frac` of its grid cell is inside
  the defect mask; every copy also contributes its most-covered cell, so small defects still count;
  partly covered cells below the threshold are ambiguous and dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moleflow.data.training_defects import AnomalySynthesizer

Extract = Callable[[torch.Tensor], torch.Tensor]  # images (B,3,H,W) -> patch features (B,h,w,D)


@dataclass
class PatchPools:
    normal: torch.Tensor  # (Nn, D) features of clean-image patches
    outlier: torch.Tensor  # (No, D) features of patches covered by a synthetic defect


def extract_all(extract: Extract, images: torch.Tensor, device: torch.device, batch: int = 16) -> torch.Tensor:
    """(N,h,w,D) features of all images, computed in batches on `device`."""
    return torch.cat([extract(chunk.to(device)) for chunk in images.split(batch)])


def outlier_cells(masks: torch.Tensor, grid: tuple[int, int], min_frac: float) -> torch.Tensor:
    """(N,h,w) bool: cells of the patch grid covered by at least `min_frac` of defect, plus the most
    covered cell of every mask (an empty mask gives no cell)."""
    cover = F.adaptive_avg_pool2d(masks.float(), grid)[:, 0]  # fraction of each cell inside the mask
    chosen = cover >= min_frac
    flat = cover.flatten(1)
    best = flat.argmax(1)
    has_defect = flat.gather(1, best[:, None])[:, 0] > 0
    chosen.flatten(1)[has_defect, best[has_defect]] = True
    return chosen


def synthesize(images: torch.Tensor, copies: int, methods: tuple[str, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`copies` defect versions of every image: (N*copies,3,H,W) images and (N*copies,1,H,W) masks."""
    synth = AnomalySynthesizer(methods=methods, seed=seed)
    out = [synth(image) for _ in range(copies) for image in images.cpu()]
    return torch.stack([img for img, _ in out]), torch.stack([mask for _, mask in out])


def build_pools(extract: Extract, images: torch.Tensor, clean: torch.Tensor, *, copies: int,
                methods: tuple[str, ...], min_frac: float, seed: int, device: torch.device) -> PatchPools:
    """`clean` are the features of `images` (already computed, they also feed the memory bank)."""
    defect_images, masks = synthesize(images, copies, methods, seed)
    defect_feats = extract_all(extract, defect_images, device)
    cells = outlier_cells(masks, tuple(defect_feats.shape[1:3]), min_frac).to(device)
    return PatchPools(normal=clean.flatten(0, 2), outlier=defect_feats[cells])


def make_view(x: torch.Tensor, noise: float, dropout: float, generator: torch.Generator) -> torch.Tensor:
    """One augmented view of standardised features (P,D): inverted dropout per entry + Gaussian noise.

    Random numbers come from a CPU generator (reproducible on any device) and are moved to x."""
    keep = (torch.rand(x.shape, generator=generator) >= dropout).to(x) / (1.0 - dropout)
    return x * keep + noise * torch.randn(x.shape, generator=generator).to(x)
