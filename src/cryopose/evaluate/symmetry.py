"""Find a map's point group and the rotation that brings it into RELION's frame for that group
(``cryopose symmetry``).

Method. The map is background-subtracted, masked by a soft sphere and Fourier-cropped to ``search_box`` voxels;
its centre of mass (of the positive density) is the centre of symmetry ``c``. A turn ``g`` (map frame) is scored
by the correlation (Pearson) of the map with its copy turned about ``c``, ``V(c + gᵀ(x − c))``, over the sphere.

1. Axes: for each fold ``n`` the turn by 360°/n about every direction of a hemisphere grid; the best directions
   (apart by more than ``_APART_DEG``) are refined by a shrinking pattern search.
2. Frames: each candidate group is generated, in RELION's frame, by its axis of highest fold ``P`` (fold
   ``n₁``) and the axis of highest fold ``S`` (fold ``n₂``) off it (none for C_n). The map's best ``n₁``-fold
   axes ``a`` go to ``P``; the ``n₂``-fold axis ``b`` at the angle ``∠(P, S)`` from ``a`` is found by a sweep
   about ``a``; the rotation ``L`` takes ``(a, b)`` to ``(P, S)``.
3. Score: the group's correlation is the mean over its elements other than the identity of the correlation of
   the map with its copy turned by ``Lᵀ g L``: 1 for an exact symmetry whatever the group's order (unlike the
   correlation with the group average, ``√((1 + (|G| − 1) ρ̄) / |G|)``, which is lenient with large groups).
   Groups scoring at least ``_REFINE`` are refined by L-BFGS on ``L``; the correlations are then measured again
   at a finer ``score_box``, where a pseudo-symmetry falls further below an exact one.
4. The group found is the largest one scoring at least ``accept`` and within ``tolerance`` of the best (C1 when
   none does); the groups scoring at least ``pseudo`` but below ``accept`` that contain it (as fitted) are its
   pseudo-symmetries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import roma
import torch
from torch import Tensor

from ..geometry.rotations import rotvec_to_matrix
from ..geometry.symmetry import point_group
from ..physics.align import MapAlignment, grid_points, prepared_map, sample_volume

_DIRECTIONS = 300  # hemisphere grid of axes (~8° apart)
_KEEP = 2  # best axes kept per fold
_APART_DEG = 15.0  # kept axes of one fold differ by more than this
_STEPS_DEG = (4.0, 2.0, 1.0, 0.5)  # pattern search of each kept axis
_SWEEP_DEG = 3.0  # step of the sweep for the second axis
_REFINE = 0.6  # groups scoring at least this are refined
ACCEPT, TOLERANCE, PSEUDO = 0.97, 0.02, 0.8


@dataclass
class SymmetryResult:
    """The point group found (``"C1"`` when none), the correlation of each candidate group, and the transform
    into RELION's frame for the group found: ``aligned(x) = V(rotationᵀ (x − shift_px))`` (``rotation``
    ``(3, 3)`` on ``(x, y, z)``, ``shift_px`` ``(3,)`` voxels of the input box), with ``pseudo`` the candidates
    that are pseudo-symmetries, best first."""

    group: str
    correlations: dict[str, float]
    rotation: np.ndarray
    shift_px: np.ndarray
    pseudo: list[str]

    def elements(self) -> Tensor:
        """The group's rotations ``(G, 3, 3)`` as they act in the map's own frame (``rotationᵀ g rotation``)."""
        return _in_map_frame(point_group(self.group), torch.as_tensor(self.rotation, dtype=torch.float64))

    def alignment(self, voxel_size_A: float = 1.0) -> MapAlignment:
        """The transform as a :class:`~cryopose.physics.align.MapAlignment` (its ``apply`` turns a map)."""
        return MapAlignment(rotation=self.rotation, shift_px=self.shift_px, mirrored=False,
                            correlation=self.correlations.get(self.group, 1.0), voxel_size_A=voxel_size_A)


def candidate_groups(max_order: int = 12) -> list[str]:
    """``C2 … Cn, D2 … Dn`` (``n = max_order``), ``T``, ``O`` and ``I``."""
    orders = range(2, max_order + 1)
    return [f"C{n}" for n in orders] + [f"D{n}" for n in orders] + ["T", "O", "I"]


# ------------------------------------------------------------------------------------------------- scoring
class _Scorer:
    """Correlations of a ``(D, D, D)`` masked map with copies of itself turned about its centre of mass."""

    def __init__(self, volume: Tensor, chunk: int = 128):
        inside = (volume != 0).flatten()
        self.volume, self.chunk = volume, chunk
        self.points = grid_points(volume.shape[-1], volume)[inside]  # (P, 3) voxels (x, y, z)
        values = volume.flatten()[inside]
        weight = values.clamp(min=0)
        self.centre = (weight[:, None] * self.points).sum(0) / weight.sum()  # (3,)
        self.values = _standardised(values)  # (P,)

    def __call__(self, turns: Tensor) -> Tensor:
        """Correlations ``(B,)`` for map-frame turns ``g`` ``(B, 3, 3)`` (differentiable in ``turns``)."""
        out = []
        for start in range(0, len(turns), self.chunk):
            g = turns[start:start + self.chunk].to(self.points)
            copy = sample_volume(self.volume, (self.points - self.centre) @ g + self.centre)  # V(c + gᵀ(x − c))
            out.append(_standardised(copy) @ self.values)
        return torch.cat(out)


def _standardised(values: Tensor) -> Tensor:
    """``values`` ``(..., P)`` minus their mean, scaled to unit norm (over the last axis)."""
    centred = values - values.mean(-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _hemisphere(n: int) -> Tensor:
    """``n`` unit vectors ``(n, 3)`` spread evenly over the upper hemisphere (Fibonacci lattice)."""
    i = torch.arange(n, dtype=torch.float64)
    z = (i + 0.5) / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = (1 - z**2).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


def _perpendicular(axes: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors ``(N, 3)`` each perpendicular to ``axes`` ``(N, 3)`` and to each other."""
    helper = torch.eye(3, dtype=axes.dtype)[axes.abs().argmin(-1)]
    u = torch.linalg.cross(axes, helper)
    u = u / u.norm(dim=-1, keepdim=True)
    return u, torch.linalg.cross(axes, u)


