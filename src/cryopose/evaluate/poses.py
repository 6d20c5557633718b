"""Pose error after global alignment (DESIGN §3).

Poses are defined up to one global rotation ``Q`` of the map (and, ab initio, its mirror image): if the map
is ``Q·V`` the poses are ``R·Qᵀ``. We fit ``Q`` on the right by least squares (Procrustes on SO(3)) for the
estimated poses and for their mirror ``M R M`` (``M = diag(1, 1, −1)``), keep the hand that brings more
particles within 10° (not the lower median: with a pseudo-symmetric particle many poses may sit at the mate of
theirs, and the right hand's median is then above a wrong hand's random-looking one), and report geodesic errors
(degrees) of rotations and of viewing directions (the third row of ``R``), and the share of particles within 10°
(a map can be good while most poses are wrong; the median alone hides a correct minority).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import roma
import torch

from ..geometry.rotations import MIRROR


@dataclass
class PoseError:
    """Rotation / viewing-direction errors in degrees, shift errors in Å, and the alignment found."""

    rotation_mean_deg: float
    rotation_median_deg: float
    viewing_mean_deg: float
    viewing_median_deg: float
    mirrored: bool
    rotation_within_10deg: float = 0.0
    shift_mean_A: float | None = None
    shift_median_A: float | None = None
    n: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def fit_global_rotation(estimated: torch.Tensor, truth: torch.Tensor, trim: float = 0.75,
                        rounds: int = 2) -> torch.Tensor:
    """``Q`` minimising ``Σ‖R_est,i Q − R_true,i‖²`` over the particles: ``(N, 3, 3)`` each -> ``(3, 3)``.

    After the plain least-squares fit, ``rounds`` refits keep the ``trim`` fraction of particles with the
    smallest errors, so that a minority of wrong poses does not bias the alignment of the rest.
    """
    keep = torch.ones(len(estimated), dtype=torch.bool)
    for _ in range(rounds + 1):
        m = (estimated[keep].transpose(-1, -2) @ truth[keep]).sum(0)
        q = roma.special_procrustes(m)
        err = roma.rotmat_geodesic_distance(estimated @ q, truth)
        keep = err <= torch.quantile(err, trim)
    return q


def pose_error(estimated: np.ndarray, truth: np.ndarray, shifts_est_A: np.ndarray | None = None,
               shifts_true_A: np.ndarray | None = None, allow_mirror: bool = True) -> PoseError:
    """Align ``(N, 3, 3)`` estimated rotations to the true ones and report their errors (see module doc)."""
    est = torch.as_tensor(estimated, dtype=torch.float64)
    true = torch.as_tensor(truth, dtype=torch.float64)
    candidates = [(False, est)] + ([(True, MIRROR @ est @ MIRROR)] if allow_mirror else [])
    best = None
    for mirrored, cand in candidates:
        aligned = cand @ fit_global_rotation(cand, true)
        err = torch.rad2deg(roma.rotmat_geodesic_distance(aligned, true))
        score = ((err < 10).double().mean(), -err.median())  # the hand that aligns most, then the median
        if best is None or score > best[3]:
            best = (mirrored, aligned, err, score)
    mirrored, aligned, err, _ = best
    a, b = aligned[:, 2, :], true[:, 2, :]
    view = torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1)))
    out = PoseError(rotation_mean_deg=float(err.mean()), rotation_median_deg=float(err.median()),
                    viewing_mean_deg=float(view.mean()), viewing_median_deg=float(view.median()),
                    mirrored=mirrored, rotation_within_10deg=float((err < 10).double().mean()), n=len(err))
    if shifts_est_A is not None and shifts_true_A is not None:
        d = np.linalg.norm(np.asarray(shifts_est_A) - np.asarray(shifts_true_A), axis=1)
        out.shift_mean_A, out.shift_median_A = float(d.mean()), float(np.median(d))
    return out
