"""Hopf-fibration grid of SO(3) (Yershova et al. 2010), as used by cryoDRGN and Cryo2SSNet.

Level ``k`` has ``12·4^k`` HEALPix pixels (NESTED ordering, ``nside = 2^k``) for the viewing sphere times
``6·2^k`` in-plane angles: ``72·8^k`` cells. Cell ``c = pixel · n_psi + j``; its 8 children at level ``k+1`` are
pixels ``4·pixel + {0..3}`` (NESTED) times in-plane indices ``2j + {0, 1}``, so every level refines the last.

Cell centres are unit quaternions ``(w, x, y, z)`` from Hopf coordinates (θ, φ, ψ):
``q = (cos θ/2 · cos ψ/2, cos θ/2 · sin ψ/2, sin θ/2 · cos(φ + ψ/2), sin θ/2 · sin(φ + ψ/2))``.
"""

from __future__ import annotations

import functools
import math

import healpix
import numpy as np
import roma
import torch
from torch import Tensor


def n_psi(level: int) -> int:
    """Number of in-plane angles at ``level``."""
    return 6 * 2**level


def n_cells(level: int) -> int:
    """Number of cells at ``level``: ``72·8^level``."""
    return 12 * 4**level * n_psi(level)


@functools.lru_cache(maxsize=16)
def _sphere_angles(level: int) -> np.ndarray:
    """(θ, φ) of the HEALPix pixel centres at ``level`` (NESTED), shape ``(12·4^level, 2)``."""
    nside = 2**level
    theta, phi = healpix.pix2ang(nside, np.arange(12 * nside * nside), nest=True)
    return np.stack([theta, phi], axis=1)


def hopf_to_quaternion(theta: Tensor, phi: Tensor, psi: Tensor) -> Tensor:
    """Hopf coordinates (radians, any shape) -> unit quaternions ``(..., 4)`` as ``(w, x, y, z)``."""
    ct, st = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack([ct * torch.cos(psi / 2), ct * torch.sin(psi / 2),
                        st * torch.cos(phi + psi / 2), st * torch.sin(phi + psi / 2)], dim=-1)


def cell_quaternions(level: int, cells: Tensor | None = None, device=None, dtype=torch.float32) -> Tensor:
    """Centre quaternions ``(..., 4)`` of ``cells`` (int tensor, any shape; all cells when None)."""
    if cells is None:
        cells = torch.arange(n_cells(level), device=device)
    angles = torch.as_tensor(_sphere_angles(level), device=cells.device, dtype=torch.float64)
    npsi = n_psi(level)
    pix, j = cells // npsi, cells % npsi
    psi = (j.to(torch.float64) + 0.5) * (2 * math.pi / npsi)
    q = hopf_to_quaternion(angles[pix, 0], angles[pix, 1], psi)
    return q.to(dtype)


def children(level: int, cells: Tensor) -> Tensor:
    """The 8 children at ``level + 1`` of ``cells`` at ``level``: shape ``(..., 8)``."""
    npsi = n_psi(level)
    pix, j = cells // npsi, cells % npsi
    sub_pix = 4 * pix[..., None] + torch.arange(4, device=cells.device)  # (..., 4)
    sub_j = 2 * j[..., None] + torch.arange(2, device=cells.device)  # (..., 2)
    out = sub_pix[..., :, None] * n_psi(level + 1) + sub_j[..., None, :]
    return out.reshape(*cells.shape, 8)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Unit quaternions ``(..., 4)`` ``(w, x, y, z)`` -> rotation matrices ``(..., 3, 3)``."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(r: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> unit quaternions ``(..., 4)`` ``(w, x, y, z)`` with ``w >= 0``."""
    xyzw = roma.rotmat_to_unitquat(r)
    q = torch.cat([xyzw[..., 3:], xyzw[..., :3]], dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_distance(q1: Tensor, q2: Tensor) -> Tensor:
    """Geodesic angle (radians) between the rotations of unit quaternions (broadcast over ``...``)."""
    dot = (q1 * q2).sum(-1).abs().clamp(max=1.0)
    return 2 * torch.acos(dot)


def nearest_cells(q: Tensor, level: int, k: int) -> Tensor:
    """Indices ``(..., k)`` of the ``k`` cells at ``level`` nearest to quaternions ``q`` ``(..., 4)``."""
    centres = cell_quaternions(level, device=q.device, dtype=q.dtype)  # (C, 4)
    similarity = (q @ centres.T).abs()  # larger |<q, c>| = closer
    return similarity.topk(k, dim=-1).indices