def _turns(axes: Tensor, fold: int) -> Tensor:
    """Turns ``(N, 3, 3)`` by 360°/``fold`` about unit ``axes`` ``(N, 3)``."""
    return rotvec_to_matrix(axes * (2 * math.pi / fold))


def _cone(axes: Tensor, angle: float, psi: Tensor) -> Tensor:
    """Unit vectors ``(N, K, 3)`` at ``angle`` (radians) from ``axes`` ``(N, 3)``, at azimuths ``psi`` ``(K,)``."""
    u, w = _perpendicular(axes)
    ring = psi.cos()[None, :, None] * u[:, None] + psi.sin()[None, :, None] * w[:, None]
    return math.cos(angle) * axes[:, None] + math.sin(angle) * ring


# ---------------------------------------------------------------------------------------------------- axes
def _distinct(directions: Tensor, scores: Tensor, keep: int) -> Tensor:
    """The ``keep`` best ``directions`` ``(keep, 3)`` whose lines are more than ``_APART_DEG`` apart."""
    chosen: list[Tensor] = []
    for i in scores.argsort(descending=True):
        d = directions[i]
        if all(abs(float(d @ c)) < math.cos(math.radians(_APART_DEG)) for c in chosen):
            chosen.append(d)
            if len(chosen) == keep:
                break
    return torch.stack(chosen)


def _refine_axes(score: _Scorer, axes: Tensor, fold: int) -> tuple[Tensor, Tensor]:
    """Pattern search of each of ``axes`` ``(K, 3)`` among its six neighbours at shrinking steps; the refined
    axes ``(K, 3)`` and their correlations ``(K,)``."""
    psi = torch.arange(6, dtype=axes.dtype) * (math.pi / 3)
    for step in _STEPS_DEG:
        trial = torch.cat([axes[:, None], _cone(axes, math.radians(step), psi)], 1)  # (K, 7, 3)
        values = score(_turns(trial.reshape(-1, 3), fold)).reshape(trial.shape[:2])
        axes = trial[torch.arange(len(axes)), values.argmax(1)]
    return axes, score(_turns(axes, fold))


def _best_axes(score: _Scorer, folds: set[int]) -> dict[int, Tensor]:
    """The map's best axes ``(_KEEP, 3)`` for each fold, best first."""
    directions = _hemisphere(_DIRECTIONS)
    found = {}
    for fold in sorted(folds):
        scores = score(_turns(directions, fold))
        axes, values = _refine_axes(score, _distinct(directions, scores, _KEEP), fold)
        found[fold] = axes[values.argsort(descending=True)]
    return found


