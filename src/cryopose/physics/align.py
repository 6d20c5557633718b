"""Align a map to a reference: rotation, shift and hand (DESIGN §3).

Geometry. Coordinates ``x = (x, y, z)`` are in voxels from the box centre ``D//2``, with ``x, y, z`` along
array axes ``(-1, -2, -3)``. A map transform with a 3×3 orthogonal ``L`` and a shift ``t`` (voxels) is

    ``(T V)(x) = V(Lᵀ (x − t))``,      ``L = A · Mᵐ``,

with ``A`` a rotation, ``M = diag(1, 1, −1)`` the mirror (the map flipped along z) and ``m ∈ {0, 1}``.
Rotating a map by ``A`` (``V ↦ V(Aᵀx)``) changes the poses that explain the same images from ``R`` to
``R·Aᵀ``; its mirror is explained by ``M·R·M``; and shifting it by ``t`` changes the RELION origin of each
particle from ``s`` to ``s + (R' t)_xy`` (Å) with ``R'`` the new pose. :meth:`MapAlignment.transform_poses`
applies all three, so poses of the aligned map are comparable with the reference's. This is the ``Q`` that
:func:`cryopose.evaluate.poses.pose_error` fits on the right: map ``Q·V`` ⇔ poses ``R·Qᵀ`` (and ``M·V`` ⇔
``M·R·M``).

Method. Both maps are background-subtracted and the reference is masked by a soft sphere. For each hand, a
search on Fourier-cropped copies (``search_box`` voxels) scores rotations by the normalised cross-correlation
at the best translation (one FFT per rotation): every cell of the Hopf grid at ``level``, then the children of
the ``beam`` best cells, level after level. The better hand's best pose is refined with L-BFGS on rotation and
shift at up to ``refine_box`` voxels. Maps with point-group symmetry have several equally good answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import roma
import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry.rotations import MIRROR
from ..geometry.so3_search import grid_search
from .fourier import fourier_resize, radius_grid
from .fsc import soft_sphere_mask


# ----------------------------------------------------------------------------------------------- transforms
def grid_points(box: int, like: Tensor, planes: slice = slice(None)) -> Tensor:
    """Coordinates ``(P, 3)`` ``(x, y, z)`` in voxels from the centre of the voxels of z-``planes``, in
    ``(z, y, x)`` order."""
    j = torch.arange(box, dtype=like.dtype, device=like.device) - box // 2
    z, y, x = torch.meshgrid(j[planes], j, j, indexing="ij")
    return torch.stack([x, y, z], -1).reshape(-1, 3)


def sample_volume(volume: Tensor, points: Tensor) -> Tensor:
    """Trilinear samples ``(...,)`` of a ``(D, D, D)`` map at ``points`` ``(..., 3)`` (voxels ``(x, y, z)`` from
    the centre ``D//2``; zero outside the box). Differentiable w.r.t. the map and the points."""
    box = volume.shape[-1]
    grid = (points + box // 2) * (2.0 / (box - 1)) - 1.0  # align_corners=True: index 0 -> -1, D-1 -> +1
    out = F.grid_sample(volume[None, None], grid.reshape(1, 1, 1, -1, 3), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out.reshape(points.shape[:-1])


def transform_volume(volume: Tensor, matrix: Tensor, shift: Tensor | None = None) -> Tensor:
    """``V(Lᵀ(x − t))`` by trilinear interpolation (zero outside the box).

    Args:
        volume: ``(D, D, D)`` map.
        matrix: ``(3, 3)`` or ``(B, 3, 3)`` orthogonal ``L`` acting on ``(x, y, z)``.
        shift: ``(3,)`` or ``(B, 3)`` shift ``t`` in voxels ``(x, y, z)``; default 0.

    Returns ``(D, D, D)``, or ``(B, D, D, D)`` for a batch of matrices. Differentiable w.r.t. all inputs.
    """
    box = volume.shape[-1]
    mats = matrix.to(volume)
    t = torch.zeros(3, dtype=volume.dtype, device=volume.device) if shift is None else shift.to(volume)
    src = (grid_points(box, volume) - t[..., None, :]) @ mats  # row vectors: (x − t)ᵀ L = (Lᵀ(x − t))ᵀ
    return sample_volume(volume, src).reshape(*mats.shape[:-2], box, box, box)


def _tensor(x: Tensor | np.ndarray) -> Tensor:
    """A tensor view of a tensor, or a copy of an array (maps read from files may be read-only)."""
    return x if isinstance(x, Tensor) else torch.from_numpy(np.array(x))


def _background_subtracted(volume: Tensor) -> Tensor:
    """``volume`` minus its mean outside the inscribed sphere (so that empty solvent is ~0)."""
    box = volume.shape[-1]
    outside = radius_grid(box, volume.device) > box / 2
    return volume - volume[outside].mean()


def _mirror(mirrored: bool, like: Tensor) -> Tensor:
    return (MIRROR if mirrored else torch.eye(3, dtype=torch.float64)).to(like)


# ------------------------------------------------------------------------------------------------- result
@dataclass
class MapAlignment:
    """Transform taking a map onto a reference: ``aligned(x) = V(Lᵀ(x − t))``, ``L = rotation · Mᵐ``.

    ``rotation`` ``(3, 3)`` acts on ``(x, y, z)``; ``shift_px`` ``(3,)`` is ``t`` in voxels ``(x, y, z)``;
    ``correlation`` is the normalised real-space correlation with the (masked) reference after alignment.
    """

    rotation: np.ndarray
    shift_px: np.ndarray
    mirrored: bool
    correlation: float
    voxel_size_A: float = 1.0
    search: dict = field(default_factory=dict)

    @property
    def shift_A(self) -> np.ndarray:
        return self.shift_px * self.voxel_size_A

    @property
    def matrix(self) -> np.ndarray:
        """``L = rotation · Mᵐ`` (orthogonal, det −1 when mirrored)."""
        return self.rotation @ _mirror(self.mirrored, torch.zeros(0, dtype=torch.float64)).numpy()

    def apply(self, volume, oversample: int = 2, slab: int = 16) -> Tensor:
        """The aligned copy ``(D, D, D)`` float32 of a map (e.g. a half map of the same reconstruction).

        Trilinear interpolation runs on a copy Fourier-padded ``oversample`` times, which keeps the FSC of an
        exactly transformed map above ~0.9 up to Nyquist (about 0.7 without it); ``slab`` output planes at a time.
        """
        big = fourier_resize(_tensor(volume).float(), oversample * volume.shape[-1], 3)
        size = big.shape[-1]
        matrix = torch.as_tensor(self.matrix).to(big)
        shift = torch.as_tensor(self.shift_px * oversample).to(big)
        out = torch.empty_like(big)
        for start in range(0, size, slab):
            planes = slice(start, start + slab)
            points = (grid_points(size, big, planes) - shift) @ matrix
            out[planes] = sample_volume(big, points).reshape(out[planes].shape)
        return fourier_resize(out, volume.shape[-1], 3)

    def transform_poses(self, rotations, shifts_A=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Poses of the aligned map that explain the same images: ``(N, 3, 3)`` RELION matrices and ``(N, 2)``
        origins in Å -> ``R' = Mᵐ R Mᵐ Aᵀ`` and ``s' = s + (R' t)_xy`` (``t`` in Å)."""
        r = torch.as_tensor(np.asarray(rotations), dtype=torch.float64)
        m = _mirror(self.mirrored, r)
        new = m @ r @ m @ torch.as_tensor(self.rotation, dtype=torch.float64).T
        if shifts_A is None:
            return new.numpy(), None
        moved = (new @ torch.as_tensor(self.shift_A, dtype=torch.float64))[:, :2]
        return new.numpy(), np.asarray(shifts_A, dtype=np.float64) + moved.numpy()

    def to_dict(self) -> dict:
        return {"rotation": self.rotation.tolist(), "shift_px": self.shift_px.tolist(),
                "shift_A": self.shift_A.tolist(), "mirrored": self.mirrored, "correlation": self.correlation,
                "rotation_angle_deg": float(torch.rad2deg(roma.rotmat_geodesic_distance(
                    torch.as_tensor(self.rotation), torch.eye(3, dtype=torch.float64)))),
                **self.search}


# ------------------------------------------------------------------------------------------------- search
def _unit(v: Tensor) -> Tensor:
    """``v`` scaled to unit norm over its last three axes."""
    return v / v.flatten(-3).norm(dim=-1).clamp(min=1e-12)[..., None, None, None]


def _search_hand(moving: Tensor, ref: Tensor, rotations: Tensor, mirrored: bool, max_shift: int,
                 chunk: int = 128) -> tuple[Tensor, Tensor]:
    """For each of ``(G, 3, 3)`` rotations (times the mirror): the best cross-correlation ``(G,)`` of the
    unit-norm rotated ``moving`` with the unit-norm ``ref`` over shifts up to ``max_shift`` voxels, and that
    shift ``(G, 3)`` (voxels, ``x y z``)."""
    box = ref.shape[-1]
    ref_hat = torch.fft.rfftn(ref)
    j = torch.fft.fftfreq(box, 1.0 / box, device=ref.device)  # signed shift of each FFT index
    too_far = (j.abs() > max_shift)
    too_far = too_far[:, None, None] | too_far[None, :, None] | too_far[None, None, :]
    mats = rotations @ _mirror(mirrored, rotations)
    scores, shifts = [], []
    for start in range(0, len(mats), chunk):
        rotated = _unit(transform_volume(moving, mats[start:start + chunk]))
        cc = torch.fft.irfftn(ref_hat * torch.fft.rfftn(rotated, dim=(-3, -2, -1)).conj(), s=(box,) * 3,
                              dim=(-3, -2, -1))  # cc[t] = Σ ref(x + t) · rotated(x)
        cc = cc.masked_fill(too_far, -math.inf).flatten(1)
        best, index = cc.max(dim=1)
        iz, iy, ix = index // box**2, (index // box) % box, index % box
        scores.append(best)
        shifts.append(torch.stack([j[ix], j[iy], j[iz]], -1))
    return torch.cat(scores), torch.cat(shifts)


def _support(moving: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """Output voxels ``x`` ``(P, 3)`` of the support of the masked ``ref`` (non-zero), and ``ref`` there ``(P,)``."""
    inside = (ref != 0).flatten()
    return grid_points(ref.shape[-1], moving)[inside], ref.flatten()[inside]


def _correlation(moving: Tensor, support: tuple[Tensor, Tensor], rotation: Tensor, shift: Tensor,
                 mirrored: bool) -> Tensor:
    """Correlation of ``moving`` turned by ``(rotation, shift)`` with the unit-norm reference on its
    :func:`_support`; differentiable in ``rotation`` and ``shift``."""
    points, target = support
    matrix = (rotation @ _mirror(mirrored, rotation)).to(moving.dtype)
    out = sample_volume(moving, (points - shift.to(moving.dtype)) @ matrix)  # V(Lᵀ(x − t)), row vectors
    return (target * out).sum() / out.norm().clamp(min=1e-12)


def _refine(moving: Tensor, ref: Tensor, rotation: Tensor, shift: Tensor, mirrored: bool,
            iterations: int) -> tuple[Tensor, Tensor, float]:
    """Local L-BFGS refinement of ``(rotation, shift)`` maximising :func:`_correlation`."""
    scale = ref.shape[-1] / 4  # a unit step of either parameter moves the map by ~1 voxel
    support = _support(moving, ref)
    params = torch.zeros(6, dtype=torch.float64, device=ref.device, requires_grad=True)
    base = rotation.to(torch.float64)
    t0 = shift.to(torch.float64)

    def current() -> tuple[Tensor, Tensor]:
        return roma.rotvec_to_rotmat(params[:3] / scale) @ base, t0 + params[3:]

    def loss() -> Tensor:
        return -_correlation(moving, support, *current(), mirrored)

    opt = torch.optim.LBFGS([params], lr=1, max_iter=iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-5, tolerance_change=1e-6)  # correlation ~1, steps ~1 voxel

    def closure() -> Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        rot, t = current()
        return rot, t, float(-loss())


def prepared_map(volume: Tensor, box: int, mask: bool) -> Tensor:
    """``volume`` ``(D, D, D)`` background-subtracted and Fourier-cropped to ``(box, box, box)``; with ``mask``,
    also multiplied by a soft sphere and scaled to unit norm."""
    v = fourier_resize(_background_subtracted(volume), box, 3)
    if mask:
        v = _unit(v * soft_sphere_mask(box, device=v.device).to(v.dtype))
    return v


def _angle_deg(rotations: Tensor) -> Tensor:
    """Rotation angle(s) in degrees of ``(..., 3, 3)`` matrices."""
    return torch.rad2deg(roma.rotmat_geodesic_distance(rotations, torch.eye(3, dtype=rotations.dtype,
                                                                             device=rotations.device)))


def _search(moving: Tensor, ref: Tensor, mirrored: bool, level: int, subdivisions: int, beam: int,
            max_shift: int, exclude_deg: float) -> tuple[float, Tensor, Tensor]:
    """Best (score, rotation ``(3, 3)``, shift ``(3,)`` voxels) of one hand by a grid search from every cell of
    ``level`` down ``subdivisions`` levels, keeping the ``beam`` best cells (cost: minus :func:`_search_hand`'s
    score); rotations within ``exclude_deg`` of the identity are never chosen."""

    def cost(rotations: Tensor) -> Tensor:  # (1, K, 3, 3) -> (1, K)
        scores, _ = _search_hand(moving, ref, rotations[0].to(moving), mirrored, max_shift)
        return (-scores).masked_fill(_angle_deg(rotations[0]).to(scores.device) < exclude_deg, math.inf)[None]

    rotations, costs = grid_search(cost, 1, width=beam, depth=level + subdivisions, start_level=level,
                                   device=moving.device, dtype=torch.float64)
    _, shift = _search_hand(moving, ref, rotations.to(moving), mirrored, max_shift)
    return -float(costs[0]), rotations[0], shift[0]


def align_maps(moving, reference, *, voxel_size_A: float = 1.0, level: int = 1, subdivisions: int = 2,
               beam: int = 8, search_box: int = 24, refine_box: int = 128, allow_mirror: bool = True,
               max_shift: float = 0.25, exclude_deg: float = 0.0) -> tuple[Tensor, MapAlignment]:
    """Align ``moving`` onto ``reference`` (both ``(D, D, D)``, same box and voxel size).

    Args:
        voxel_size_A: voxel size, only to report the shift in Å.
        level, subdivisions, beam: global search over all ``72·8^level`` cells of the Hopf grid (level 1: 576
            rotations ~30° apart), then ``subdivisions`` levels of the children of the ``beam`` best cells
            (level 3: ~7.5°), for each hand.
        search_box, refine_box: largest boxes (voxels) of the search and of the final L-BFGS refinement.
        allow_mirror: also try the mirror image (needed for ab initio maps).
        max_shift: largest shift searched, as a fraction of the box.
        exclude_deg: never pick a rotation within this angle (degrees) of the identity (with ``moving`` =
            ``reference``: the map's strongest (pseudo-)symmetry, see :func:`near_symmetry`).

    Returns the aligned map ``(D, D, D)`` float32 (on the input's device) and the :class:`MapAlignment`.
    """
    mov = _tensor(moving).float()
    ref = _tensor(reference).to(mov)
    box = mov.shape[-1]
    if ref.shape != mov.shape or mov.ndim != 3 or box % 2:
        raise ValueError(f"maps must be cubic with the same even box: {tuple(mov.shape)} vs {tuple(ref.shape)}")
    small = min(box, search_box // 2 * 2)
    mov_s, ref_s = prepared_map(mov, small, mask=False), prepared_map(ref, small, mask=True)
    hands = [(*_search(mov_s, ref_s, m, level, subdivisions, beam, int(max_shift * small), exclude_deg), m)
             for m in ((False, True) if allow_mirror else (False,))]
    grid_score, rot, t, mirrored = max(hands, key=lambda h: h[0])
    fine = min(box, refine_box // 2 * 2)
    mov_f, ref_f = prepared_map(mov, fine, mask=False), prepared_map(ref, fine, mask=True)
    grid = (rot, t * fine / small)
    rot, t, score = _refine(mov_f, ref_f, *grid, mirrored, iterations=40)
    if exclude_deg > 0 and _angle_deg(rot) < exclude_deg:  # refined back into the excluded cap: keep the grid's
        rot, t = grid
        score = float(_correlation(mov_f, _support(mov_f, ref_f), rot.double(), t.double(), mirrored))
    result = MapAlignment(rotation=rot.cpu().numpy(), shift_px=(t * box / fine).cpu().numpy(), mirrored=mirrored,
                          correlation=score, voxel_size_A=voxel_size_A,
                          search={"grid_level": level + subdivisions, "search_box": small, "refine_box": fine,
                                  "search_correlation": grid_score,
                                  "search_correlation_other_hand": min(h[0] for h in hands) if allow_mirror else None})
    return result.apply(mov), result


def near_symmetry(volume, *, voxel_size_A: float = 1.0, exclude_deg: float = 60.0, **search) -> MapAlignment:
    """The proper rotation (and shift) at least ``exclude_deg`` from the identity that maps ``volume``
    ``(D, D, D)`` best onto itself; ``correlation`` near 1 marks a (pseudo-)symmetric map. ``search``: the
    options of :func:`align_maps`."""
    return align_maps(volume, volume, voxel_size_A=voxel_size_A, allow_mirror=False, exclude_deg=exclude_deg,
                      **search)[1]
