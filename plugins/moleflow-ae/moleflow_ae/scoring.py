"""Anomaly maps of a trained reconstruction network (all (B,H,W), higher = more anomalous).

- recon:  per-pixel mean over channels of the squared error between the image and its reconstruction.
- latent: L2 distance (over channels) between the encoder features of the image and of its
          reconstruction at every downsampled level, each bilinearly upsampled to the image grid, summed.
          Compares what the encoder "sees" rather than raw pixels, so it is less sensitive to blur.
- both:   recon / (its training-set mean) + latent / (its training-set mean): the two live on different
          scales, and dividing by the mean on normal images makes "1" mean "typical" for each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moleflow_ae.networks import ReconstructionNet


def reconstruction_error(images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    return (images - recon).pow(2).mean(1)


def feature_distance(net: ReconstructionNet, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    padded = net.pad(images)
    feats_a, feats_b = net.encode(padded), net.encode(net.pad(recon))
    total = torch.zeros(images.shape[0], 1, *padded.shape[-2:], device=images.device, dtype=images.dtype)
    for a, b in zip(feats_a[1:], feats_b[1:]):  # level 0 is full resolution: nearly the pixels themselves
        distance = (a - b).pow(2).sum(1, keepdim=True).sqrt()
        total += F.interpolate(distance, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return total[:, 0, :height, :width]


@torch.no_grad()
def score_maps(net: ReconstructionNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recon map, latent map) of images already in the network's channel count."""
    recon = net(images)
    return reconstruction_error(images, recon), feature_distance(net, images, recon)


def combine(recon_map: torch.Tensor, latent_map: torch.Tensor, mode: str, means: torch.Tensor) -> torch.Tensor:
    """The map for `--score mode`; `means` = (recon mean, latent mean) on the training set."""
    if mode == "recon":
        return recon_map
    if mode == "latent":
        return latent_map
    return recon_map / means[0] + latent_map / means[1]


@torch.no_grad()
def training_means(net: ReconstructionNet, images: torch.Tensor, device: torch.device,
                   batch_size: int) -> torch.Tensor:
    """(mean recon score, mean latent score) over every pixel of the (clean) training images."""
    sums = torch.zeros(2, dtype=torch.float64)
    for chunk in images.split(batch_size):
        recon_map, latent_map = score_maps(net, chunk.to(device))
        sums += torch.stack([recon_map.sum(), latent_map.sum()]).double().cpu()
    pixels = images.shape[0] * images.shape[-2] * images.shape[-1]
    # a perfect fit gives 0: clamp so "both" never divides by zero
    return (sums / pixels).clamp_min(1e-12).float()