# -------------------------------------------------------------------------------------------------- groups
@dataclass
class _Generators:
    """A group ``(G, 3, 3)`` in RELION's frame, its axis ``primary`` ``(3,)`` of highest fold and the axis
    ``secondary`` of highest fold off it (None for C_n)."""

    group: Tensor
    fold: int
    primary: Tensor
    second_fold: int | None
    secondary: Tensor | None


def _generators(name: str) -> _Generators:
    """Group ``name`` (RELION's frame) with its two generating axes (see :class:`_Generators`)."""
    group = point_group(name)
    rotvecs = roma.rotmat_to_rotvec(group[1:])
    angles = rotvecs.norm(dim=-1)
    axes = rotvecs / angles[:, None]
    first = int(angles.argmin())
    off = (axes @ axes[first]).abs() < 0.99
    fold = round(2 * math.pi / float(angles[first]))
    if not off.any():
        return _Generators(group, fold, axes[first], None, None)
    second = int(torch.where(off, angles, math.inf).argmin())
    return _Generators(group, fold, axes[first], round(2 * math.pi / float(angles[second])), axes[second])


def _triad(a: Tensor, b: Tensor) -> Tensor:
    """The orthonormal columns ``(3, 3)``: ``a``, ``b`` made perpendicular to ``a``, and their cross product."""
    e1 = a / a.norm()
    e2 = b - (b @ e1) * e1
    e2 = e2 / e2.norm()
    return torch.stack([e1, e2, torch.linalg.cross(e1, e2)], -1)


def _frames(score: _Scorer, gen: _Generators, axes: dict[int, Tensor]) -> Tensor:
    """Rotations ``L`` ``(K, 3, 3)`` taking the map's best ``n₁``-fold axes, and for each the ``n₂``-fold axis at
    the group's angle from it found by a sweep about it, to the group's ``primary`` and ``secondary``."""
    firsts = axes[gen.fold]
    if gen.secondary is None:
        seconds = _perpendicular(firsts)[0]
        target = _triad(gen.primary, _perpendicular(gen.primary[None])[0][0])
    else:
        angle = math.acos(float(gen.primary @ gen.secondary))
        psi = torch.arange(0.0, 360.0 / gen.fold, _SWEEP_DEG, dtype=torch.float64).deg2rad()
        ring = _cone(firsts, angle, psi)  # (K, S, 3)
        values = score(_turns(ring.reshape(-1, 3), gen.second_fold)).reshape(ring.shape[:2])
        seconds = ring[torch.arange(len(firsts)), values.argmax(1)]
        target = _triad(gen.primary, gen.secondary)
    return torch.stack([target @ _triad(a, b).T for a, b in zip(firsts, seconds)])


def _group_score(score: _Scorer, group: Tensor, frame: Tensor) -> Tensor:
    """Mean correlation over the group's elements but the identity, turned into the map's frame by ``frame``."""
    return score(frame.T @ group[1:] @ frame).mean()


def _refine_frame(score: _Scorer, group: Tensor, frame: Tensor, iterations: int = 15) -> Tensor:
    """L-BFGS on ``frame`` ``(3, 3)`` (a small rotation on the map's side) maximising :func:`_group_score`."""
    rotvec = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([rotvec], lr=1, max_iter=iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-7)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = -_group_score(score, group, frame @ roma.rotvec_to_rotmat(rotvec))
        loss.backward()
        return loss

    opt.step(closure)
    return (frame @ roma.rotvec_to_rotmat(rotvec)).detach()


def _fit_group(score: _Scorer, gen: _Generators, axes: dict[int, Tensor]) -> Tensor:
    """The rotation ``L`` ``(3, 3)`` into RELION's frame of the group ``gen``, refined where it scores at least
    ``_REFINE``."""
    frames = _frames(score, gen, axes)
    values = torch.stack([_group_score(score, gen.group, f) for f in frames])
    best = int(values.argmax())
    if float(values[best]) < _REFINE:
        return frames[best]
    return _refine_frame(score, gen.group, frames[best])


def _chosen(correlations: dict[str, float], orders: dict[str, int], accept: float, tolerance: float) -> str:
    """The largest group (then the best) scoring at least ``accept`` and within ``tolerance`` of the best; C1."""
    best = max(correlations.values())
    passing = [n for n, c in correlations.items() if c >= accept and c >= best - tolerance]
    return max(passing, key=lambda n: (orders[n], correlations[n]), default="C1")


