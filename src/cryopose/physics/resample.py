"""Resampling a map to another box and voxel size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fourier import fft3_centered, ifft3_centered


def resample_map(data: torch.Tensor, apix_in: float, box: int, apix_out: float) -> torch.Tensor:
    """Resample a ``(Z, Y, X)`` map (any box, ``apix_in`` Å) to ``(box,)*3`` voxels of ``apix_out`` Å.

    The map is first low-passed to the coarser of the two Nyquist frequencies (no aliasing), then sampled
    trilinearly with both box centres (voxel ``size // 2``) kept at the same physical point.
    """
    shape = torch.tensor(data.shape, dtype=torch.float64)
    if apix_out > apix_in:  # band-limit to the output Nyquist frequency
        spectrum = fft3_centered(data)
        k = [(torch.arange(n, dtype=torch.float64) - n // 2) / (n * apix_in) for n in data.shape]
        kz, ky, kx = torch.meshgrid(*k, indexing="ij")
        spectrum = spectrum * ((kx.abs() <= 0.5 / apix_out) & (ky.abs() <= 0.5 / apix_out)
                               & (kz.abs() <= 0.5 / apix_out))
        data = ifft3_centered(spectrum).real
    offsets = (torch.arange(box, dtype=torch.float64) - box // 2) * apix_out / apix_in  # input voxels
    axes = [(offsets + shape[i] // 2) * 2 / (shape[i] - 1) - 1 for i in range(3)]  # align_corners=True
    gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gx, gy, gz], dim=-1)[None]
    out = F.grid_sample(data[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0]
