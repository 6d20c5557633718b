"""Pose error after global alignment (DESIGN §3).

Poses are defined up to one global rotation ``Q`` of the map (and, ab initio, its mirror image): if the map
is ``Q·V`` the poses are ``R·Qᵀ``. We fit ``Q`` on the right (below) for the
estimated poses and for their mirror ``M R M`` (``M = diag(1, 1, −1)``), keep the hand that brings more
particles within 10° (not the lower median: with a pseudo-symmetric particle many poses may sit at the mate of
theirs, and the right hand's median is then above a wrong hand's random-looking one), and report geodesic errors
(degrees) of rotations and of viewing directions (the third row of ``R``), and the share of particles within 10°
(a map can be good while most poses are wrong; the median alone hides a correct minority).

``Q`` is first found by a vote (the ``R_est,iᵀ R_true,i`` of a few particles, scored by how many particles they
bring within 10° of the truth) and refined by least squares on the particles within 20° of it. With a point group
``G`` (the truth's symmetry, in its frame) a pose is only defined up to ``R·g``: each particle is compared with the
mate ``R_true,i · g_i`` closest to its aligned estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import roma
import torch
from torch import Tensor

from ..geometry.rotations import MIRROR
from ..geometry.symmetry import symmetry_mates


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


@dataclass
class PoseAlignment:
    """Estimated poses aligned to the true ones: the hand and ``Q`` chosen, the aligned ``R_est·Q`` ``(N, 3, 3)``
    (after the mirror when ``mirrored``), the true poses (or their closest symmetry mates) ``(N, 3, 3)`` and the
    rotation errors ``(N,)`` in degrees."""

    mirrored: bool
    rotation: Tensor
    aligned: Tensor
    truth: Tensor
    error_deg: Tensor

    def viewing_error_deg(self) -> Tensor:
        """Angles ``(N,)`` (degrees) between the aligned and true viewing directions (third rows)."""
        a, b = self.aligned[:, 2, :], self.truth[:, 2, :]
        return torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1)))


def _closest_mates(aligned: Tensor, mates: Tensor) -> Tensor:
    """For each aligned pose ``(N, 3, 3)``, its closest mate among ``mates`` ``(N, G, 3, 3)``: ``(N, 3, 3)``."""
    cosine = (aligned[:, None] * mates).sum((-1, -2))  # trace(Aᵀ M) = 1 + 2 cos(angle)
    return mates[torch.arange(len(mates)), cosine.argmax(1)]


def _vote(estimated: Tensor, mates: Tensor, candidates: int = 64, voters: int = 2000,
          within_deg: float = 10.0) -> Tensor:
    """``Q`` ``(3, 3)`` among ``R_est,iᵀ R_true,i`` of ``candidates`` particles that brings the most of ``voters``
    particles within ``within_deg`` of a mate; ``estimated`` ``(N, 3, 3)``, ``mates`` ``(N, G, 3, 3)``."""
    n = len(estimated)
    pick = torch.linspace(0, n - 1, min(n, candidates)).long()
    q = estimated[pick].transpose(-1, -2) @ mates[pick, 0]  # (C, 3, 3)
    sample = torch.linspace(0, n - 1, min(n, voters)).long()
    products = estimated[sample, None].transpose(-1, -2) @ mates[sample]  # R_estᵀ R_true g: (V, G, 3, 3)
    cosine = torch.einsum("cab,vgab->cvg", q, products).amax(-1)  # trace(Qᵀ R_estᵀ R_true g)
    votes = (cosine > 1 + 2 * np.cos(np.radians(within_deg))).sum(-1)
    return q[votes.argmax()]


def _align_hand(estimated: Tensor, mates: Tensor, rounds: int = 2, inlier_deg: float = 20.0) -> tuple[Tensor, Tensor]:
    """``Q`` and the matched true poses ``(N, 3, 3)`` for one hand; ``mates`` ``(N, G, 3, 3)``. The vote's ``Q`` is
    refined by least squares on the particles it brings within ``inlier_deg`` (all when fewer than 3): fitted on
    all of them, a majority of wrong poses (a third right is the most a three-fold blend may give) drags ``Q`` off
    the right ones."""
    q = _vote(estimated, mates)
    for _ in range(rounds):
        matched = _closest_mates(estimated @ q, mates)
        inliers = roma.rotmat_geodesic_distance(estimated @ q, matched) < np.radians(inlier_deg)
        if int(inliers.sum()) < 3:
            break
        q = fit_global_rotation(estimated[inliers], matched[inliers])
    return q, _closest_mates(estimated @ q, mates)


def align_poses(estimated: np.ndarray | Tensor, truth: np.ndarray | Tensor, allow_mirror: bool = True,
                symmetry: Tensor | None = None) -> PoseAlignment:
    """Align ``(N, 3, 3)`` estimated rotations to the true ones (see module doc); ``symmetry``: the truth's point
    group ``(G, 3, 3)`` (e.g. :func:`cryopose.geometry.symmetry.point_group`), errors are then modulo it."""
    est = torch.as_tensor(estimated, dtype=torch.float64)
    true = torch.as_tensor(truth, dtype=torch.float64)
    group = torch.eye(3, dtype=torch.float64)[None] if symmetry is None else symmetry.to(torch.float64)
    mates = symmetry_mates(true, group)
    best = None
    for mirrored, cand in [(False, est)] + ([(True, MIRROR @ est @ MIRROR)] if allow_mirror else []):
        q, matched = _align_hand(cand, mates)
        aligned = cand @ q
        err = torch.rad2deg(roma.rotmat_geodesic_distance(aligned, matched))
        score = ((err < 10).double().mean(), -err.median())  # the hand that aligns most, then the median
        if best is None or score > best[0]:
            best = (score, PoseAlignment(mirrored, q, aligned, matched, err))
    return best[1]


def summarise(fit: PoseAlignment, shifts_est_A: np.ndarray | None = None,
              shifts_true_A: np.ndarray | None = None) -> PoseError:
    """The :class:`PoseError` of an alignment, with the errors of origins ``(N, 2)`` (Å) when both are given."""
    err, view = fit.error_deg, fit.viewing_error_deg()
    out = PoseError(rotation_mean_deg=float(err.mean()), rotation_median_deg=float(err.median()),
                    viewing_mean_deg=float(view.mean()), viewing_median_deg=float(view.median()),
                    mirrored=fit.mirrored, rotation_within_10deg=float((err < 10).double().mean()), n=len(err))
    if shifts_est_A is not None and shifts_true_A is not None:
        d = np.linalg.norm(np.asarray(shifts_est_A) - np.asarray(shifts_true_A), axis=1)
        out.shift_mean_A, out.shift_median_A = float(d.mean()), float(np.median(d))
    return out


def pose_error(estimated: np.ndarray, truth: np.ndarray, shifts_est_A: np.ndarray | None = None,
               shifts_true_A: np.ndarray | None = None, allow_mirror: bool = True,
               symmetry: Tensor | None = None) -> PoseError:
    """Align ``(N, 3, 3)`` estimated rotations to the true ones and report their errors (see module doc), modulo
    the point group ``symmetry`` ``(G, 3, 3)`` when given."""
    return summarise(align_poses(estimated, truth, allow_mirror, symmetry), shifts_est_A, shifts_true_A)