def _prepared(volume: Tensor | np.ndarray, search_box: int, score_box: int) -> tuple[Tensor, _Scorer, _Scorer]:
    """The map as float32 ``(D, D, D)`` and its scorers at ``search_box`` and ``score_box`` voxels."""
    data = (volume if isinstance(volume, Tensor) else torch.from_numpy(np.array(volume))).float()
    box = data.shape[-1]
    if data.ndim != 3 or data.shape != (box,) * 3 or box % 2:
        raise ValueError(f"the map must be cubic with an even box: {tuple(data.shape)}")
    coarse, fine = (_Scorer(prepared_map(data, min(box, b // 2 * 2), mask=True)) for b in (search_box, score_box))
    return data, coarse, fine


def _fitted(names: list[str], coarse: _Scorer, fine: _Scorer) -> tuple[dict[str, float], dict[str, Tensor]]:
    """The correlation (best first) and the frame ``L`` of each group of ``names`` fitted to the map."""
    generators = {name: _generators(name) for name in names}
    folds = {g.fold for g in generators.values()} | {g.second_fold for g in generators.values() if g.second_fold}
    with torch.no_grad():
        axes = _best_axes(coarse, folds)
    frames = {name: _fit_group(coarse, gen, axes) for name, gen in generators.items()}
    with torch.no_grad():
        values = {name: float(_group_score(fine, gen.group, frames[name])) for name, gen in generators.items()}
    return dict(sorted(values.items(), key=lambda kv: -kv[1])), frames


def _result(group: str, correlations: dict[str, float], frame: Tensor, box: int, fine: _Scorer,
            pseudo: list[str]) -> SymmetryResult:
    """The :class:`SymmetryResult` of ``group`` in ``frame``: the centre of symmetry goes to the box centre."""
    rotation = frame if group != "C1" else torch.eye(3, dtype=torch.float64)
    centre = fine.centre.double() * (box / fine.volume.shape[-1]) if group != "C1" else torch.zeros(3).double()
    return SymmetryResult(group=group, correlations=correlations, rotation=rotation.numpy(),
                          shift_px=(-(rotation @ centre)).numpy(), pseudo=pseudo)


def find_symmetry(volume: Tensor | np.ndarray, *, max_order: int = 12, search_box: int = 24, score_box: int = 48,
                  accept: float = ACCEPT, tolerance: float = TOLERANCE, pseudo: float = PSEUDO) -> SymmetryResult:
    """The point group of a ``(D, D, D)`` map among :func:`candidate_groups` (``max_order``), with the rotation
    into RELION's frame for it. Axes and frames are searched on the map Fourier-cropped to ``search_box``
    voxels, and the correlations measured at ``score_box`` (both at most ``D``); see the module's docstring."""
    if max_order < 2:
        raise ValueError(f"max_order must be at least 2, not {max_order}")
    data, coarse, fine = _prepared(volume, search_box, score_box)
    names = candidate_groups(max_order)
    correlations, frames = _fitted(names, coarse, fine)
    group = _chosen(correlations, {n: len(point_group(n)) for n in names}, accept, tolerance)
    found = _in_map_frame(point_group(group), frames.get(group, torch.eye(3, dtype=torch.float64)))
    return _result(group, correlations, frames.get(group, torch.eye(3, dtype=torch.float64)), data.shape[-1], fine,
                   [n for n, c in correlations.items() if pseudo <= c < accept
                    and _contains(_in_map_frame(point_group(n), frames[n]), found)])


def fit_symmetry(volume: Tensor | np.ndarray, group: str, *, search_box: int = 24,
                 score_box: int = 48) -> SymmetryResult:
    """The rotation and shift that bring a ``(D, D, D)`` map into RELION's frame for the point group ``group``
    (as ``relion_align_symmetry``), with the group's correlation, whether or not it is the map's best."""
    group = group.strip().upper()
    data, coarse, fine = _prepared(volume, search_box, score_box)
    if group == "C1":
        return _result("C1", {}, torch.eye(3, dtype=torch.float64), data.shape[-1], fine, [])
    correlations, frames = _fitted([group], coarse, fine)
    return _result(group, correlations, frames[group], data.shape[-1], fine, [])


def _in_map_frame(group: Tensor, frame: Tensor) -> Tensor:
    """The elements ``Lᵀ g L`` ``(G, 3, 3)`` in the map's frame of a group ``(G, 3, 3)`` in RELION's."""
    return frame.T @ group @ frame


def _contains(big: Tensor, small: Tensor, tol_deg: float = 5.0) -> bool:
    """Whether every element of ``small`` ``(H, 3, 3)`` is within ``tol_deg`` of one of ``big`` ``(G, 3, 3)``."""
    distance = roma.rotmat_geodesic_distance(small[:, None], big[None]).amin(1)
    return bool(distance.max() < math.radians(tol_deg))
