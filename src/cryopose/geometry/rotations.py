"""Rotation conventions.

A pose rotation ``R`` (3×3) in cryopose is RELION's Euler matrix ``A(rot, tilt, psi)`` (ZYZ, see RELION's
``Euler_angles2matrix``): a 2D Fourier-slice frequency ``(kx, ky)`` of an image samples the volume's spectrum
at ``R.T @ (kx, ky, 0)``. Angles are radians in code and degrees in files. ``MIRROR = diag(1, 1, −1)`` flips
a map along z; its mirror image is explained by the poses ``MIRROR · R · MIRROR``.
"""

from __future__ import annotations

import numpy as np
import roma
import torch
from torch import Tensor

MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))


def relion_euler_to_matrix(rot: Tensor, tilt: Tensor, psi: Tensor) -> Tensor:
    """RELION ZYZ Euler angles (radians, shape ``(N,)``) -> rotation matrices ``(N, 3, 3)``.

    ``A = Rz(psi)ᵀ · Ry(tilt)ᵀ · Rz(rot)ᵀ`` in active-rotation notation, i.e. the transpose of roma's intrinsic
    ``ZYZ`` rotation with the same angles.
    """
    angles = torch.stack([_as_tensor(rot), _as_tensor(tilt), _as_tensor(psi)], dim=-1)
    return roma.euler_to_rotmat("ZYZ", angles).transpose(-1, -2)


def matrix_to_relion_euler(matrices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`relion_euler_to_matrix`: ``(N, 3, 3)`` -> (rot, tilt, psi) in radians, tilt in [0, π]."""
    angles = roma.rotmat_to_euler("ZYZ", _as_tensor(matrices).transpose(-1, -2))
    return angles[..., 0], angles[..., 1], angles[..., 2]


def rotvec_to_matrix(rotvec: Tensor) -> Tensor:
    """Axis-angle vectors ``(N, 3)`` (radians) -> rotation matrices ``(N, 3, 3)`` (stable near 0)."""
    return roma.rotvec_to_rotmat(_as_tensor(rotvec))
