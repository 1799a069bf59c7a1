"""Image losses of the fit: L1, D-SSIM (as in 3DGS: 11x11 Gaussian window, sigma 1.5) and PSNR."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_C1 = 0.01**2
_C2 = 0.03**2


def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


_WINDOW = _window()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [C, H, W] images (zero padding, like the 3DGS code)."""
    c = x.shape[0]
    k = len(_WINDOW)
    wx = _WINDOW.reshape(1, 1, 1, k).expand(c, 1, 1, k)
    wy = _WINDOW.reshape(1, 1, k, 1).expand(c, 1, k, 1)
    x = F.conv2d(x[None], wx, padding=(0, k // 2), groups=c)
    return F.conv2d(x, wy, padding=(k // 2, 0), groups=c)[0]


def ssim(image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two [H, W, 3] images in [0, 1]."""
    x, y = image.permute(2, 0, 1), target.permute(2, 0, 1)
    # One blur of the five stacked images: a single grouped convolution is much cheaper than five.
    mx, my, exx, eyy, exy = _blur(torch.cat([x, y, x * x, y * y, x * y])).split(3)
    sxx = exx - mx * mx
    syy = eyy - my * my
    sxy = exy - mx * my
    s = ((2 * mx * my + _C1) * (2 * sxy + _C2)) / ((mx * mx + my * my + _C1) * (sxx + syy + _C2))
    return s.mean()


def fit_loss(image: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.2) -> torch.Tensor:
    """(1 - w) L1 + w (1 - SSIM), the 3DGS photometric loss."""
    l1 = (image - target).abs().mean()
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim(image, target))


def psnr(image, target) -> float:
    """PSNR in dB of two images in [0, 1] (numpy or torch)."""
    a = np.asarray(image.detach() if isinstance(image, torch.Tensor) else image, dtype=np.float64)
    b = np.asarray(target.detach() if isinstance(target, torch.Tensor) else target, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)
