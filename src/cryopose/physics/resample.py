"""Resampling a map to another box and voxel size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .fourier import fourier_resize


def resample_map(data: torch.Tensor, apix_in: float, box: int, apix_out: float) -> torch.Tensor:
    """Resample a ``(Z, Y, X)`` map (any box, ``apix_in`` Å) to ``(box,)*3`` voxels of ``apix_out`` Å.

    The map is first low-passed to the coarser of the two Nyquist frequencies (no aliasing): on each axis its
    spectrum is cropped to the frequencies up to ``1 / (2 · apix_out)`` Å⁻¹ and zero-padded back. It is then
    sampled trilinearly with both box centres (voxel ``size // 2``) kept at the same physical point.
    """
    shape = torch.tensor(data.shape, dtype=torch.float64)
    if apix_out > apix_in:
        for axis, n in enumerate(data.shape):
            kept = 2 * math.floor(n * apix_in / (2 * apix_out)) + 1  # frequencies -k … k, k / (n · apix_in) Å⁻¹
            data = fourier_resize(fourier_resize(data.movedim(axis, -1), kept, 1), n, 1).movedim(-1, axis)
    offsets = (torch.arange(box, dtype=torch.float64) - box // 2) * apix_out / apix_in  # input voxels
    axes = [(offsets + shape[i] // 2) * 2 / (shape[i] - 1) - 1 for i in range(3)]  # align_corners=True
    gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gx, gy, gz], dim=-1)[None]
    out = F.grid_sample(data[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0]
