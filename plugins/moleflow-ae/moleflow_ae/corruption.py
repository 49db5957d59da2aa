"""What a training batch goes through before the AE sees it: a conservative geometric augmentation of
the clean image, then (optionally) a synthetic defect. The AE is asked to map the corrupted image back
to the clean one, so at test time it repairs real defects instead of copying them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moleflow.data.training_defects import AnomalySynthesizer

from moleflow_ae.options import AEOptions

#: defects the AE learns to repair; both are local, so the rest of the image stays a clean target
METHODS = ("masking", "noise")


class TrainingCorruption:
    """Deterministic from `seed`: the same seed draws the same augmentations and defects."""

    def __init__(self, opts: AEOptions, seed: int) -> None:
        self.opts = opts
        self.generator = torch.Generator().manual_seed(seed)
        self.synthesizer = (AnomalySynthesizer(methods=METHODS, keep_on_foreground=opts.foreground, seed=seed)
                            if opts.synthetic and opts.anomaly_prob > 0 else None)

    def _uniform(self, n: int, half_width: float) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) * 2 - 1) * half_width

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Random rotation (+-rotate deg) and zoom (1 +- scale) per image, reflection at the borders."""
        if self.opts.rotate == 0 and self.opts.scale == 0:
            return images
        n, _, height, width = images.shape
        angle = self._uniform(n, math.radians(self.opts.rotate))
        zoom = 1 + self._uniform(n, self.opts.scale)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # affine_grid works in [-1,1] coordinates per axis; the H/W factors make the rotation rigid in
        # pixels on non-square images instead of shearing them
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * height / width
        theta[:, 1, 0], theta[:, 1, 1] = sin * width / height, cos
        grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def corrupt(self, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, defect mask (N,1,H,W)): each image gets a defect with probability anomaly_prob."""
        masks = torch.zeros(clean.shape[0], 1, *clean.shape[-2:])
        if self.synthesizer is None:
            return clean, masks
        hit = torch.rand(clean.shape[0], generator=self.generator) < self.opts.anomaly_prob
        corrupted = clean.clone()
        for i in hit.nonzero().flatten().tolist():
            corrupted[i], masks[i] = self.synthesizer(clean[i], generator=self.generator)
        return corrupted, masks

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(corrupted input, clean target, defect mask) for a CPU batch of clean images."""
        clean = self.augment(images)
        corrupted, masks = self.corrupt(clean)
        return corrupted, clean, masks
