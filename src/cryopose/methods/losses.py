"""Data terms on Fourier slices, per image and candidate pose.

Spectra are whitened by the noise standard deviation per Fourier coefficient (one number from ``noise_sigma``, or
a noise model ``(D, D)`` of :mod:`cryopose.methods.noise`), so that the Gaussian negative log-likelihood of
cryoSPIN's Eq. 3 is ``½ Σ_k∈mask |Y(k) − Ŷ(k)|²`` in these units; we report it per coefficient (divided by the
number of coefficients in the mask) so that numbers do not scale with the box.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..physics.ctf import CTFParams, compute_ctf
from ..physics.fourier import fft2_centered, frequency_grid_2d
from ..physics.projection import circular_mask, render


def noise_sigma(images: Tensor, outer: float = 0.8) -> float:
    """Noise standard deviation per centred Fourier coefficient, from the shells beyond ``outer`` × Nyquist.

    At the SNRs of cryo-EM the highest frequencies are noise; ``images`` ``(B, D, D)`` real.
    """
    box = images.shape[-1]
    ring = circular_mask(box, device=images.device) & ~circular_mask(box, outer * box / 2, device=images.device)
    power = fft2_centered(images).abs().square()[..., ring]
    return float(power.mean().sqrt())


def sigma_at(sigma: float | Tensor, pixels: Tensor) -> float | Tensor:
    """Noise σ at the spectrum coefficients ``pixels`` ``(P,)`` (flat indices): one number as it is, a noise model
    ``(D, D)`` (or flat ``(D·D,)``) at those coefficients ``(P,)``."""
    return sigma.flatten().to(pixels.device)[pixels] if isinstance(sigma, Tensor) else sigma


def pixel_shells(box: int, device=None) -> Tensor:
    """Shell ``round(|k|)`` (pixels) of every coefficient of the centred ``(D, D)`` spectrum, flat ``(D·D,)``, the
    corners beyond Nyquist in the last shell ``D // 2``."""
    radius = frequency_grid_2d(box, 1.0 / box, device=device, dtype=torch.float64).norm(dim=-1)  # (D, D) pixels
    return torch.round(radius).long().clamp(max=box // 2).flatten()


def shell_mean(values: Tensor, pixels: Tensor, box: int) -> Tensor:
    """Mean of ``values`` ``(B, P)`` over the images and the coefficients ``pixels`` ``(P,)`` (flat indices) of each
    shell: ``(D//2 + 1,)`` float64, NaN for shells without a coefficient among ``pixels``."""
    shell = pixel_shells(box, values.device)[pixels]
    count = torch.bincount(shell, minlength=box // 2 + 1).double() * values.shape[0]
    return torch.bincount(shell, values.double().sum(0), minlength=box // 2 + 1) / count


def signal_shell_rms(images: Tensor, ctf: CTFParams, pixel_size_A: float, sigma: float | Tensor,
                     unit: float | None = None) -> Tensor:
    """RMS of the volume spectrum per frequency shell ``(D//2 + 1,)`` in units of ``unit`` (default ``sigma``, a
    number), estimated from data with noise ``sigma`` per coefficient (a number or a model ``(D, D)``).

    By the central-slice theorem a slice coefficient is a volume coefficient times the CTF, so in each shell
    ``E|Y|² = E[CTF²] · E|V|² + σ²`` for the spectra ``Y`` of ``images`` ``(B, D, D)``. The estimate is floored
    at 1 % of its low-frequency maximum (pure-noise shells would otherwise give zero).
    """
    box = images.shape[-1]
    unit = sigma if unit is None else unit
    every = torch.arange(box * box, device=images.device)
    noise = sigma.to(images.device).square() if isinstance(sigma, Tensor) else sigma**2
    signal = shell_mean((fft2_centered(images).abs().square() - noise).flatten(-2) / unit**2, every, box)
    gain = shell_mean(compute_ctf(ctf, box, pixel_size_A, dtype=torch.float64).square().flatten(-2), every, box)
    rms = torch.sqrt(signal.clamp(min=0) / gain.clamp(min=1e-3))
    return rms.clamp(min=0.01 * float(rms[1:].max())).float()


def target_spectra(images: Tensor, sigma: float | Tensor, mask_index: Tensor) -> Tensor:
    """Whitened centred spectra of ``images`` ``(B, D, D)`` at the mask pixels: ``(B, M)`` complex (noise ``sigma``:
    see :func:`sigma_at`)."""
    return fft2_centered(images).flatten(-2)[..., mask_index] / sigma_at(sigma, mask_index)


def shared_slice_loss(slices: Tensor, ctf: Tensor, phases: Tensor | None, target: Tensor) -> Tensor:
    """The ``nll`` loss of :func:`slice_loss`, ``½ mean |Y − CTF·e^{iφ}·S|²``, ``(B, C, S)`` of every image against
    each of ``C`` slices shared by the batch at each of its ``S`` shifts, by matrix products: slices ``(C, M)``
    complex, ``ctf`` ``(B, M)`` real, ``phases`` ``(B, S, M)`` (None: unshifted, S = 1), ``target`` ``(B, M)``.
    A phase has unit modulus, so only the cross term ``Re(Ȳ·CTF·e^{iφ}·S)`` depends on the shift."""
    x = target.conj()[:, None] * ctf[:, None] * (1 if phases is None else phases)  # (B, S, M)
    b, n, m = x.shape
    cross = torch.cat([x.real, -x.imag], -1).reshape(b * n, 2 * m) @ torch.cat([slices.real, slices.imag], -1).T
    power = ctf.square() @ slices.abs().square().T  # (B, C): |CTF·S|², whatever the shift
    total = target.abs().square().sum(-1)  # (B,)
    return 0.5 * (total[:, None, None] + power[:, :, None] - 2 * cross.view(b, n, -1).transpose(1, 2)) / m


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


def fitted_residual(volume: Tensor, batch: dict, rotations: Tensor, shifts: Tensor | None, pixel_size_A: float,
                    sigma: float | Tensor, pixels: Tensor) -> Tensor:
    """Least-squares residual ``(B, n)`` of each image under each of its candidate poses ``rotations``
    ``(B, n, 3, 3)`` (and ``shifts`` ``(B, n, 2)`` Å) of the Hartley ``volume``, over the Fourier ``pixels``, with
    the best amplitude fitted per pose, in whitened units (noise ``sigma`` per coefficient, see :func:`sigma_at`)."""
    pred = render(volume, rotations, pixel_size_A, ctf=batch["ctf"], shifts_A=shifts, real_space=False,
                  pixels=pixels) / sigma_at(sigma, pixels)
    y = target_spectra(batch["images"], sigma, pixels)
    fit = (pred.conj() * y[:, None]).real.sum(-1).square() / pred.abs().square().sum(-1).clamp(min=1e-12)
    return y.abs().square().sum(-1)[:, None] - fit
