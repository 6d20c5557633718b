"""Data terms on Fourier slices, per image and candidate pose.

Spectra are whitened by the noise standard deviation per Fourier coefficient (``noise_sigma``), so that the
Gaussian negative log-likelihood of cryoSPIN's Eq. 3 is ``½ Σ_k∈mask |Y(k) − Ŷ(k)|²`` in these units; we report
it per coefficient (divided by the number of coefficients in the mask) so that numbers do not scale with the box.
"""

from __future__ import annotations

from torch import Tensor

from ..physics.fourier import fft2_centered
from ..physics.projection import circular_mask


def noise_sigma(images: Tensor, outer: float = 0.8) -> float:
    """Noise standard deviation per centred Fourier coefficient, from the shells beyond ``outer`` × Nyquist.

    At the SNRs of cryo-EM the highest frequencies are noise; ``images`` ``(B, D, D)`` real.
    """
    box = images.shape[-1]
    ring = circular_mask(box, device=images.device) & ~circular_mask(box, outer * box / 2, device=images.device)
    power = fft2_centered(images).abs().square()[..., ring]
    return float(power.mean().sqrt())


def target_spectra(images: Tensor, sigma: float, mask_index: Tensor) -> Tensor:
    """Whitened centred spectra of ``images`` ``(B, D, D)`` at the mask pixels: ``(B, M)`` complex."""
    return fft2_centered(images).flatten(-2)[..., mask_index] / sigma


def slice_loss(predicted: Tensor, target: Tensor, kind: str = "nll") -> Tensor:
    """Per-image, per-pose loss ``(B, H)`` of predicted ``(B, H, M)`` vs target ``(B, M)`` whitened spectra.

    ``nll``: Gaussian negative log-likelihood per coefficient, ``½ mean |Y − Ŷ|²``; ``l1``: mean ``|Y − Ŷ|``
    (the cryoSPIN reference code's modulus loss).
    """
    residual = (predicted - target.unsqueeze(-2)).abs()
    if kind == "nll":
        return 0.5 * residual.square().mean(-1)
    if kind == "l1":
        return residual.mean(-1)
    raise ValueError(f"unknown loss {kind!r} (use 'nll' or 'l1')")
