"""Centred FFT / Hartley helpers on the true FFT grid (DESIGN §3).

Conventions: box ``D`` is even; after ``fftshift`` the DC term sits at index ``D // 2``; the frequency of
index ``j`` is ``(j - D/2) / (D * apix)`` Å⁻¹. Arrays are indexed ``(..., y, x)`` in 2D and ``(..., z, y, x)``
in 3D; the real-space centre of a box is voxel ``D // 2`` on every axis (RELION's and mrcfile's convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _centered(transform, x: Tensor, ndim: int) -> Tensor:
    """``transform`` (``torch.fft.fftn`` or ``ifftn``) over the last ``ndim`` axes of a centred array."""
    dims = tuple(range(-ndim, 0))
    return torch.fft.fftshift(transform(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def fft2_centered(images: Tensor) -> Tensor:
    """Centred 2D DFT of real or complex ``(..., D, D)`` images; DC at ``[D//2, D//2]``."""
    return _centered(torch.fft.fftn, images, 2)


def ifft2_centered(spectra: Tensor) -> Tensor:
    """Inverse of :func:`fft2_centered` (complex ``(..., D, D)`` output; take ``.real`` for real images)."""
    return _centered(torch.fft.ifftn, spectra, 2)


def fft3_centered(volume: Tensor) -> Tensor:
    """Centred 3D DFT of a ``(..., D, D, D)`` volume; DC at ``[D//2]*3``."""
    return _centered(torch.fft.fftn, volume, 3)


def ifft3_centered(spectrum: Tensor) -> Tensor:
    """Inverse of :func:`fft3_centered` (complex output)."""
    return _centered(torch.fft.ifftn, spectrum, 3)


def fourier_to_hartley(spectrum: Tensor) -> Tensor:
    """Hartley coefficients ``Re F - Im F`` of a centred spectrum of a real signal."""
    return spectrum.real - spectrum.imag


def mirror_centered(x: Tensor, ndim: int = 2) -> Tensor:
    """``x(-k)`` on the centred grid over the last ``ndim`` axes: index ``j`` -> ``(D - j) mod D`` (periodic)."""
    dims = tuple(range(-ndim, 0))
    return torch.roll(x.flip(dims), shifts=(1,) * ndim, dims=dims)


def hartley_to_fourier(hartley: Tensor, ndim: int = 2) -> Tensor:
    """Centred complex spectrum ``F = E - iO`` from centred Hartley coefficients over the last ``ndim`` axes.

    ``E = (H(k) + H(-k)) / 2`` and ``O = (H(k) - H(-k)) / 2``; inverse of :func:`fourier_to_hartley`.
    """
    mirrored = mirror_centered(hartley, ndim)
    return torch.complex((hartley + mirrored) / 2, (mirrored - hartley) / 2)


def hartley2_centered(images: Tensor) -> Tensor:
    """Centred 2D Hartley transform of real ``(..., D, D)`` images."""
    return fourier_to_hartley(fft2_centered(images))


def ihartley2_centered(hartley: Tensor) -> Tensor:
    """Inverse of :func:`hartley2_centered` (the Hartley transform is its own inverse up to 1/N)."""
    d = hartley.shape[-1] * hartley.shape[-2]
    return hartley2_centered(hartley) / d


def hartley3_centered(volume: Tensor) -> Tensor:
    """Centred 3D Hartley transform of a real ``(..., D, D, D)`` volume."""
    return fourier_to_hartley(fft3_centered(volume))


def ihartley3_centered(hartley: Tensor) -> Tensor:
    """Inverse of :func:`hartley3_centered`."""
    n = hartley.shape[-1] * hartley.shape[-2] * hartley.shape[-3]
    return hartley3_centered(hartley) / n


def fourier_resize(x: Tensor, box: int, ndim: int) -> Tensor:
    """Resample real ``(..., D, …, D)`` arrays to ``(..., d, …, d)`` (``d = box``) over their last ``ndim`` axes by
    cropping or zero-padding the centred spectrum: the centre (index ``D//2`` -> ``d//2``) and the values are
    kept, the pixel size changes by ``D / d``."""
    size = x.shape[-1]
    if box == size:
        return x
    spectrum = _centered(torch.fft.fftn, x, ndim)
    if box < size:
        start = size // 2 - box // 2
        spectrum = spectrum[(..., *[slice(start, start + box)] * ndim)]
    else:
        before = box // 2 - size // 2
        spectrum = F.pad(spectrum, (before, box - size - before) * ndim)
    return _centered(torch.fft.ifftn, spectrum, ndim).real * (box / size) ** ndim


def frequency_grid_2d(box: int, pixel_size_A: float = 1.0, device=None, dtype=torch.float32) -> Tensor:
    """Spatial frequencies ``(D, D, 2)`` as ``(kx, ky)`` in Å⁻¹ on the centred FFT grid."""
    k = (torch.arange(box, device=device, dtype=dtype) - box // 2) / (box * pixel_size_A)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def radius_grid(box: int, device=None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Distance ``(D, D, D)`` of every voxel from the centre voxel ``D // 2`` (voxels, or frequency pixels)."""
    k = (torch.arange(box, device=device, dtype=dtype) - box // 2) ** 2
    return torch.sqrt(k[:, None, None] + k[None, :, None] + k[None, None, :])


def shell_index(box: int, device=None, pad: int = 1) -> Tensor:
    """Fourier shell ``round(|k| / pad)`` ``(D, D, D)`` int64 of every voxel of a centred ``box``³ spectrum (a
    ``pad``-times oversampled grid gives shells in image pixels)."""
    return torch.round(radius_grid(box, device) / pad).long()
