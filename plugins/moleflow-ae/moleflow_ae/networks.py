"""Convolutional reconstruction networks: a bottleneck autoencoder and a U-Net built from the same layers.

Both are fully convolutional, so any image size works: the input is padded (replicate) up to a multiple
of 2**depth and the output cropped back, so e.g. 976x176 or 40x72 need no resizing. The only difference
between the two is the skip connections; `matched_unet_shape` picks the U-Net's width (and bottleneck) so both have about
the same number of parameters, which keeps an AE-vs-U-Net comparison about the skips, not the size.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


def level_widths(width: int, depth: int) -> list[int]:
    """Channels of level 0 (full resolution) .. depth (coarsest): doubling, capped at 8x `width`."""
    return [width * 2 ** min(level, 3) for level in range(depth + 1)]


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True)]


class ReconstructionNet(nn.Module):
    """Encoder (stem + `depth` stride-2 levels) -> 1x1 bottleneck of `latent` channels -> decoder.

    With `skips` (U-Net), each decoder level also sees the encoder features of its resolution."""

    def __init__(self, channels: int, width: int, depth: int, latent: int, skips: bool) -> None:
        super().__init__()
        self.depth, self.skips = depth, skips
        widths = level_widths(width, depth)
        self.stem = nn.Sequential(*_conv(channels, widths[0]))
        self.down = nn.ModuleList(
            nn.Sequential(*_conv(widths[i - 1], widths[i], stride=2), *_conv(widths[i], widths[i]))
            for i in range(1, depth + 1))
        self.bottleneck = nn.Sequential(nn.Conv2d(widths[-1], latent, 1), nn.LeakyReLU(0.2, inplace=True),
                                        nn.Conv2d(latent, widths[-1], 1), nn.LeakyReLU(0.2, inplace=True))
        # up[j] goes from level depth-j to level depth-j-1
        self.up = nn.ModuleList(
            nn.Sequential(*_conv(widths[i] + (widths[i - 1] if skips else 0), widths[i - 1]),
                          *_conv(widths[i - 1], widths[i - 1]))
            for i in range(depth, 0, -1))
        self.head = nn.Conv2d(widths[0], channels, 1)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad bottom/right to a multiple of 2**depth (crop the result with `[..., :H, :W]`)."""
        step = 2 ** self.depth
        height, width = x.shape[-2:]
        return F.pad(x, (0, -width % step, 0, -height % step), mode="replicate")

    def encode(self, padded: torch.Tensor) -> list[torch.Tensor]:
        """Features of levels 0..depth of a padded input (level i at 1/2**i resolution)."""
        feats = [self.stem(padded)]
        for block in self.down:
            feats.append(block(feats[-1]))
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottleneck(feats[-1])
        for j, block in enumerate(self.up):
            skip = feats[self.depth - j - 1]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1) if self.skips else x)
        return torch.sigmoid(self.head(x))  # images live in [0,1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return self.decode(self.encode(self.pad(x)))[..., :height, :width]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=256)
def _size(channels: int, width: int, depth: int, latent: int, skips: bool) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return count_parameters(ReconstructionNet(channels, width, depth, latent, skips))


def matched_unet_shape(channels: int, width: int, depth: int, latent: int) -> tuple[int, int]:
    """(width, latent) of the U-Net whose parameter count is closest to the AE's with `width`, `latent`.

    Skips widen the decoder, so the U-Net gets a narrower width. One channel of width is a coarse step
    at small widths (10-20 % of the count), so the bottleneck channels, kept within [latent/2, 2*latent],
    take up the rest: each one adds 2*C+1 parameters (C = the coarsest level's channels)."""
    target = _size(channels, width, depth, latent, skips=False)
    low, high = max(1, math.ceil(latent / 2)), 2 * latent
    best: tuple[int, int, int] | None = None  # (difference, width, latent)
    for w in range(width, 0, -1):
        base, per_latent = _size(channels, w, depth, latent, skips=True), 2 * level_widths(w, depth)[-1] + 1
        z = min(max(round(latent + (target - base) / per_latent), low), high)
        diff = abs(base + (z - latent) * per_latent - target)
        if best is None or diff < best[0]:
            best = (diff, w, z)
    return best[1], best[2]


def build_network(arch: str, channels: int, width: int, depth: int, latent: int) -> ReconstructionNet:
    if arch == "unet":
        unet_width, unet_latent = matched_unet_shape(channels, width, depth, latent)
        return ReconstructionNet(channels, unet_width, depth, unet_latent, skips=True)
    return ReconstructionNet(channels, width, depth, latent, skips=False)
