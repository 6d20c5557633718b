"""MLP auto-encoder denoiser of Cryo2SSNet (appendix A.2) and its SNR-corrected L2 loss (Eq. 12).

Five fully connected layers: the first maps the ``D²`` pixels inside a circular particle mask to ``D²/f``, three
keep that width, the last maps back to ``D²``; the bottleneck of factor ``f`` filters noise. It is trained on the
noisy images themselves with the "unbiased" L2 ``mean((γ·I − De(I))²) − c``, ``γ = √(1 + 1/s)``, ``c = 1/s``
for normalised images ``I`` of SNR ``s``: its expectation is the L2 error to the clean image (in units where
the signal has unit variance), so the network learns to denoise without clean targets.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def unbiased_l2(noisy: Tensor, estimate: Tensor, snr: float) -> Tensor:
    """Cryo2SSNet Eq. 12 per image ``(...)``: ``mean((γ·noisy − estimate)²) − 1/snr`` over the last two axes."""
    gamma = math.sqrt(1 + 1 / snr)
    return (gamma * noisy - estimate).square().mean((-2, -1)) - 1 / snr


class MLPDenoiser(nn.Module):
    """Images ``(..., D, D)`` (normalised) -> denoised images ``(..., D, D)`` in unit-signal-variance units.

    Args:
        box: image side ``D`` (px).
        factor: bottleneck factor ``f`` (hidden width ``D²/f``).
        radius_px: pixels beyond this radius are set to zero before the network (default ``0.45·D``).
    """

    def __init__(self, box: int, factor: int = 8, radius_px: float | None = None):
        super().__init__()
        radius = 0.45 * box if radius_px is None else radius_px
        y, x = torch.meshgrid(torch.arange(box) - box / 2, torch.arange(box) - box / 2, indexing="ij")
        self.register_buffer("mask", (x * x + y * y <= radius * radius).float())
        n, hidden = box * box, max(1, box * box // factor)
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n))
        self.box = box

    def forward(self, images: Tensor) -> Tensor:
        x = (images * self.mask).flatten(-2)
        return self.net(x).unflatten(-1, (self.box, self.box))


def snr_from_noise(images: Tensor, noise_sigma: float) -> float:
    """Per-pixel SNR of images ``(B, D, D)`` with noise ``noise_sigma`` per centred Fourier coefficient
    (:func:`cryopose.methods.losses.noise_sigma`): ``(var − v) / v`` with pixel noise variance ``v = σ²/D²``."""
    noise = noise_sigma**2 / images.shape[-1] ** 2
    return max(float(images.var()) - noise, 1e-3 * noise) / noise
