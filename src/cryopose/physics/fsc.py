"""Fourier shell correlation on the true FFT grid (DESIGN §3), and radial helpers on centred grids.

Shell ``n`` holds the voxels whose centred frequency index ``k`` (``j − D/2`` on each axis) has ``round(|k|) = n``,
for ``n = 0 … D/2`` (Nyquist); corner voxels beyond Nyquist are left out. Shell ``n`` is at frequency
``n / (D · apix)`` (Å⁻¹; cycles per voxel when ``apix = 1``). Maps are ``(D, D, D)`` arrays indexed ``(z, y, x)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .fourier import fft3_centered, radius_grid, shell_index


def soft_sphere_mask(box: int, radius: float | None = None, width: float | None = None, device=None) -> Tensor:
    """Sphere mask ``(D, D, D)``: 1 within ``radius`` (default ``D/2 − width``), a raised-cosine edge ``width``
    voxels wide (default ``D/16``, at least 2), 0 beyond."""
    width = max(2.0, box / 16) if width is None else width
    radius = box / 2 - width if radius is None else radius
    t = ((radius_grid(box, device) - radius) / width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(torch.pi * t))


def _volume(x: Tensor | np.ndarray) -> Tensor:
    return (x if isinstance(x, Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))).detach().to(torch.float64)


def fsc(map_a: Tensor | np.ndarray, map_b: Tensor | np.ndarray, pixel_size_A: float = 1.0,
        mask: Tensor | np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """FSC of two real ``(D, D, D)`` maps, both multiplied by the real-space ``mask`` ``(D, D, D)`` when given.

    Returns ``(frequencies, fsc)``, each ``(D//2 + 1,)`` float64 on the CPU: shell ``n`` at ``n / (D · apix)``
    Å⁻¹ (1/voxel with the default ``pixel_size_A = 1``). A shell where either map has no power gets 0.
    Runs on the maps' device.
    """
    a, b = _volume(map_a), _volume(map_b)
    if a.shape != b.shape or a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"FSC needs two cubic maps of the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    b = b.to(a.device)
    if mask is not None:
        m = _volume(mask).to(a.device)
        a, b = a * m, b * m
    d = a.shape[-1]
    fa, fb = fft3_centered(a), fft3_centered(b)
    shell = shell_index(d, a.device)
    keep = shell <= d // 2
    shell = shell[keep]
    n = d // 2 + 1

    def total(values: Tensor) -> Tensor:
        return torch.bincount(shell, values[keep], minlength=n)

    cross = total((fa * fb.conj()).real)
    norm = torch.sqrt(total(fa.abs() ** 2) * total(fb.abs() ** 2))
    curve = torch.where(norm > 0, cross / norm.clamp(min=1e-300), torch.zeros_like(cross)).cpu()
    return torch.arange(n, dtype=torch.float64) / (d * pixel_size_A), curve


def fsc_resolution(freq: Tensor | np.ndarray, curve: Tensor | np.ndarray, threshold: float = 0.5) -> float:
    """Resolution ``1/f`` (Å when ``freq`` is in Å⁻¹) where the FSC first falls below ``threshold``, linearly
    interpolated between the shells around the crossing. The DC shell is ignored; a curve that never falls
    below the threshold gives the Nyquist resolution."""
    freq, curve = torch.as_tensor(freq), torch.as_tensor(curve)
    below = torch.nonzero(curve[1:] < threshold).flatten()
    if below.numel() == 0:
        return float(1.0 / freq[-1])
    i = int(below[0]) + 1  # first shell below; i - 1 is above
    f0, f1, c0, c1 = freq[i - 1], freq[i], curve[i - 1], curve[i]
    f = float(f0 + ((c0 - threshold) / (c0 - c1)).clamp(0, 1) * (f1 - f0))
    return 1.0 / f if f > 0 else float("inf")
