"""Per-patch anomaly scores -> full-resolution anomaly maps and image scores."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moleflow.errors import MoleflowError

SCORE_METHODS = ("max", "topk", "map_max")


def anomaly_maps(patch_scores: torch.Tensor, out_size: tuple[int, int] | list[int], sigma: float = 4.0) -> torch.Tensor:
    """(B,h,w) patch scores -> (B,H,W) maps: bilinear upsample (align_corners=False), then Gaussian blur.

    The blur kernel has size 2*ceil(4*sigma)+1 with reflect padding (as torchvision's gaussian_blur);
    sigma 0 means no blur. On maps smaller than the kernel radius the kernel is truncated to fit
    (reflect padding needs pad < size) and renormalised, so a constant map stays constant.
    Both steps are linear and separable, so they are folded into one (H,h) and one (W,w) matrix:
    maps = Ry @ scores @ Rx^T, two small matmuls instead of convolving every full-size map
    (~7x faster than a separable convolution of 224x224 maps on CPU).
    """
    if patch_scores.dim() != 3:
        raise ValueError(f"patch_scores must be (B,h,w), got shape {tuple(patch_scores.shape)}")
    if sigma < 0 or not math.isfinite(sigma):
        raise MoleflowError(f"blur sigma must be >= 0, got {sigma}; use --blur_sigma 0 to turn blurring off")
    height, width = int(out_size[0]), int(out_size[1])
    x = patch_scores if patch_scores.dtype == torch.float64 else patch_scores.float()
    if sigma == 0:
        return F.interpolate(x.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False).squeeze(1)
    rows = _resample_matrix(x.shape[1], height, sigma, x)
    cols = _resample_matrix(x.shape[2], width, sigma, x)
    return torch.matmul(torch.matmul(rows, x), cols.T)


def _resample_matrix(n_in: int, n_out: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): 1-D linear upsampling (torch's own weights) followed by the 1-D Gaussian blur."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)
    upsample = F.interpolate(eye.unsqueeze(1), size=n_out, mode="linear", align_corners=False).squeeze(1).T
    return _blur_matrix(n_out, sigma, like) @ upsample


def _blur_matrix(n: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(n, n) matrix of a Gaussian blur with reflect padding ("d c b | a b c d"), as conv + F.pad(reflect)."""
    radius = min(math.ceil(4 * sigma), n - 1)
    offsets = torch.arange(-radius, radius + 1, device=like.device)
    kernel = torch.exp(-0.5 * (offsets.to(like.dtype) / sigma) ** 2)
    kernel = kernel / kernel.sum()
    src = torch.arange(n, device=like.device)[:, None] + offsets[None, :]
    src = torch.where(src < 0, -src, src)
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    dst = torch.arange(n, device=like.device)[:, None].expand_as(src)
    matrix = torch.zeros(n, n, dtype=like.dtype, device=like.device)
    return matrix.index_put_((dst, src), kernel.expand_as(src).clone(), accumulate=True)


def image_scores(patch_scores: torch.Tensor, method: str = "max", topk: int = 10, *,
                 out_size: tuple[int, int] | list[int] | None = None, sigma: float = 4.0) -> torch.Tensor:
    """(B,h,w) -> (B,): the largest patch score; ("topk") the mean of the k largest (k clipped to h*w); or
    ("map_max") the largest value of the anomaly map (`anomaly_maps(patch_scores, out_size, sigma)`), as
    FastFlow/anomalib score images: the blur averages a defect's neighbouring patches, so one noisy patch
    on a good image counts less than a defect that several patches see."""
    if method == "map_max":
        if out_size is None:
            raise MoleflowError("score aggregation 'map_max' needs the anomaly map size (out_size)")
        return torch.cat([anomaly_maps(chunk, out_size, sigma).amax(dim=(1, 2)) for chunk in patch_scores.split(64)])
    flat = patch_scores.reshape(patch_scores.shape[0], -1)
    if method == "max":
        return flat.amax(dim=1)
    if method == "topk":
        if topk < 1:
            raise MoleflowError(f"--topk must be >= 1, got {topk}")
        k = min(int(topk), flat.shape[1])
        values = flat.topk(k, dim=1).values
        return values.mean(dim=1) if values.is_floating_point() else values.float().mean(dim=1)
    raise MoleflowError(f"unknown score aggregation '{method}'; use one of: {', '.join(SCORE_METHODS)}")
