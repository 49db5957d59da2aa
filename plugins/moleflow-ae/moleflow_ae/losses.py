"""Reconstruction losses, registered in `moleflow.losses` (`--loss mse=1 --loss ssim=0.5 ...`).

Each reads the model outputs `reconstruction` and `target` ((B,C,H,W) in [0,1]) and returns a scalar.
The functional forms (`ssim`, `sobel_magnitude`, ...) are public so tests and scoring can reuse them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moleflow.errors import MoleflowError

READS = ("reconstruction", "target")


def _pair(outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    recon, target = outputs["reconstruction"], outputs["target"]
    if recon.shape != target.shape:
        raise MoleflowError(f"reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ in "
                            "shape; the model must return a reconstruction of the target's size")
    return recon, target


# ------------------------------------------------------------------------------------------------ SSIM
def gaussian_kernel1d(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    return g / g.sum()


def _blur_valid(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian per channel without padding: the same values skimage keeps after its border crop."""
    channels = x.shape[1]
    k = kernel.to(x)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def ssim_map(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5,
             data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004), (B,C,H-window+1,W-window+1).

    Matches skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1): Gaussian window of 11 (its truncate=3.5 gives radius 5),
    K1=0.01, K2=0.03, and only positions where the window fits (skimage crops the same border)."""
    height, width = x.shape[-2:]
    if min(height, width) < window:
        raise MoleflowError(f"SSIM needs images of at least {window}x{window} pixels, got {height}x{width}; "
                            "use a larger --img_size or drop the ssim loss")
    kernel = gaussian_kernel1d(window, sigma, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _blur_valid(x, kernel), _blur_valid(y, kernel)
    var_x = _blur_valid(x * x, kernel) - mu_x.pow(2)
    var_y = _blur_valid(y * y, kernel) - mu_y.pow(2)
    cov = _blur_valid(x * y, kernel) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image (B,), averaged over channels like skimage's channel_axis."""
    return ssim_map(x, y).flatten(1).mean(1)


# ------------------------------------------------------------------------------------------------ Sobel
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude (B,C,H,W); edge pixels see a replicated border (scipy's
    'reflect' for a 3x3 kernel). `eps` keeps the square root differentiable on flat regions."""
    channels = x.shape[1]
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.T]).to(x)[:, None]  # (2,1,3,3): d/dx, d/dy
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded.flatten(0, 1)[:, None], kernels)  # (B*C,2,H,W)
    return (grads.pow(2).sum(1) + eps).sqrt().view(x.shape[0], channels, *x.shape[-2:])


# ------------------------------------------------------------------------------------------------ FFL
def focal_frequency(recon: torch.Tensor, target: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Focal Frequency Loss (Jiang et al., ICCV 2021) with the official defaults (patch_factor 1, no log
    matrix, per-image spectrum weights): orthonormal 2-D DFT per channel; weight = |F_r - F_t|**alpha,
    divided by its maximum per image and channel, detached; loss = mean(weight * |F_r - F_t|**2)."""
    diff = torch.fft.fft2(recon, norm="ortho") - torch.fft.fft2(target, norm="ortho")
    distance = diff.real.pow(2) + diff.imag.pow(2)
    with torch.no_grad():
        weight = distance.sqrt().pow(alpha)
        weight = weight / weight.amax(dim=(-2, -1), keepdim=True)
        weight = torch.nan_to_num(weight, nan=0.0).clamp(0.0, 1.0)  # 0/0 where recon == target exactly
    return (weight * distance).mean()


# ------------------------------------------------------------------------------------------------ components
class MSELoss:
    """Mean squared error between reconstruction and target."""

    reads = READS

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        recon, target = _pair(outputs)
        return F.mse_loss(recon, target)


class SSIMLoss:
    """1 - SSIM (Gaussian window 11, sigma 1.5, data_range 1), averaged over the batch."""

    reads = READS

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        recon, target = _pair(outputs)
        return 1.0 - ssim(recon, target).mean()


class FocalFrequencyLoss:
    """Focal Frequency Loss with alpha (default 1, the paper's)."""

    reads = READS

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        return focal_frequency(*_pair(outputs), alpha=self.alpha)


class SobelGradientLoss:
    """L1 distance between the Sobel gradient magnitudes of reconstruction and target (keeps edges sharp)."""

    reads = READS

    def __call__(self, outputs: dict[str, torch.Tensor], batch: dict | None = None) -> torch.Tensor:
        recon, target = _pair(outputs)
        return (sobel_magnitude(recon) - sobel_magnitude(target)).abs().mean()
